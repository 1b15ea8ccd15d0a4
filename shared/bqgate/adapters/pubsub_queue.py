"""The queue on Pub/Sub: one JSON message per job hand-off.

A publish waits for the server's ack at most ``timeout_s`` (the library's own retry is
bounded to the same), then fails as :class:`bqgate.errors.Unavailable`. A message whose
ack was merely late may still be delivered: the executor is idempotent, so that is safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# google-cloud-pubsub ships no py.typed: mypy sees no pubsub_v1 in google.cloud.
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from bqgate.adapters.google_errors import outage_as_unavailable, retry
from bqgate.wire.envelopes import message_data

#: Seconds a publish may take, retries included.
PUBLISH_TIMEOUT_S = 5.0


class PubSubQueue:
    """Publishes and waits for the server's ack, at most ``timeout_s`` (the outbox makes a
    publish that timed out harmless: its record stays due and is re-sent)."""

    def __init__(
        self,
        publisher: pubsub_v1.PublisherClient,
        project: str,
        *,
        timeout_s: float = PUBLISH_TIMEOUT_S,
    ) -> None:
        self.publisher = publisher
        self.project = project
        self.timeout_s = timeout_s
        # The client's own retries end with the timeout too: a publish reported failed
        # must not go out minutes later behind the outbox's back (harmless, but untold).
        self.retry = retry(timeout_s)

    def publish(self, topic: str, message: Mapping[str, Any]) -> None:
        path = self.publisher.topic_path(self.project, topic)
        data = message_data(message)
        # Wait for the server's ack: a job must not be reported as queued before it is.
        with outage_as_unavailable("Pub/Sub"):
            future = self.publisher.publish(path, data, retry=self.retry, timeout=self.timeout_s)
            future.result(timeout=self.timeout_s)
