"""A bounded, seeded HTTP fuzzer for the gateway (ingress) and the approvals function.

``run_fuzz(urls, tokens, n, seed)`` sends ``n`` requests built from hostile bodies, paths,
headers and query strings, over raw sockets (so malformed requests reach the web server as
written), and checks every answer:

* never a 5xx;
* every body is JSON (``HEAD`` answers have none);
* every error (4xx) is BigQuery-shaped: ``{"error": {"code": <status>, "message": str,
  "errors": [{"reason": str, "message": str}, ...]}}``;
* a 200 from ``/slack/interactions`` has one of Slack's documented shapes (an empty object,
  an ephemeral message, or a view ``response_action``); a 200 from the approver API is
  ``{"approvals": [...]}`` or a decision (``job_id``, ``outcome``).

``urls`` needs ``gateway`` and ``approvals`` (base URLs); ``tokens`` needs ``agent`` and
``approver`` (OIDC bearer tokens) and may hold ``slack_signing_secret`` (then interaction
payloads are signed, so they reach the payload parser). The result::

    {"requests": n, "seed": seed, "elapsed_s": float,
     "by_status": {"400": 812, ...}, "status_5xx": 0,
     "by_target": {"gateway": ..., "approvals": ...},
     "by_route": {"gateway jobs.query": {"200": 40, "400": 310, ...}, ...},
     "slowest": [{"seconds", "request"}, ...],  # the five slowest answers
     "failures": [{"target", "method", "path", "status", "problem", "body"}, ...]}

Deterministic for a given seed (up to what the server answers). Used by
``tests/fuzz/test_fuzz.py`` and by ``nox -s reliability``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import random
import re
import socket
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PROJECT = "demo-project"
#: How long one request may take before the fuzzer calls it a failure (a hang).
REQUEST_TIMEOUT_S = 60.0


# --- hostile values ----------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A JSON fragment written as is (``1e999``, ``NaN``, deep nesting, broken syntax)."""

    text: str


def _deep(rng: random.Random) -> Raw:
    depth = rng.choice([33, 100, 1000, 100_000])
    open_, close = rng.choice([("[", "]"), ('{"a":', "}")])
    middle = "1" if open_ != "[" else ""
    return Raw(open_ * depth + middle + close * depth)


def _scalar(rng: random.Random) -> Any:
    return rng.choice(
        [
            Raw("1e999"),
            Raw("-1e999"),
            Raw("NaN"),
            Raw("Infinity"),
            Raw("-0"),
            Raw("1e30"),
            -1,
            0,
            1,
            2**63,
            2**64,
            -(2**63) - 1,
            1.5,
            True,
            False,
            None,
            "",
            " ",
            "\ud800",
            "x\udfffy",
            "é",
            "日本語",
            "\x00",
            "\u202e",
            "9" * 30,
            "1e999",
            "-5",
            "0x10",
            "NaN",
            "a" * rng.choice([100, 5000, 70_000]),
            "__x__",
            ".",
            "..",
            "a.b",
            "SELECT 1",
        ]
    )


def hostile(rng: random.Random) -> Any:
    """A value to put where the API expects something else."""
    roll = rng.random()
    if roll < 0.5:
        return _scalar(rng)
    if roll < 0.65:
        return _deep(rng)
    if roll < 0.8:
        return rng.choice(
            [
                [],
                {},
                [[[]]],
                {"a": {"b": {}}},
                [None],
                [1, "a", {}],
                {"": 1},
                {"__x__": 1},
                {"\ud800": 1},
            ]
        )
    if roll < 0.9:
        return [_scalar(rng) for _ in range(rng.choice([2, 50, 5000]))]
    return {f"k{i}": _scalar(rng) for i in range(rng.choice([2, 50]))}


def encode(value: Any) -> str:
    """JSON text for a value that may hold :class:`Raw` fragments."""
    raws: list[str] = []

    def default(obj: Any) -> Any:
        if isinstance(obj, Raw):
            raws.append(obj.text)
            return f"\x00RAW{len(raws) - 1}\x00"
        raise TypeError(type(obj))

    text = json.dumps(value, default=default)
    return _PLACEHOLDER.sub(lambda m: raws[int(m.group(1))], text) if raws else text


_PLACEHOLDER = re.compile(r'"\\u0000RAW(\d+)\\u0000"')


