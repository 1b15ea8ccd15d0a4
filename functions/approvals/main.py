"""Approvals: Slack's interactivity endpoint and the approver API (HTTP). Thin."""

from __future__ import annotations

import flask
import functions_framework

from bqgate.wire.bigquery import dumps


@functions_framework.http
def approvals(request: flask.Request) -> flask.Response:
    if request.method == "GET" and request.path in ("/", "/healthz"):
        return flask.Response(dumps({"status": "ok", "service": "bqgate-approvals"}), 200,
                              mimetype="application/json")
    body = {"error": {"code": 501, "status": "UNIMPLEMENTED",
                      "message": "approvals are not available yet",
                      "errors": [{"reason": "notImplemented", "message": "approvals are not available yet"}]}}
    return flask.Response(dumps(body), 501, mimetype="application/json")
