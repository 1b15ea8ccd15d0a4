"""The Google clients the adapters wrap, built from the settings (``bqgate.bootstrap`` caches
them). Imported on first use, so a function that needs no client never loads its library."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bqgate.settings import Settings

if TYPE_CHECKING:
    from google.cloud import bigquery, firestore

    #: The client types, for the composition root's annotations.
    FirestoreClient = firestore.Client
    BigQueryClient = bigquery.Client


def firestore_client(s: Settings) -> FirestoreClient:
    from google.cloud import firestore

    return firestore.Client(project=s.project, database=s.firestore_database)


def publisher() -> Any:  # google-cloud-pubsub ships no types
    # google-cloud-pubsub ships no py.typed: mypy sees no pubsub_v1 in google.cloud.
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    return pubsub_v1.PublisherClient()


def bigquery_client(s: Settings) -> BigQueryClient:
    from google.api_core.client_options import ClientOptions
    from google.cloud import bigquery

    if s.bigquery_endpoint:
        from google.auth.credentials import AnonymousCredentials

        # A local emulator: only ever used in dev mode, never with real credentials.
        creds = AnonymousCredentials() if s.dev_mode else None
        return bigquery.Client(
            project=s.warehouse_project,
            credentials=creds,
            location=s.location,
            client_options=ClientOptions(api_endpoint=s.bigquery_endpoint),
        )
    return bigquery.Client(project=s.warehouse_project, location=s.location)


def storage_client(s: Settings) -> Any:  # google-cloud-storage ships no types
    # google-cloud-storage ships no py.typed: mypy sees no storage in google.cloud.
    from google.cloud import storage  # type: ignore[attr-defined]

    return storage.Client(project=s.project)