def job_id(rng: random.Random, known: list[str]) -> str:
    if rng.random() < 0.5:
        return rng.choice(known) if known and rng.random() < 0.5 else f"fuzz_{rng.getrandbits(64)}"
    return rng.choice(
        [
            f"fuzz_{rng.randrange(10**9)}",
            ".",
            "..",
            "__x__",
            "__name__",
            "a.b",
            "a:b",
            "%2e%2e",
            "%2E",
            "a%2Fb",
            "é",
            "x" * 1025,
            "x" * 1024,
            "-",
            "_",
            "a b",
            "%00",
            "%ff",
            "%",
            "j;drop",
            "~",
            "..%2f..",
        ]
    )


def project(rng: random.Random) -> str:
    return rng.choice(
        [PROJECT] * 8
        + ["other-project", "__x__", "P", "é", "a" * 300, "%00", "example.com:proj", "."]
    )


SQL = [
    "SELECT 1 AS x",
    "SELECT @x AS x",
    "SELECT ? AS x",
    "SELEC 1",
    "DROP TABLE `demo-project.analytics.events`",
    "SELECT * FROM `demo-project.analytics.nope`",
    "SELECT no_such FROM `demo-project.analytics.events`",
    "SELECT * FROM nope",
    "SELECT '\ud800'",
    "-- only a comment",
    ";;;",
    "SELECT 1; SELECT 2",
    "(" * 3000 + "SELECT 1" + ")" * 3000,
    "SELECT " + "1+" * 5000 + "1",
    "SELECT '" + "é" * 1000 + "'",
    "",
    "   ",
]


def sql(rng: random.Random) -> Any:
    if rng.random() < 0.02:
        return "SELECT '" + "x" * (300 * 1024) + "'"  # over the gateway's SQL limit
    roll = rng.random()
    return SQL[0] if roll < 0.4 else rng.choice(SQL) if roll < 0.9 else hostile(rng)


def parameters(rng: random.Random) -> Any:
    good = [{"name": "x", "parameterType": {"type": "INT64"}, "parameterValue": {"value": "1"}}]
    nested: dict[str, Any] = {"type": "INT64"}
    for _ in range(rng.choice([1, 3, 6, 30])):
        nested = rng.choice(
            [
                {"type": "ARRAY", "arrayType": nested},
                {"type": "STRUCT", "structTypes": [{"name": "f", "type": nested}]},
            ]
        )
    if rng.random() < 0.5:
        return rng.choice([good, []])
    return rng.choice(
        [
            good,
            [{"parameterType": {"type": "INT64"}, "parameterValue": {"value": "1"}}],
            [{"name": "x", "parameterType": nested, "parameterValue": {}}],
            [{"name": "x", "parameterType": hostile(rng), "parameterValue": hostile(rng)}],
            [
                {
                    "name": hostile(rng),
                    "parameterType": {"type": "STRING"},
                    "parameterValue": {"value": hostile(rng)},
                }
            ],
            [
                {
                    "parameterType": {
                        "type": "STRUCT",
                        "structTypes": [{"name": "__x__", "type": {"type": "INT64"}}],
                    },
                    "parameterValue": {"structValues": {"__x__": {"value": "1"}}},
                }
            ],
            hostile(rng),
        ]
    )


def mutate(rng: random.Random, body: dict[str, Any]) -> Any:
    """Replace, delete or add a few fields (at any depth) of a valid body (or keep it as is,
    one time in five, so requests also get past validation)."""
    if rng.random() < 0.2:
        return body
    if rng.random() < 0.05:
        return hostile(rng)
    for _ in range(rng.choice([1, 1, 2, 3])):
        parent: Any = body
        while isinstance(parent, dict) and parent and rng.random() < 0.6:
            child = parent[rng.choice(list(parent))]
            if not isinstance(child, dict) or not child:
                break
            parent = child
        if not isinstance(parent, dict):
            continue
        action = rng.random()
        if action < 0.7 and parent:
            parent[rng.choice(list(parent))] = hostile(rng)
        elif action < 0.85 and parent:
            parent.pop(rng.choice(list(parent)))
        else:
            parent[rng.choice(["extra", "__x__", "", "\ud800", "kind"])] = hostile(rng)
    return body


