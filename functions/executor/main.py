"""Executor: runs allowed and approved jobs on BigQuery (Pub/Sub CloudEvent). Thin."""

from __future__ import annotations

import base64
import json
import logging

import functions_framework
from bqgate.adapters import wiring
from cloudevents.http import CloudEvent

log = logging.getLogger("bqgate.executor")


def job_id_of(event: CloudEvent) -> str | None:
    """The job id carried by a Pub/Sub ``messagePublished`` event, or None if malformed."""
    try:
        data = event.data["message"]["data"]
        message = json.loads(base64.b64decode(data))
        job_id = message["job_id"]
    except (KeyError, TypeError, ValueError):
        return None
    return job_id if isinstance(job_id, str) and job_id else None


@functions_framework.cloud_event
def executor(event: CloudEvent) -> None:
    job_id = job_id_of(event)
    if job_id is None:
        # Acknowledge: redelivering a malformed message would never fix it.
        log.error("malformed execute message %s: dropped", event.get("id"))
        return
    outcome = wiring.executor().run(job_id)
    log.info("job %s: %s", job_id, outcome)
