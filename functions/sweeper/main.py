"""Sweeper: the outbox reconciler, approval expiry, orphaned jobs (Cloud Scheduler, HTTP),
and the dead-letter consumer (Pub/Sub push to /dead-letter/{topic}). Thin."""

from __future__ import annotations

import flask
import functions_framework
from bqgate.adapters import wiring
from bqgate.wire.bigquery import dumps


@functions_framework.http
def sweeper(request: flask.Request) -> flask.Response:
    body = request.get_json(silent=True, cache=False)
    resp = wiring.sweeper_app().handle(
        request.method, request.path, body if isinstance(body, dict) else None
    )
    return flask.Response(dumps(resp.body), status=resp.status, mimetype="application/json")