def insert_body(rng: random.Random, known: list[str]) -> dict[str, Any]:
    return {
        "jobReference": {"jobId": job_id(rng, []), "projectId": PROJECT, "location": "US"},
        "configuration": {
            "query": {
                "query": sql(rng),
                "useLegacySql": False,
                "defaultDataset": {"projectId": PROJECT, "datasetId": "analytics"},
                "queryParameters": parameters(rng),
                "parameterMode": "NAMED",
            },
            "labels": {"session_id": "fuzz"},
            "dryRun": False,
        },
    }


def query_body(rng: random.Random, known: list[str]) -> dict[str, Any]:
    return {
        "query": sql(rng),
        "useLegacySql": False,
        "timeoutMs": 0,
        "maxResults": 10,
        "requestId": job_id(rng, []),
        "location": "US",
        "labels": {"session_id": "fuzz"},
        "queryParameters": parameters(rng),
        "parameterMode": "NAMED",
        "defaultDataset": {"datasetId": "analytics"},
        "formatOptions": {"useInt64Timestamp": True},
    }


def query_string(rng: random.Random) -> str:
    keys = [
        "timeoutMs",
        "maxResults",
        "startIndex",
        "pageToken",
        "location",
        "formatOptions.useInt64Timestamp",
        "prettyPrint",
        "alt",
        "fields",
        "x",
    ]
    values = [
        "0",
        "10",
        "-1",
        "1e999",
        "9" * 30,
        "inf",
        "NaN",
        "",
        "true",
        "é",
        "%zz",
        "%00",
        "%ff",
        base64.urlsafe_b64encode(b"bqgate:-1").decode(),
        base64.urlsafe_b64encode(b"bqgate:" + b"9" * 5000).decode(),
        "!!!",
        "a" * 3000,
        base64.urlsafe_b64encode(b"bqgate:3").decode(),
    ]
    pairs = [(rng.choice(keys), rng.choice(values)) for _ in range(rng.choice([0, 1, 2, 4]))]
    if rng.random() < 0.03:
        pairs.append(("q", "c" * 20_000))  # over the URL limit
    if not pairs:
        return ""
    return "?" + "&".join(f"{urllib.parse.quote(k)}={v}" for k, v in pairs)


# --- requests ----------------------------------------------------------------------------


@dataclass
class Request:
    target: str  # "gateway" or "approvals"
    method: str
    path: str  # path and query string, as sent
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    chunked: bool = False
    raw: bytes | None = None  # the whole request, written as is


def _headers(
    rng: random.Random, token: str | None, content_type: bytes | None
) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    auth_roll = rng.random()
    if token and auth_roll < 0.8:
        out.append((b"Authorization", b"Bearer " + token.encode()))
    elif auth_roll < 0.85:
        out.append(
            (
                b"Authorization",
                rng.choice(
                    [
                        b"Bearer",
                        b"Bearer ",
                        b"Basic abc",
                        b"Bearer \xff\xfe",
                        b"bearer x.y.z",
                        b"Bearer " + b"a" * 5000,
                    ]
                ),
            )
        )
    elif auth_roll < 0.87:
        out.append((b"Authorization", b"Bearer " + b"a" * 9000))  # over gunicorn's field limit
    if content_type is not None:
        out.append((b"Content-Type", content_type))
    roll = rng.random()
    if roll < 0.03:
        out += [(f"X-Fuzz-{i}".encode(), b"v" * 7000) for i in range(6)]  # over 32 KiB in all
    elif roll < 0.05:
        out += [(f"X-F{i}".encode(), b"v") for i in range(110)]  # over 100 fields
    elif roll < 0.08:
        out.append(
            rng.choice(
                [
                    (b"X-Odd", b"\xc3\xa9\xff"),
                    (b"SCRIPT_NAME", b"/zzz"),
                    (b"X-Forwarded-Proto", b"gopher"),
                    (b"Expect", b"200-ok"),
                    (b"Accept-Encoding", b"\x00"),
                    (b"Host", b""),
                ]
            )
        )
    return out


