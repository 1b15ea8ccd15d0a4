"""Setting up the local emulators for the dev stack and the tests: Pub/Sub topics with push
subscriptions, and BigQuery tables loaded with rows. Only ever pointed at loopback emulators."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials

# google-cloud-pubsub ships no py.typed: mypy sees no pubsub_v1 in google.cloud.
from google.cloud import bigquery, pubsub_v1  # type: ignore[attr-defined]


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def create_push_topics(
    pubsub_host: str,
    project: str,
    push: Mapping[str, str],
    dead_letter_push: Mapping[str, str] | None = None,
) -> None:
    """For each ``topic -> push endpoint``: the topic, its dead-letter topic, and a push
    subscription with a retry policy and a dead-letter policy (as Terraform deploys); for
    each ``topic -> endpoint`` of ``dead_letter_push``, a push subscription of the topic's
    dead-letter topic (the dead-letter consumer)."""
    with _env(PUBSUB_EMULATOR_HOST=pubsub_host):
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
        for topic, endpoint in push.items():
            for t in (topic, f"{topic}-dead-letter"):
                with contextlib.suppress(gexc.AlreadyExists):
                    publisher.create_topic(name=publisher.topic_path(project, t))
            with contextlib.suppress(gexc.AlreadyExists):
                subscriber.create_subscription(
                    request={
                        "name": subscriber.subscription_path(project, f"{topic}-push"),
                        "topic": publisher.topic_path(project, topic),
                        "push_config": {"push_endpoint": endpoint},
                        "ack_deadline_seconds": 60,
                        "retry_policy": {
                            "minimum_backoff": {"seconds": 1},
                            "maximum_backoff": {"seconds": 10},
                        },
                        "dead_letter_policy": {
                            "dead_letter_topic": publisher.topic_path(
                                project, f"{topic}-dead-letter"
                            ),
                            "max_delivery_attempts": 5,
                        },
                    }
                )
        for topic, endpoint in (dead_letter_push or {}).items():
            with contextlib.suppress(gexc.AlreadyExists):
                subscriber.create_subscription(
                    request={
                        "name": subscriber.subscription_path(project, f"{topic}-dead-letter-push"),
                        "topic": publisher.topic_path(project, f"{topic}-dead-letter"),
                        "push_config": {"push_endpoint": endpoint},
                        "ack_deadline_seconds": 60,
                        "retry_policy": {
                            "minimum_backoff": {"seconds": 1},
                            "maximum_backoff": {"seconds": 30},
                        },
                    }
                )
        subscriber.close()


def load_tables(
    bigquery_url: str,
    project: str,
    datasets: Sequence[str],
    tables: Mapping[str, tuple[Sequence[tuple[str, str]], list[dict[str, Any]]]],
    chunk: int = 2500,
    routines: Sequence[str] = (),
) -> None:
    """Create ``datasets``, (re)create each ``dataset.table -> (schema, rows)`` with its rows,
    and run each ``CREATE OR REPLACE FUNCTION`` statement of ``routines``."""
    client = bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=bigquery_url),
    )
    for dataset in datasets:
        client.create_dataset(f"{project}.{dataset}", exists_ok=True)
    for name, (schema, rows) in tables.items():
        table_id = f"{project}.{name}"
        client.delete_table(table_id, not_found_ok=True)
        fields = [bigquery.SchemaField(c, t) for c, t in schema]
        client.create_table(bigquery.Table(table_id, schema=fields))
        for i in range(0, len(rows), chunk):
            errors = client.insert_rows_json(table_id, rows[i : i + chunk])
            if errors:
                raise RuntimeError(f"loading {table_id}: {errors[:3]}")
    for ddl in routines:
        client.query(ddl).result(timeout=60)


def emulator_table_schema(bigquery_url: str, table_fqn: str) -> list[dict[str, Any]]:
    """REST schema fields of a table on the local BigQuery emulator (KeyError if unknown)."""
    project = table_fqn.split(".", 1)[0]
    client = bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=bigquery_url),
    )
    try:
        # One try: a dev stack that is not running must not keep a command waiting.
        table = client.get_table(table_fqn, timeout=5, retry=None)  # type: ignore[arg-type]  # None: no retry (the library accepts it)
    except (gexc.NotFound, gexc.BadRequest, ValueError):
        raise KeyError(table_fqn) from None
    return [f.to_api_repr() for f in table.schema]
