"""HTTP onto the ingress core: routing, authentication, and the one place errors map to
responses. Framework-free: the function's ``main.py`` passes plain values in and out.

>>> route("GET", "/bigquery/v2/projects/p/queries/j1")
('get_query_results', {'project': 'p', 'job_id': 'j1'})
>>> route("POST", "/bigquery/v2/projects/p/jobs")
('insert_job', {'project': 'p'})
>>> route("GET", "/nope") is None
True
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bqgate.errors import BqgateError, InvalidRequest, NotFound, NotImplementedApi
from bqgate.identity import Principal, TokenVerifier, bearer_token
from bqgate.service.gateway import Gateway
from bqgate.wire import bigquery as wire

log = logging.getLogger("bqgate.ingress")

_SEG = r"([A-Za-z0-9_.:\-]+)"
ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("POST", re.compile(rf"^/bigquery/v2/projects/{_SEG}/jobs/?$"), "insert_job"),
    ("GET", re.compile(rf"^/bigquery/v2/projects/{_SEG}/jobs/{_SEG}/?$"), "get_job"),
    ("POST", re.compile(rf"^/bigquery/v2/projects/{_SEG}/jobs/{_SEG}/cancel/?$"), "cancel_job"),
    ("POST", re.compile(rf"^/bigquery/v2/projects/{_SEG}/queries/?$"), "query"),
    ("GET", re.compile(rf"^/bigquery/v2/projects/{_SEG}/queries/{_SEG}/?$"), "get_query_results"),
)
_ARGS = {
    "insert_job": ("project",),
    "get_job": ("project", "job_id"),
    "cancel_job": ("project", "job_id"),
    "query": ("project",),
    "get_query_results": ("project", "job_id"),
}


def route(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    """The handler name and path arguments for a request, or None."""
    for verb, pattern, name in ROUTES:
        m = pattern.match(path)
        if m and verb == method.upper():
            return name, dict(zip(_ARGS[name], m.groups(), strict=True))
    return None


@dataclass(frozen=True)
class Response:
    status: int
    body: dict[str, Any]


def error_response(err: BqgateError) -> Response:
    return Response(err.http_status, err.to_body())


class IngressApp:
    """Authenticates, routes and answers one BigQuery REST request."""

    def __init__(
        self, gateway: Callable[[], Gateway], verifier: Callable[[], TokenVerifier]
    ) -> None:
        # Factories, so the clients behind them are built on first use, not at import.
        self._gateway = gateway
        self._verifier = verifier

    def handle(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Response:
        try:
            return self._handle(method, path, params, headers, body)
        except BqgateError as err:
            return error_response(err)
        except Exception:  # the one place an unexpected failure becomes an answer
            incident = uuid.uuid4().hex[:12]
            log.exception("unhandled error (incident %s) on %s %s", incident, method, path)
            message = f"The gateway failed to handle the request (incident {incident})."
            # Not a retryable reason: an unexplained failure must not start a retry loop.
            errors = [{"reason": "gatewayError", "message": message}]
            answer = {
                "error": {"code": 500, "status": "INTERNAL", "message": message, "errors": errors}
            }
            return Response(500, answer)

    def _handle(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Response:
        if method.upper() == "GET" and path in ("/", "/healthz"):
            return Response(200, {"status": "ok", "service": "bqgate-ingress"})
        found = route(method, path)
        if found is None:
            if path.startswith("/bigquery/v2/") or path.startswith("/upload/bigquery/"):
                raise NotImplementedApi(
                    f"{method.upper()} {path} is not offered by the bqgate gateway: it serves "
                    "query jobs only (jobs.insert, jobs.get, jobs.query, jobs.getQueryResults, "
                    "jobs.cancel)"
                )
            raise NotFound(f"Not found: {method.upper()} {path}")
        name, args = found
        principal = self._verifier().verify(bearer_token(headers.get("Authorization")))
        gateway = self._gateway()
        if name == "insert_job":
            return Response(
                200, gateway.insert_job(principal, args["project"], wire.parse_json_body(body))
            )
        if name == "query":
            return Response(
                200, gateway.query(principal, args["project"], wire.parse_json_body(body))
            )
        if name == "get_job":
            return Response(200, gateway.get_job(principal, args["project"], args["job_id"]))
        if name == "cancel_job":
            return Response(200, gateway.cancel_job(principal, args["project"], args["job_id"]))
        if name == "get_query_results":
            return Response(
                200, gateway.get_query_results(principal, args["project"], args["job_id"], params)
            )
        raise InvalidRequest(f"unroutable request {name}")  # pragma: no cover


__all__ = ["IngressApp", "Principal", "Response", "error_response", "route"]
