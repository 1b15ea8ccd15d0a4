"""Approvals: Slack's interactivity endpoint and the approver API (HTTP). Thin.

``POST /slack/interactions`` (Slack-signed), ``GET /v1/approvals``,
``POST /v1/approvals/{job_id}:approve`` and ``:deny`` (OIDC bearer token).
"""

from __future__ import annotations

import flask
import functions_framework
from bqgate.adapters import wiring
from bqgate.wire.bigquery import dumps


@functions_framework.http
def approvals(request: flask.Request) -> flask.Response:
    resp = wiring.approvals_app().handle(
        request.method, request.path, request.headers, request.get_data(cache=False),
        request.args.to_dict())
    return flask.Response(dumps(resp.body), status=resp.status, mimetype="application/json")
