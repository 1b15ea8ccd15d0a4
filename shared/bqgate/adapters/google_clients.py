"""The Google clients the adapters wrap, built from the settings (``bqgate.bootstrap`` caches
them). Imported on first use, so a function that needs no client never loads its library."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import requests

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
        client = bigquery.Client(
            project=s.warehouse_project,
            credentials=creds,
            location=s.location,
            client_options=ClientOptions(api_endpoint=s.bigquery_endpoint),
        )
        environment_read_once(client._http, s.bigquery_endpoint)
        return client
    client = bigquery.Client(project=s.warehouse_project, location=s.location)
    environment_read_once(client._http, "https://bigquery.googleapis.com/")
    return client


def environment_read_once(session: requests.Session, url: str) -> requests.Session:
    """Make ``session`` take the proxy and CA settings of the environment once, now,
    instead of on every request (``requests`` looks them up per call: the proxy
    variables, ``no_proxy`` and netrc, ~0.4 ms a call on the hot path). Same behaviour
    for a process whose environment does not change while it runs.

    >>> s = environment_read_once(requests.Session(), "http://127.0.0.1:1/")
    >>> s.trust_env
    False
    """
    session.proxies.update(requests.utils.get_environ_proxies(url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle and session.verify is True:
        session.verify = bundle
    session.trust_env = False
    return session


def storage_client(s: Settings) -> Any:  # google-cloud-storage ships no types
    # google-cloud-storage ships no py.typed: mypy sees no storage in google.cloud.
    from google.cloud import storage  # type: ignore[attr-defined]

    return storage.Client(project=s.project)
