"""Executor: runs allowed and approved jobs on BigQuery; answers the ingress's metadata
requests. Thin.

Pub/Sub push deliveries and the ingress's direct calls (a binary-mode CloudEvent) carry
the same body, ``{"message": {"data": base64({"job_id": ...})}}``; a direct call
(``X-Bqgate-Direct: 1``) is answered with the finished job and its inline rows;
``POST /bqgate/catalog`` is a metadata request (only the ingress may invoke this
function, by Cloud Run IAM).
"""

from __future__ import annotations

import base64
import json
import logging

import flask
import functions_framework
from bqgate.adapters import executor_client, wiring
from bqgate.service.catalog import CATALOG_PATH
from bqgate.service.dispatch import DIRECT_HEADER
from bqgate.wire.bigquery import dumps

log = logging.getLogger("bqgate.executor")


def job_id_of(body: bytes) -> str | None:
    """The job id carried by a Pub/Sub push body or CloudEvent, or None if malformed."""
    try:
        envelope = json.loads(body)
        if isinstance(envelope, dict) and "specversion" in envelope:  # structured mode
            envelope = envelope["data"]
        message = json.loads(base64.b64decode(envelope["message"]["data"]))
        job_id = message["job_id"]
    except (KeyError, TypeError, ValueError):
        return None
    return job_id if isinstance(job_id, str) and job_id else None


@functions_framework.http
def executor(request: flask.Request) -> flask.Response:
    body = request.get_data(cache=False)
    if request.path.rstrip("/") == CATALOG_PATH:
        resp = wiring.catalog_app().handle(body)
        return flask.Response(dumps(resp.body), status=resp.status, mimetype="application/json")
    job_id = job_id_of(body)
    if job_id is None:
        # Acknowledge: redelivering a malformed message would never fix it.
        log.error("malformed execute message %s: dropped", request.headers.get("ce-id"))
        return flask.Response("OK", status=200)
    if request.headers.get(DIRECT_HEADER) == "1":  # the ingress's direct call: answer it
        answer, text, headers = executor_client.serve_direct(
            wiring.executor(),
            wiring.session_hints(),
            job_id,
            request.headers.get(executor_client.HEAD_HEADER),
        )
        log.info("job %s: %s", job_id, answer.outcome)
        return flask.Response(text, status=200, headers=headers, mimetype="application/json")
    outcome = wiring.executor().run(job_id)
    log.info("job %s: %s", job_id, outcome)
    return flask.Response("OK", status=200)