def gateway_request(rng: random.Random, tokens: dict[str, str], known: list[str]) -> Request:
    p = project(rng)
    base = f"/bigquery/v2/projects/{p}"
    kind = rng.random()
    token = tokens.get("agent")
    body = b""
    if kind < 0.3:
        method, path = "POST", f"{base}/jobs"
        body = encode(mutate(rng, insert_body(rng, known))).encode("utf-8", "surrogatepass")
    elif kind < 0.55:
        method, path = "POST", f"{base}/queries"
        body = encode(mutate(rng, query_body(rng, known))).encode("utf-8", "surrogatepass")
    elif kind < 0.7:
        method, path = "GET", f"{base}/queries/{job_id(rng, known)}{query_string(rng)}"
    elif kind < 0.8:
        method, path = "GET", f"{base}/jobs/{job_id(rng, known)}{query_string(rng)}"
    elif kind < 0.85:
        method, path = "POST", f"{base}/jobs/{job_id(rng, known)}/cancel"
    else:
        method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
        path = rng.choice(
            [
                "/",
                "/healthz",
                "/robots.txt",
                "/favicon.ico",
                f"{base}/datasets",
                "/upload/bigquery/v2/x",
                "/nope",
                "//",
                "/%2e%2e/",
                "/" + "a" * 300,
                f"{base}/jobs/{job_id(rng, known)}/x",
            ]
        ) + query_string(rng)
        body = rng.choice(
            [b"", b"{", b"\xff\xfe", encode(hostile(rng)).encode("utf-8", "surrogatepass")]
        )
    if rng.random() < 0.05:
        body = rng.choice(
            [b"\xff\xfe\x00", b"{" * 50_000, b'{"query": 1e999}', b"null", b" " * (3 * 1024 * 1024)]
        )
    content_type = rng.choice(
        [b"application/json"] * 8
        + [b"text/plain", b"multipart/form-data; boundary=x", b"application/x-www-form-urlencoded"]
    )
    return Request(
        "gateway",
        method,
        path,
        _headers(rng, token, content_type),
        body,
        chunked=bool(body) and rng.random() < 0.1,
    )


def _slack_payload(rng: random.Random, known: list[str]) -> Any:
    user = rng.choice([{"id": "U_ALICE"}, {"id": hostile(rng)}, hostile(rng), {"id": "U_NOBODY"}])
    kind = rng.random()
    if kind < 0.45:
        payload: dict[str, Any] = {
            "type": "block_actions",
            "user": user,
            "actions": [
                {
                    "action_id": rng.choice(["bqgate_approve", "bqgate_deny", "other"]),
                    "value": job_id(rng, known),
                }
            ],
            "container": {"channel_id": "C1"},
            "trigger_id": "t1",
        }
    elif kind < 0.8:
        payload = {
            "type": "view_submission",
            "user": user,
            "view": {
                "callback_id": "bqgate_deny_reason",
                "private_metadata": rng.choice(
                    [json.dumps({"job_id": job_id(rng, known)}), encode(hostile(rng)), "{", ""]
                ),
                "state": {"values": {"reason_block": {"reason": {"value": hostile(rng)}}}},
            },
        }
    else:
        payload = {"type": hostile(rng)}
    return mutate(rng, payload) if rng.random() < 0.5 else payload


def approvals_request(rng: random.Random, tokens: dict[str, str], known: list[str]) -> Request:
    kind = rng.random()
    token = tokens.get("approver") if rng.random() < 0.7 else tokens.get("agent")
    if kind < 0.2:
        return Request(
            "approvals", "GET", "/v1/approvals" + query_string(rng), _headers(rng, token, None)
        )
    if kind < 0.5:
        action = rng.choice(["approve", "deny", "Approve", "", "deny/x"])
        body = rng.choice(
            [
                b"",
                encode({"reason": hostile(rng)}).encode("utf-8", "surrogatepass"),
                encode(hostile(rng)).encode("utf-8", "surrogatepass"),
                b'{"reason": "not today"}',
            ]
        )
        return Request(
            "approvals",
            "POST",
            f"/v1/approvals/{job_id(rng, known)}:{action}",
            _headers(rng, token, b"application/json"),
            body,
        )
    if kind < 0.9:
        payload = encode(_slack_payload(rng, known))
        form = rng.choice(
            [
                "payload=" + urllib.parse.quote(payload, safe=""),
                "payload=" + payload,  # not form-encoded
                "payloa=x",
                "payload=%ff%fe",
                "payload=" + urllib.parse.quote(encode(hostile(rng))),
            ]
        ).encode("utf-8", "surrogatepass")
        headers = _headers(rng, None, b"application/x-www-form-urlencoded")
        secret = tokens.get("slack_signing_secret")
        ts = (
            str(int(time.time()))
            if rng.random() < 0.8
            else rng.choice(["0", "9" * 30, "-1", "abc", "1e9", "", " 1"])
        )
        if secret and rng.random() < 0.85:
            digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + form, hashlib.sha256)
            signature = "v0=" + digest.hexdigest()
        else:
            signature = rng.choice(["v0=00", "", "v1=abc", "v0=" + "f" * 64])
        headers += [
            (b"X-Slack-Request-Timestamp", ts.encode()),
            (b"X-Slack-Signature", signature.encode()),
        ]
        return Request("approvals", "POST", "/slack/interactions", headers, form)
    method = rng.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
    path = rng.choice(
        [
            "/",
            "/healthz",
            "/robots.txt",
            "/slack/interactions",
            "/v1/approvals/x",
            "/v1",
            "/%2e%2e",
            "/v1/approvals/" + "a" * 2000 + ":approve",
        ]
    )
    return Request("approvals", method, path + query_string(rng), _headers(rng, token, None))


