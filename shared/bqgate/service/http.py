"""HTTP onto the ingress core: routing, authentication, request limits, and the one place
errors map to responses. Framework-free: the function's ``main.py`` passes plain values in
and out (through :mod:`bqgate.adapters.http_edge`, which enforces the limits below).

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

from bqgate.errors import (
    BqgateError,
    InvalidRequest,
    NotFound,
    NotImplementedApi,
    TooLarge,
    Unavailable,
    unavailable_reason,
)
from bqgate.identity import Principal, TokenVerifier, bearer_token
from bqgate.service.gateway import Gateway
from bqgate.wire import bigquery as wire

log = logging.getLogger("bqgate.ingress")

#: Longest URL (path and query string) served; BigQuery's own front end stops near 16 KiB.
MAX_URL_BYTES = 8 * 1024
#: Most header bytes (names and values together) and header fields served.
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADER_FIELDS = 100
#: Largest request body (the limit :func:`bqgate.wire.bigquery.loads` enforces too).
MAX_BODY_BYTES = wire.MAX_BODY_BYTES

# A path segment is anything but ``/``; the handler validates what it holds.
_SEG = r"([^/]+)"
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
#: Handlers a client may repeat without starting a second job.
_IDEMPOTENT = frozenset({"get_job", "cancel_job", "get_query_results"})


def route(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    """The handler name and path arguments for a request, or None."""
    for verb, pattern, name in ROUTES:
        m = pattern.match(path)
        if m and verb == method.upper():
            return name, dict(zip(_ARGS[name], m.groups(), strict=True))
    return None


def check_request_limits(
    url_bytes: int, headers: Mapping[str, str] | list[tuple[str, str]]
) -> None:
    """Raise :class:`TooLarge` (414 or 431) for a URL or headers over the limits.

    >>> check_request_limits(100, {"Host": "x"})
    >>> check_request_limits(MAX_URL_BYTES + 1, {}) # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bqgate.errors.TooLarge: The request URL is over the gateway's limit of 8192 bytes
    """
    if url_bytes > MAX_URL_BYTES:
        raise TooLarge(
            f"The request URL is over the gateway's limit of {MAX_URL_BYTES} bytes",
            http_status=414,
        )
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    size = sum(len(k) + len(v) + 4 for k, v in items)
    if size > MAX_HEADER_BYTES or len(items) > MAX_HEADER_FIELDS:
        raise TooLarge(
            f"The request headers are over the gateway's limit of {MAX_HEADER_BYTES} bytes "
            f"in {MAX_HEADER_FIELDS} fields",
            http_status=431,
        )


def _check_project(project: str) -> str:
    if not wire.PROJECT_RE.match(project):
        raise InvalidRequest("Invalid value at 'projectId': not a project id")
    return project


@dataclass(frozen=True)
class Response:
    status: int
    body: dict[str, Any]


def error_response(err: BqgateError, *, idempotent: bool = False) -> Response:
    """The BigQuery-shaped answer for ``err``. A dependency outage answers 503 with a reason
    a client retries only when ``idempotent`` (see :func:`bqgate.errors.unavailable_reason`).
    """
    body = err.to_body()
    if isinstance(err, Unavailable):
        reason = unavailable_reason(idempotent)
        for entry in body["error"]["errors"]:
            entry["reason"] = reason
    return Response(err.http_status, body)


def internal_error(service: str, method: str, path: str) -> Response:
    """The answer to an unexpected failure: 500 with an incident id, no data, and a reason
    no client retries (an unexplained failure must not start a retry loop)."""
    incident = uuid.uuid4().hex[:12]
    log.exception("unhandled error (incident %s) on %s %s", incident, method, path[:200])
    message = f"The {service} failed to handle the request (incident {incident})."
    errors = [{"reason": "gatewayError", "message": message}]
    return Response(
        500, {"error": {"code": 500, "status": "INTERNAL", "message": message, "errors": errors}}
    )


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
        idempotent = {"flag": False}
        try:
            return self._handle(method, path, params, headers, body, idempotent)
        except BqgateError as err:
            return error_response(err, idempotent=idempotent["flag"])
        except Exception:  # the one place an unexpected failure becomes an answer
            return internal_error("gateway", method, path)

    def _handle(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
        idempotent: dict[str, bool],
    ) -> Response:
        if method.upper() == "GET" and path in ("/", "/healthz"):
            return Response(200, {"status": "ok", "service": "bqgate-ingress"})
        found = route(method, path)
        if found is None:
            if path.startswith("/bigquery/v2/") or path.startswith("/upload/bigquery/"):
                raise NotImplementedApi(
                    f"{method.upper()} {path[:200]} is not offered by the bqgate gateway: it "
                    "serves query jobs only (jobs.insert, jobs.get, jobs.query, "
                    "jobs.getQueryResults, jobs.cancel)"
                )
            raise NotFound(f"Not found: {method.upper()} {path[:200]}")
        name, args = found
        project = _check_project(args["project"])
        job_id = wire.check_job_id(args["job_id"], "jobId") if "job_id" in args else None
        # Safe to retry: reads, and submissions that name their job (a repeat finds it).
        idempotent["flag"] = name in _IDEMPOTENT
        principal = self._verifier().verify(bearer_token(headers.get("Authorization")))
        data = wire.parse_json_body(body) if name in ("insert_job", "query") else {}
        ref = data.get("jobReference")
        idempotent["flag"] = idempotent["flag"] or bool(
            (name == "insert_job" and isinstance(ref, dict) and wire.is_job_id(ref.get("jobId")))
            or (name == "query" and wire.is_job_id(data.get("requestId")))
        )
        gateway = self._gateway()
        if name == "insert_job":
            return Response(200, gateway.insert_job(principal, project, data))
        if name == "query":
            return Response(200, gateway.query(principal, project, data))
        assert job_id is not None
        if name == "get_job":
            return Response(200, gateway.get_job(principal, project, job_id))
        if name == "cancel_job":
            return Response(200, gateway.cancel_job(principal, project, job_id))
        if name == "get_query_results":
            return Response(200, gateway.get_query_results(principal, project, job_id, params))
        raise InvalidRequest(f"unroutable request {name}")  # pragma: no cover


__all__ = [
    "IngressApp",
    "Principal",
    "Response",
    "check_request_limits",
    "error_response",
    "internal_error",
    "route",
]
