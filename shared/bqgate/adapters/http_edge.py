"""The Flask side of the HTTP edge every HTTP function answers through (functions-framework).

* Limits before anything is parsed: URL length, header size and count, body size
  (:mod:`bqgate.service.http`); over a limit the answer is a BigQuery-shaped 413/414/431.
* The body is read in bounded chunks, never whole when it is too large.
* JSON for the errors the web server answers itself: Flask's (``/robots.txt``, malformed
  requests) through functions-framework's ``errorhandler``, and gunicorn's (oversized
  header fields, bad request lines), which it otherwise writes as HTML before the app sees
  the request. gunicorn offers no hook for that page, and functions-framework sets
  gunicorn's options itself, so :func:`install` replaces ``gunicorn.util.write_error`` (the
  one function every gunicorn worker writes those answers with) with a JSON writer that
  keeps the status, except that a client's malformed request never gets a 5xx.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from typing import Any, cast

import flask

from bqgate.errors import BqgateError, InvalidRequest, TooLarge
from bqgate.service.http import (
    MAX_BODY_BYTES,
    Response,
    answered,
    check_request_limits,
    internal_error,
)
from bqgate.wire import codec

_CHUNK = 64 * 1024
#: Most bytes of an oversized body read (and dropped) so the connection stays usable.
_DRAIN_LIMIT = 64 * 1024 * 1024
_installed = threading.Lock()
_done = {"flag": False}

Handler = Callable[[str, str, dict[str, str], Mapping[str, str], bytes], Response]


def _drain(stream: Any) -> None:
    seen = 0
    while seen < _DRAIN_LIMIT:
        chunk = stream.read(_CHUNK)
        if not chunk:
            return
        seen += len(chunk)


def read_body(request: flask.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, or :class:`TooLarge` (the rest is drained, not kept), or
    ``InvalidRequest`` when the body's framing is broken (a bad chunk, a short body)."""
    too_large = TooLarge(f"The request body is over the gateway's limit of {limit} bytes")
    try:
        if request.content_length is not None and request.content_length > limit:
            _drain(request.stream)
            raise too_large
        data = request.stream.read(limit + 1)
        if len(data) > limit:
            _drain(request.stream)
            raise too_large
    except BqgateError:
        raise
    except Exception:  # the web server's body parser: the client's framing is broken
        raise InvalidRequest("The request body is malformed (its length or chunks)") from None
    return bytes(data)


def _url_bytes(request: flask.Request) -> int:
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if isinstance(raw, str):
        return len(raw)
    return len(request.path) + len(request.query_string) + 1


def json_response(resp: Response) -> flask.Response:
    return flask.Response(
        codec.dumps_bytes(resp.body), status=resp.status, mimetype="application/json"
    )


def serve(request: flask.Request, handle: Handler, *, service: str = "gateway") -> flask.Response:
    """Check the limits, read the body, call ``handle`` and encode its answer as JSON (an
    error on the way is answered as :func:`bqgate.service.http.answered` maps it)."""

    def call() -> Response:
        check_request_limits(_url_bytes(request), list(request.headers.items()))
        body = read_body(request)
        params = request.args.to_dict()
        headers = cast(Mapping[str, str], request.headers)
        return handle(request.method, request.path, params, headers, body)

    return json_response(answered(service, request.method, request.path, call))


def error_body(status: int, message: str) -> dict[str, Any]:
    """A BigQuery-shaped error body for an answer the web server gives itself."""
    return {
        "error": {
            "code": status,
            "message": message,
            "status": "INVALID_ARGUMENT" if status < 500 else "INTERNAL",
            "errors": [
                {"reason": "invalid" if status < 500 else "gatewayError", "message": message}
            ],
        }
    }


#: gunicorn's own answers, by status: a fixed message (gunicorn's would echo the input).
_SERVER_MESSAGES = {
    400: "The request is malformed (bad request line, header or chunked encoding)",
    403: "The request was refused by the web server",
    414: "The request URL is too long",
    417: "The Expect header is not supported",
    431: "The request headers are too large",
}


def _json_write_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    from gunicorn import util

    if status_int >= 500 and reason != "Internal Server Error":
        status_int = 400  # a malformed request (odd transfer coding, path) is the client's
    message = _SERVER_MESSAGES.get(status_int, "The request is malformed")
    if status_int >= 500:
        message = "The web server failed to handle the request"
    body = json.dumps(error_body(status_int, message), separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json; charset=UTF-8\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    util.write_nonblock(sock, head + body)


def _flask_error(exc: Any) -> flask.Response:
    status = int(getattr(exc, "code", None) or 400)
    if status >= 500:
        return json_response(internal_error("gateway", "?", "?"))
    message = str(getattr(exc, "name", "") or "Bad request")
    return json_response(Response(status, error_body(status, message)))


def install() -> None:
    """JSON for the web server's own error answers (see the module docstring). Called by
    the HTTP functions' ``main.py`` when functions-framework loads them."""
    import functions_framework
    from werkzeug.exceptions import HTTPException

    # Registers on the app functions-framework is building (a no-op outside it).
    functions_framework.errorhandler(HTTPException)(_flask_error)
    with _installed:
        if _done["flag"]:
            return
        try:
            from gunicorn import util
        except ImportError:  # pragma: no cover - the Flask dev server needs no patch
            _done["flag"] = True
            return
        util.write_error = _json_write_error
        _done["flag"] = True
