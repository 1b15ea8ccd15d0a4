"""Executor: runs allowed and approved jobs on BigQuery; answers the ingress's metadata
requests. Thin.

Pub/Sub push deliveries and the ingress's direct calls (a binary-mode CloudEvent) carry
the same body, ``{"message": {"data": base64({"job_id": ...})}}``; a direct call
(``X-Bqgate-Direct: 1``) is answered with the finished job and its inline rows;
``POST /bqgate/catalog`` is a metadata request (only the ingress may invoke this
function, by Cloud Run IAM).
"""

from __future__ import annotations

import logging

import flask
import functions_framework
from bqgate import bootstrap, runtime
from bqgate.adapters import executor_client, http_edge
from bqgate.service.catalog import CATALOG_PATH
from bqgate.service.dispatch import DIRECT_HEADER
from bqgate.wire.envelopes import pushed

log = logging.getLogger("bqgate.executor")
http_edge.install()  # JSON (not HTML) for the web server's own error answers
runtime.tune_gc()  # results allocate many small acyclic objects (bqgate.runtime)


@functions_framework.http
def executor(request: flask.Request) -> flask.Response:
    if request.path.rstrip("/") == CATALOG_PATH:
        return http_edge.serve(
            request,
            lambda method, path, params, headers, body: bootstrap.catalog_app().handle(body),
            service="executor",
        )
    data = request.get_data(cache=False)
    job_id, handover = pushed(data)
    if job_id is None:
        # Acknowledge: redelivering a malformed message would never fix it.
        log.error("malformed execute message %s: dropped", request.headers.get("ce-id"))
        return flask.Response("OK", status=200)
    if request.headers.get(DIRECT_HEADER) == "1":  # the ingress's direct call: answer it
        answer, text, headers = executor_client.serve_direct(
            bootstrap.executor(),
            bootstrap.session_hints(),
            job_id,
            request.headers.get(executor_client.HEAD_HEADER),
            handover,
        )
        log.info("job %s: %s", job_id, answer.outcome)
        return flask.Response(text, status=200, headers=headers, mimetype="application/x-ndjson")
    outcome = bootstrap.executor().run(job_id)
    log.info("job %s: %s", job_id, outcome)
    return flask.Response("OK", status=200)
