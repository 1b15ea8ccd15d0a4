"""Approvals: Slack's interactivity endpoint, the approver API and the approver console. Thin.

``POST /slack/interactions`` (Slack-signed), ``GET /v1/approvals``,
``POST /v1/approvals/{job_id}:approve`` and ``:deny`` (OIDC bearer token), and the
console's pages under ``/console`` (OIDC sign-in, session cookie).
"""

from __future__ import annotations

import flask
import flask.typing
import functions_framework
from bqgate.adapters import wiring
from bqgate.console import is_console_path
from bqgate.wire.bigquery import dumps


@functions_framework.http
def approvals(request: flask.Request) -> flask.typing.ResponseReturnValue:
    if is_console_path(request.path):
        return wiring.console_app().respond(request)
    resp = wiring.approvals_app().handle(
        request.method, request.path, request.headers, request.get_data(cache=False),
        request.args.to_dict())
    return flask.Response(dumps(resp.body), status=resp.status, mimetype="application/json")
