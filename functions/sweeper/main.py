"""Sweeper: the outbox reconciler, approval expiry, orphaned jobs (Cloud Scheduler, HTTP),
and the dead-letter consumer (Pub/Sub push to /dead-letter/{topic}). Thin."""

from __future__ import annotations

import flask
import functions_framework
from bqgate import bootstrap, runtime
from bqgate.adapters import http_edge

http_edge.install()  # JSON (not HTML) for the web server's own error answers
runtime.tune_gc()  # results allocate many small acyclic objects (bqgate.runtime)


@functions_framework.http
def sweeper(request: flask.Request) -> flask.Response:
    return http_edge.serve(
        request,
        lambda method, path, params, headers, body: bootstrap.sweeper_app().handle(
            method, path, headers, body
        ),
        service="sweeper",
    )
