"""Ingress: the BigQuery REST API for agents (HTTP). Thin: decode, call the core, encode."""

from __future__ import annotations

import flask
import functions_framework
from bqgate import bootstrap, runtime
from bqgate.adapters import http_edge

http_edge.install()  # JSON (not HTML) for the web server's own error answers
runtime.tune_gc()  # results allocate many small acyclic objects (bqgate.runtime)


@functions_framework.http
def ingress(request: flask.Request) -> flask.Response:
    return http_edge.serve(request, lambda *args: bootstrap.ingress_app().handle(*args))
