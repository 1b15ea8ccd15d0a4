"""Ingress: the BigQuery REST API for agents (HTTP). Thin: decode, call the core, encode."""

from __future__ import annotations

import flask
import functions_framework
from bqgate.adapters import wiring
from bqgate.wire.bigquery import dumps


@functions_framework.http
def ingress(request: flask.Request) -> flask.Response:
    resp = wiring.ingress_app().handle(
        request.method,
        request.path,
        request.args.to_dict(),
        request.headers,
        request.get_data(cache=False),
    )
    return flask.Response(dumps(resp.body), status=resp.status, mimetype="application/json")
