"""slack_notify: posts approval requests to Slack (Pub/Sub CloudEvent). Thin."""

from __future__ import annotations

import logging

import functions_framework
from cloudevents.http import CloudEvent

log = logging.getLogger("bqgate.slack_notify")


@functions_framework.cloud_event
def slack_notify(event: CloudEvent) -> None:
    log.info("approval request %s received", event.get("id"))
