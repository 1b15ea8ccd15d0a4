"""Approvals: Slack's interactivity endpoint, the approver API (HTTP) and the approver
console (``/console``, HTML pages). Thin.

``POST /slack/interactions`` (Slack-signed), ``GET /v1/approvals``,
``POST /v1/approvals/{job_id}:approve`` and ``:deny`` (OIDC bearer token).
"""

from __future__ import annotations

import flask
import functions_framework
from bqgate import bootstrap, runtime
from bqgate.adapters import http_edge
from bqgate.console import is_console_path

http_edge.install()  # JSON (not HTML) for the web server's own error answers
runtime.tune_gc()  # results allocate many small acyclic objects (bqgate.runtime)


@functions_framework.http
def approvals(request: flask.Request) -> flask.typing.ResponseReturnValue:
    if is_console_path(request.path):
        return bootstrap.console_app().respond(request)
    return http_edge.serve(
        request,
        lambda method, path, params, headers, body: bootstrap.approvals_app().handle(
            method, path, headers, body, params
        ),
    )
