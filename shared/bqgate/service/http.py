"""The HTTP edge every function answers through: request limits, health checks, and the
one place errors map to responses. Framework-free: each function's ``main.py`` passes plain
values in and out through :mod:`bqgate.adapters.http_edge` (Flask), which enforces the limits
below; the ASGI MCP function uses the same answers.

>>> health_check("sweeper", "GET", "/healthz")
Response(status=200, body={'status': 'ok', 'service': 'bqgate-sweeper'})
>>> def lookup() -> Response:
...     raise not_found("GET", "/x")
>>> answered("gateway", "GET", "/x", lookup).body["error"]["errors"]
[{'reason': 'notFound', 'message': 'Not found: GET /x'}]
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bqgate.errors import BqgateError, NotFound, TooLarge, Unavailable, unavailable_reason
from bqgate.wire import bigquery as wire

log = logging.getLogger("bqgate.http")

#: Longest URL (path and query string) served; BigQuery's own front end stops near 16 KiB.
MAX_URL_BYTES = 8 * 1024
#: Most header bytes (names and values together) and header fields served.
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADER_FIELDS = 100
#: Largest request body (the limit :func:`bqgate.wire.bigquery.loads` enforces too).
MAX_BODY_BYTES = wire.MAX_BODY_BYTES
#: Where every function answers health checks (building nothing).
HEALTH_PATHS = ("/", "/healthz")


def check_request_limits(
    url_bytes: int, headers: Mapping[str, str] | list[tuple[str, str]]
) -> None:
    """Raise :class:`TooLarge` (414 or 431) for a URL or headers over the limits.

    >>> check_request_limits(100, {"Host": "x"})
    >>> check_request_limits(MAX_URL_BYTES + 1, {})  # doctest: +ELLIPSIS
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


def internal_error_body(message: str) -> dict[str, Any]:
    """BigQuery's error body for a failure of the gateway's own: 500, ``gatewayError`` (a
    reason no client retries: an unexplained failure must not start a retry loop)."""
    errors = [{"reason": "gatewayError", "message": message}]
    return {"error": {"code": 500, "status": "INTERNAL", "message": message, "errors": errors}}


def internal_error(service: str, method: str, path: str, *, what: str = "") -> Response:
    """The answer to an unexpected failure: 500 with an incident id and no data."""
    incident = uuid.uuid4().hex[:12]
    log.exception("unhandled error (incident %s) on %s %s", incident, method, path[:200])
    message = f"The {service} {what or 'failed to handle the request'} (incident {incident})."
    return Response(500, internal_error_body(message))


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name``, whatever the case of its name.

    >>> header({"content-type": "text/plain"}, "Content-Type")
    'text/plain'
    """
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for k, v in headers.items():
            if k.lower() == lowered:
                return v
    return value


def json_object(headers: Mapping[str, str], body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object when it is sent as JSON (``application/json`` or
    ``application/*+json``), else None, as Flask's ``get_json(silent=True)`` reads it.

    >>> json_object({"Content-Type": "application/json"}, b'{"a": 1}')
    {'a': 1}
    >>> json_object({}, b'{"a": 1}'), json_object({"Content-Type": "application/json"}, b"[")
    (None, None)
    """
    mimetype = (header(headers, "Content-Type") or "").split(";")[0].strip().lower()
    if mimetype != "application/json" and not (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    ):
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def health_check(service: str, method: str, path: str) -> Response | None:
    """The answer to ``GET /`` or ``/healthz`` of ``bqgate-<service>``; None for any other
    request."""
    if method.upper() == "GET" and path in HEALTH_PATHS:
        return Response(200, {"status": "ok", "service": f"bqgate-{service}"})
    return None


def answered(
    service: str,
    method: str,
    path: str,
    call: Callable[[], Response],
    *,
    idempotent: Callable[[], bool] = lambda: False,
    what: str = "",
) -> Response:
    """``call()``, or the answer to the error it raised: a gateway error as BigQuery shapes
    it (:func:`error_response`), anything else as :func:`internal_error`. The one place an
    error becomes an HTTP answer."""
    try:
        return call()
    except BqgateError as err:
        return error_response(err, idempotent=idempotent())
    except Exception:
        return internal_error(service, method, path, what=what)


def not_found(method: str, path: str) -> BqgateError:
    """The error for a path no route of a function takes."""
    return NotFound(f"Not found: {method.upper()} {path[:200]}")


__all__ = [
    "HEALTH_PATHS",
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_HEADER_FIELDS",
    "MAX_URL_BYTES",
    "Response",
    "answered",
    "check_request_limits",
    "error_response",
    "header",
    "health_check",
    "internal_error",
    "internal_error_body",
    "json_object",
    "not_found",
]