def malformed_request(rng: random.Random, target: str) -> Request:
    """A request the web server itself must refuse (bad request line, framing, headers)."""
    raw = rng.choice(
        [
            b"GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
            b"GET /x HTTP/9.9\r\nHost: a\r\n\r\n",
            b"get /x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"GET /x HTTP/1.1\r\nHost: a\r\n folded: x\r\n\r\n",
            b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
            b"FOO(BAR) /x HTTP/1.1\r\nHost: a\r\n\r\n",
        ]
    )
    return Request(target, "RAW", "(raw)", raw=raw)


# --- sending and checking ----------------------------------------------------------------


def _wire(req: Request, host: str) -> bytes:
    if req.raw is not None:
        return req.raw
    lines = [
        f"{req.method} {req.path} HTTP/1.1".encode("utf-8", "surrogatepass"),
        b"Host: " + host.encode(),
        b"Connection: close",
    ]
    lines += [k + b": " + v for k, v in req.headers]
    if req.chunked:
        lines.append(b"Transfer-Encoding: chunked")
        size = max(1, len(req.body) // 3)
        chunks = [req.body[i : i + size] for i in range(0, len(req.body), size)]
        payload = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"
    else:
        if req.body or req.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(req.body)}".encode())
        payload = req.body
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def send(base: str, req: Request) -> tuple[int, dict[str, str], bytes]:
    """Send one request over a fresh connection; return (status, headers, body)."""
    parsed = urllib.parse.urlsplit(base)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    with socket.create_connection((host, port), timeout=REQUEST_TIMEOUT_S) as sock:
        # The server may answer and close before reading all of a large body.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(_wire(req, f"{host}:{port}"))
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1]) if lines and lines[0].startswith(b"HTTP/") else 0
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.decode("latin-1").strip().lower()] = v.decode("latin-1").strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return status, headers, body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def _bigquery_shaped(status: int, body: Any) -> str | None:
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return "error body has no 'error' object"
    if err.get("code") != status:
        return f"error.code {err.get('code')!r} is not the status {status}"
    if not isinstance(err.get("message"), str):
        return "error.message is not a string"
    entries = err.get("errors")
    if (
        not isinstance(entries, list)
        or not entries
        or not all(
            isinstance(e, dict)
            and isinstance(e.get("reason"), str)
            and isinstance(e.get("message"), str)
            for e in entries
        )
    ):
        return "error.errors is not a list of {reason, message}"
    return None


def _slack_shaped(body: Any) -> str | None:
    if body == {}:
        return None
    if (
        isinstance(body, dict)
        and body.get("response_type") == "ephemeral"
        and isinstance(body.get("text"), str)
    ):
        return None
    if isinstance(body, dict) and body.get("response_action") in ("errors", "clear"):
        return None
    return "not one of Slack's interaction response shapes"


def check(req: Request, status: int, headers: dict[str, str], raw: bytes) -> str | None:
    """What is wrong with the answer, or None."""
    if status == 0:
        return "no HTTP answer"
    if status >= 500:
        return f"server error {status}"
    if req.method == "HEAD":
        return None
    if "json" not in headers.get("content-type", ""):
        return f"content type {headers.get('content-type')!r} is not JSON"
    try:
        body = json.loads(raw)
    except ValueError:
        return "body is not JSON"
    if status >= 400:
        return _bigquery_shaped(status, body)
    if req.target == "approvals" and req.path.startswith("/slack/interactions"):
        return _slack_shaped(body)
    if req.target == "approvals" and req.path.startswith("/v1/approvals"):
        ok = isinstance(body, dict) and (
            isinstance(body.get("approvals"), list) or ("job_id" in body and "outcome" in body)
        )
        return None if ok else "not an approver API answer"
    return None if isinstance(body, dict) else "body is not a JSON object"


