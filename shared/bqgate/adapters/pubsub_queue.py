"""The queue on Pub/Sub: one JSON message per job hand-off."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

PUBLISH_TIMEOUT_S = 30.0


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
        self.retry = gretry.Retry(
            initial=0.1,
            maximum=1.0,
            multiplier=2.0,
            timeout=timeout_s,
            predicate=gretry.if_exception_type(
                gexc.Aborted,
                gexc.DeadlineExceeded,
                gexc.InternalServerError,
                gexc.ResourceExhausted,
                gexc.ServiceUnavailable,
                gexc.Unknown,
            ),
        )

    def publish(self, topic: str, message: Mapping[str, Any]) -> None:
        path = self.publisher.topic_path(self.project, topic)
        data = json.dumps(dict(message), separators=(",", ":")).encode()
        # Wait for the server's ack: a job must not be reported as queued before it is.
        future = self.publisher.publish(path, data, retry=self.retry, timeout=self.timeout_s)
        future.result(timeout=self.timeout_s + 0.5)
