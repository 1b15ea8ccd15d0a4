"""slack_notify: posts approval requests to Slack (Pub/Sub CloudEvent on ``approvals``). Thin."""

from __future__ import annotations

import logging

import functions_framework
from bqgate import bootstrap, runtime
from bqgate.wire.envelopes import job_id_of_event
from cloudevents.http import CloudEvent

log = logging.getLogger("bqgate.slack_notify")
runtime.tune_gc()  # results allocate many small acyclic objects (bqgate.runtime)


@functions_framework.cloud_event
def slack_notify(event: CloudEvent) -> None:
    job_id = job_id_of_event(event.data)
    if job_id is None:
        # Acknowledge: redelivering a malformed message would never fix it.
        log.error("malformed approvals message %s: dropped", event.get("id"))
        return
    # Raises on a Slack failure, so Pub/Sub redelivers (then dead-letters).
    log.info("job %s: %s", job_id, bootstrap.approval_service().notify(job_id))