def route_of(req: Request) -> str:
    """A coarse label for the request's route (for the per-route counts)."""
    if req.raw is not None:
        return f"{req.target} malformed"
    path = req.path.split("?", 1)[0]
    if req.target == "approvals":
        where = (
            "slack"
            if path.startswith("/slack/interactions")
            else "decide"
            if ":" in path
            else "list"
            if path.startswith("/v1/approvals")
            else "other"
        )
    else:
        parts = path.split("/")
        where = (
            "jobs.insert"
            if path.endswith("/jobs") and req.method == "POST"
            else "jobs.query"
            if path.endswith("/queries") and req.method == "POST"
            else "jobs.cancel"
            if path.endswith("/cancel")
            else "getQueryResults"
            if len(parts) > 5 and parts[5] == "queries"
            else "jobs.get"
            if len(parts) > 5 and parts[5] == "jobs"
            else "other"
        )
    return f"{req.target} {where}"


def _seed_jobs(gateway: str, token: str, count: int) -> list[str]:
    """A few real jobs, so hostile reads also reach stored jobs."""
    ids = []
    for i in range(count):
        job = f"fuzz_seed_{i}_{random.randrange(10**9)}"
        body = json.dumps(
            {
                "jobReference": {"jobId": job},
                "configuration": {"query": {"query": "SELECT 1 AS x", "useLegacySql": False}},
            }
        ).encode()
        req = Request(
            "gateway",
            "POST",
            f"/bigquery/v2/projects/{PROJECT}/jobs",
            [
                (b"Authorization", b"Bearer " + token.encode()),
                (b"Content-Type", b"application/json"),
            ],
            body,
        )
        status, _, _ = send(gateway, req)
        if status == 200:
            ids.append(job)
    return ids


def run_fuzz(urls: dict[str, str], tokens: dict[str, str], n: int, seed: int) -> dict[str, Any]:
    """Send ``n`` fuzzed requests (about 70% to the gateway); see the module docstring."""
    rng = random.Random(seed)
    t0 = time.monotonic()
    known = _seed_jobs(urls["gateway"], tokens["agent"], 3) if tokens.get("agent") else []
    by_status: Counter[str] = Counter()
    by_target: Counter[str] = Counter()
    by_route: dict[str, Counter[str]] = {}
    failures: list[dict[str, Any]] = []
    slowest: list[tuple[float, str]] = []
    makers: list[tuple[float, Callable[[], Request]]] = [
        (0.65, lambda: gateway_request(rng, tokens, known)),
        (0.95, lambda: approvals_request(rng, tokens, known)),
        (1.0, lambda: malformed_request(rng, rng.choice(["gateway", "approvals"]))),
    ]
    for _ in range(n):
        roll = rng.random()
        req = next(make for bound, make in makers if roll < bound)()
        started = time.monotonic()
        try:
            status, headers, body = send(urls[req.target], req)
            problem = check(req, status, headers, body)
        except (OSError, ValueError) as exc:
            status, body, problem = 0, b"", f"{type(exc).__name__}: {exc}"
        took = time.monotonic() - started
        slowest.append((took, f"{req.target} {req.method} {req.path[:100]} -> {status}"))
        slowest = sorted(slowest, reverse=True)[:5]
        by_status[str(status)] += 1
        by_target[req.target] += 1
        by_route.setdefault(route_of(req), Counter())[str(status)] += 1
        if problem:
            failures.append(
                {
                    "target": req.target,
                    "method": req.method,
                    "path": req.path[:200],
                    "status": status,
                    "problem": problem,
                    "request_body": req.body[:200].decode("utf-8", "replace"),
                    "body": body[:300].decode("utf-8", "replace"),
                }
            )
    return {
        "requests": n,
        "seed": seed,
        "elapsed_s": round(time.monotonic() - t0, 2),
        "by_status": dict(sorted(by_status.items())),
        "status_5xx": sum(c for status, c in by_status.items() if int(status) >= 500),
        "by_target": dict(sorted(by_target.items())),
        "by_route": {r: dict(sorted(c.items())) for r, c in sorted(by_route.items())},
        "slowest": [{"seconds": round(t, 3), "request": what} for t, what in slowest],
        "failures": failures,
    }
