"""The ingress: BigQuery's REST API for agents, routed onto the gateway core.

>>> route("GET", "/bigquery/v2/projects/p/queries/j1")
('get_query_results', {'project': 'p', 'job_id': 'j1'})
>>> route("POST", "/bigquery/v2/projects/p/jobs")
('insert_job', {'project': 'p'})
>>> route("GET", "/nope") is None
True
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from bqgate.errors import AccessDenied, BqgateError, InvalidRequest, NotImplementedApi
from bqgate.identity import bearer_token
from bqgate.ports import TokenVerifier
from bqgate.service.gateway import Gateway
from bqgate.service.http import Response, answered, health_check, not_found
from bqgate.wire import bigquery as wire

_SEG = r"([A-Za-z0-9_.:\-]+)"
_P = r"^/bigquery/v2/projects"
ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("POST", re.compile(rf"{_P}/{_SEG}/jobs/?$"), "insert_job"),
    ("GET", re.compile(rf"{_P}/{_SEG}/jobs/?$"), "list_jobs"),
    ("GET", re.compile(rf"{_P}/{_SEG}/jobs/{_SEG}/?$"), "get_job"),
    ("POST", re.compile(rf"{_P}/{_SEG}/jobs/{_SEG}/cancel/?$"), "cancel_job"),
    ("POST", re.compile(rf"{_P}/{_SEG}/queries/?$"), "query"),
    ("GET", re.compile(rf"{_P}/{_SEG}/queries/{_SEG}/?$"), "get_query_results"),
    ("GET", re.compile(rf"{_P}/?$"), "list_projects"),
    ("GET", re.compile(rf"{_P}/{_SEG}/datasets/?$"), "list_datasets"),
    ("GET", re.compile(rf"{_P}/{_SEG}/datasets/{_SEG}/?$"), "get_dataset"),
    ("GET", re.compile(rf"{_P}/{_SEG}/datasets/{_SEG}/tables/?$"), "list_tables"),
    ("GET", re.compile(rf"{_P}/{_SEG}/datasets/{_SEG}/tables/{_SEG}/?$"), "get_table"),
    ("GET", re.compile(rf"{_P}/{_SEG}/datasets/{_SEG}/tables/{_SEG}/data/?$"), "list_rows"),
    (
        "POST",
        re.compile(rf"{_P}/{_SEG}/datasets/{_SEG}/tables/{_SEG}/insertAll/?$"),
        "insert_all",
    ),
)
_ARGS = {
    "insert_job": ("project",),
    "list_jobs": ("project",),
    "get_job": ("project", "job_id"),
    "cancel_job": ("project", "job_id"),
    "query": ("project",),
    "get_query_results": ("project", "job_id"),
    "list_projects": (),
    "list_datasets": ("project",),
    "get_dataset": ("project", "dataset"),
    "list_tables": ("project", "dataset"),
    "get_table": ("project", "dataset", "table"),
    "list_rows": ("project", "dataset", "table"),
    "insert_all": ("project", "dataset", "table"),
}
#: Handlers a client may repeat without starting a second job.
_IDEMPOTENT = frozenset(
    {
        "get_job",
        "cancel_job",
        "get_query_results",
        "list_jobs",
        "list_projects",
        "list_datasets",
        "get_dataset",
        "list_tables",
        "get_table",
        "list_rows",
    }
)
#: Where BigQuery clients look for the discovery document (bq: ``/$discovery/rest``).
DISCOVERY_PATHS = ("/$discovery/rest", "/discovery/v1/apis/bigquery/v2/rest")
#: Writes to metadata BigQuery offers and the gateway refuses, with what to do instead.
_METADATA_WRITES = re.compile(
    rf"{_P}/{_SEG}/datasets(/{_SEG}(/tables(/{_SEG})?)?)?(/[A-Za-z]+)?/?$"
)


def route(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    """The handler name and path arguments for a request, or None."""
    for verb, pattern, name in ROUTES:
        m = pattern.match(path)
        if m and verb == method.upper():
            return name, dict(zip(_ARGS[name], m.groups(), strict=True))
    return None


def _check_args(args: Mapping[str, str]) -> None:
    """Path arguments as BigQuery allows them; a job id Firestore can store."""
    if "project" in args and not wire.PROJECT_RE.match(args["project"]):
        raise InvalidRequest("Invalid value at 'projectId': not a project id")
    if "job_id" in args:
        wire.check_job_id(args["job_id"], "jobId")


class IngressApp:
    """Authenticates, routes and answers one BigQuery REST request."""

    def __init__(
        self,
        gateway: Callable[[], Gateway],
        verifier: Callable[[], TokenVerifier],
        metadata: Callable[[], Any] | None = None,
        tabledata: Callable[[], Any] | None = None,
    ) -> None:
        # Factories, so the clients behind them are built on first use, not at import.
        self._gateway = gateway
        self._verifier = verifier
        self._metadata = metadata
        self._tabledata = tabledata

    def handle(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Response:
        idempotent = {"flag": False}
        return answered(
            "gateway",
            method,
            path,
            lambda: self._handle(method, path, params, headers, body, idempotent),
            idempotent=lambda: idempotent["flag"],
        )

    def _handle(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
        idempotent: dict[str, bool],
    ) -> Response:
        verb = method.upper()
        health = health_check("ingress", method, path)
        if health is not None:
            return health
        if verb == "GET" and path in DISCOVERY_PATHS:
            from bqgate.wire.discovery import discovery_document

            return Response(200, discovery_document(root_url(headers)))
        found = route(method, path)
        if found is None:
            raise _unrouted(verb, path)
        name, args = found
        _check_args(args)
        # Safe to retry: reads, and submissions that name their job (a repeat finds it).
        idempotent["flag"] = name in _IDEMPOTENT
        principal = self._verifier().verify(bearer_token(headers.get("Authorization")))
        if name in _GATEWAY_CALLS:
            gateway = self._gateway()
            data = wire.parse_json_body(body) if name in ("insert_job", "query") else {}
            ref = data.get("jobReference")
            idempotent["flag"] = idempotent["flag"] or bool(
                (
                    name == "insert_job"
                    and isinstance(ref, dict)
                    and wire.is_job_id(ref.get("jobId"))
                )
                or (name == "query" and wire.is_job_id(data.get("requestId")))
            )
            if name == "insert_job":
                answer = gateway.insert_job(principal, args["project"], data)
            elif name == "query":
                # The rows as the executor sent them: encoded into the answer as is.
                answer = gateway.query(principal, args["project"], data, raw=True)
            elif name == "get_job":
                answer = gateway.get_job(principal, args["project"], args["job_id"])
            elif name == "cancel_job":
                answer = gateway.cancel_job(principal, args["project"], args["job_id"])
            else:
                answer = gateway.get_query_results(
                    principal, args["project"], args["job_id"], params, raw=True
                )
            return Response(200, answer)
        if name in ("list_rows", "insert_all"):
            if self._tabledata is None:
                raise NotImplementedApi(f"{verb} {path} is not offered by this gateway")
            rows = self._tabledata()
            if name == "list_rows":
                return Response(200, rows.list_rows(principal, *args.values(), params))
            return Response(
                200, rows.insert_all(principal, *args.values(), wire.parse_json_body(body))
            )
        if self._metadata is None:
            raise NotImplementedApi(f"{verb} {path} is not offered by this gateway")
        api = self._metadata()
        if name in ("list_projects", "list_datasets", "list_tables", "list_jobs"):
            return Response(200, getattr(api, name)(principal, *args.values(), params))
        return Response(200, getattr(api, name)(principal, *args.values()))


_GATEWAY_CALLS = frozenset({"insert_job", "query", "get_job", "cancel_job", "get_query_results"})


def _unrouted(verb: str, path: str) -> BqgateError:
    """The answer to a request no route takes: a refusal that says what to do instead."""
    if path.startswith("/upload/bigquery/"):
        return AccessDenied(
            "load jobs are refused by bqgate: a load job writes files the policy cannot see "
            "into a table; insert rows with INSERT statements or tabledata.insertAll, which "
            "the policy judges as writes"
        )
    if verb in ("POST", "PUT", "PATCH", "DELETE") and _METADATA_WRITES.match(path):
        return AccessDenied(
            f"{verb} {path[:200]}: bqgate changes datasets and tables only through SQL (CREATE, "
            "ALTER, DROP statements), which the policy judges as DDL"
        )
    if path.startswith("/bigquery/v2/"):
        return NotImplementedApi(
            f"{verb} {path[:200]} is not offered by the bqgate gateway: it serves queries "
            "(jobs.*), table rows (tabledata.list, tabledata.insertAll) and metadata "
            "(projects.list, datasets.list/get, tables.list/get); see /$discovery/rest"
        )
    return not_found(verb, path)


def root_url(headers: Mapping[str, str]) -> str:
    """The URL the client reached the gateway at (behind Cloud Run: its public host).

    >>> root_url({"Host": "gw.example", "X-Forwarded-Proto": "https"})
    'https://gw.example/'
    >>> root_url({"Host": "127.0.0.1:8180"})
    'http://127.0.0.1:8180/'
    """
    host = (headers.get("X-Forwarded-Host") or headers.get("Host") or "").split(",")[0].strip()
    if not _HOST.match(host):
        host = "localhost"
    proto = (headers.get("X-Forwarded-Proto") or "").split(",")[0].strip()
    if proto not in ("http", "https"):
        proto = "http" if host.split(":")[0] in ("127.0.0.1", "localhost", "[::1]") else "https"
    return f"{proto}://{host}/"


_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


__all__ = ["DISCOVERY_PATHS", "ROUTES", "IngressApp", "root_url", "route"]
