"""The MCP tools of Google's BigQuery MCP server, answered by the gateway's own core.

``list_dataset_ids``, ``get_dataset_info``, ``list_table_ids``, ``get_table_info`` and
``execute_sql``, with the argument names of Google's managed server (``projectId``,
``datasetId``, ``tableId``, ``query``, ``dryRun``; the proto field spellings ``project_id``
... are accepted too). Nothing is judged here: metadata comes from
:class:`~bqgate.service.metadata.MetadataApi` (policy-filtered, masked columns described)
and every statement goes through :meth:`Gateway.submit` and
:meth:`Gateway.get_query_results` (classification, masking rewrite, approvals, the
session record), exactly as a REST ``jobs.query`` does.

``execute_sql`` waits for its job at most :attr:`McpConfig.wait_ms`. A statement that waits
for an approver is answered with the pending request (what the approver sees: reasons,
tables, the byte estimate and blast radius when measured, and the expiry); calling
``execute_sql`` again with its ``jobId`` collects the rows once it is approved.

Pure: plain values in and out. The MCP SDK edge is :mod:`bqgate.adapters.mcp_server`.

>>> [spec.name for spec in TOOLS]
['list_dataset_ids', 'get_dataset_info', 'list_table_ids', 'get_table_info', 'execute_sql']
>>> TOOLS_BY_NAME["get_table_info"].input_schema["required"]
['projectId', 'datasetId', 'tableId']
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bqgate.approvals import record_of
from bqgate.errors import BqgateError, InvalidRequest, NotFound, Unauthenticated
from bqgate.identity import Principal
from bqgate.jobs import PENDING_APPROVAL, Job
from bqgate.service.gateway import Gateway, job_error
from bqgate.wire import bigquery as wire

#: The ``request_kind`` execute_sql jobs carry in the job store and the session record.
REQUEST_KIND = "mcp.execute_sql"
#: A project, dataset or table id as the REST routes accept one.
ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,1024}$")


# --------------------------------------------------------------------------- tool specs


@dataclass(frozen=True)
class ToolSpec:
    """One tool as ``tools/list`` shows it (JSON Schema input and output)."""

    name: str
    title: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    read_only: bool


def _string(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


_PROJECT = _string("Required. Project ID of the request (the project that runs the query).")
_DATASET = _string("Required. Dataset ID of the request.")
_TABLE = _string("Required. Table ID of the request.")
_PAGE_SIZE = {"type": "integer", "minimum": 1, "description": "Optional. Most items returned."}
_PAGE_TOKEN = _string("Optional. The nextPageToken of the previous answer.")
_IDS = {
    "type": "array",
    "items": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
}
_RESOURCE = {"type": "object", "additionalProperties": True}


def _input(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name="list_dataset_ids",
        title="List datasets",
        description=(
            "List the BigQuery dataset IDs in a Google Cloud project that you may read "
            "through bqgate (datasets the policy does not let you read are not listed)."
        ),
        input_schema=_input(
            {"projectId": _PROJECT, "pageSize": _PAGE_SIZE, "pageToken": _PAGE_TOKEN},
            ["projectId"],
        ),
        output_schema={
            "type": "object",
            "properties": {"datasets": _IDS, "nextPageToken": {"type": "string"}},
        },
        read_only=True,
    ),
    ToolSpec(
        name="get_dataset_info",
        title="Get dataset metadata",
        description="Get metadata information about a BigQuery dataset.",
        input_schema=_input(
            {"projectId": _PROJECT, "datasetId": _DATASET}, ["projectId", "datasetId"]
        ),
        output_schema=_RESOURCE,
        read_only=True,
    ),
    ToolSpec(
        name="list_table_ids",
        title="List tables",
        description="List the table IDs in a BigQuery dataset.",
        input_schema=_input(
            {
                "projectId": _PROJECT,
                "datasetId": _DATASET,
                "pageSize": _PAGE_SIZE,
                "pageToken": _PAGE_TOKEN,
            },
            ["projectId", "datasetId"],
        ),
        output_schema={
            "type": "object",
            "properties": {"tables": _IDS, "nextPageToken": {"type": "string"}},
        },
        read_only=True,
    ),
    ToolSpec(
        name="get_table_info",
        title="Get table metadata",
        description=(
            "Get metadata information about a BigQuery table, its schema included. A column "
            'whose values bqgate masks says so in its description ("masked by bqgate: last4").'
        ),
        input_schema=_input(
            {"projectId": _PROJECT, "datasetId": _DATASET, "tableId": _TABLE},
            ["projectId", "datasetId", "tableId"],
        ),
        output_schema=_RESOURCE,
        read_only=True,
    ),
    ToolSpec(
        name="execute_sql",
        title="Run a GoogleSQL query",
        description=(
            "Run a GoogleSQL query in the project and return the result. bqgate judges every "
            "statement by policy first: it runs, is blocked (a tool error that says why), or "
            "waits for a human approver. Sensitive columns come back masked. A statement that "
            "waits for approval is answered with the pending request (jobId, why, expiry): "
            "call execute_sql again with the same projectId, query and that jobId to get the "
            "rows once it is approved. Rows beyond one answer: call again with the jobId and "
            "the pageToken."
        ),
        input_schema=_input(
            {
                "projectId": _string(
                    "Required. Project that will be used for query execution and billing."
                ),
                "query": _string("Required. The query to execute, in GoogleSQL."),
                "dryRun": {
                    "type": "boolean",
                    "description": (
                        "Optional. If true, nothing runs: the answer says how many bytes the "
                        "query would process, and its schema. Default false."
                    ),
                },
                "jobId": _string(
                    "Optional (bqgate). The jobId of an earlier answer to this query: wait for "
                    "that job (an approval) and return its rows instead of running it again."
                ),
                "pageToken": _string("Optional (bqgate). With jobId: the next page of rows."),
                "maxResults": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Optional (bqgate). Most rows in this answer.",
                },
                "timeoutMs": {
                    "type": "integer",
                    "minimum": 0,
                    "description": (
                        "Optional (bqgate). Longest wait for the job before answering with its "
                        "state, in milliseconds (capped by the gateway)."
                    ),
                },
            },
            ["projectId", "query"],
        ),
        output_schema={
            "type": "object",
            "properties": {
                "jobComplete": {"type": "boolean"},
                "jobReference": {"type": "object"},
                "schema": {"type": "object"},
                "rows": {"type": "array", "items": {"type": "object"}},
                "totalRows": {"type": "string"},
                "pageToken": {"type": "string"},
                "totalBytesProcessed": {"type": "string"},
                "pending": {"type": "object"},
            },
            "required": ["jobComplete", "jobReference"],
        },
        read_only=False,
    ),
)
TOOLS_BY_NAME: Mapping[str, ToolSpec] = {spec.name: spec for spec in TOOLS}

#: Proto field spellings (Google's docs name both) -> the JSON names of the schemas.
ALIASES: Mapping[str, str] = {
    "project_id": "projectId",
    "dataset_id": "datasetId",
    "table_id": "tableId",
    "dry_run": "dryRun",
    "job_id": "jobId",
    "page_size": "pageSize",
    "page_token": "pageToken",
    "max_results": "maxResults",
    "timeout_ms": "timeoutMs",
}


def parse_arguments(spec: ToolSpec, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
    """The arguments of one call, checked against the tool's input schema.

    Unknown names are refused (a misspelt option must not be silently dropped).

    >>> parse_arguments(TOOLS_BY_NAME["list_table_ids"], {"project_id": "p", "datasetId": "d"})
    {'projectId': 'p', 'datasetId': 'd'}
    >>> parse_arguments(TOOLS_BY_NAME["list_table_ids"], {"projectId": "p"})
    Traceback (most recent call last):
    bqgate.errors.InvalidRequest: Invalid value at 'datasetId': required
    >>> parse_arguments(TOOLS_BY_NAME["list_table_ids"], {"projectId": "p", "datasetId": "d",
    ...                                                   "where": "x"})
    Traceback (most recent call last):
    bqgate.errors.InvalidRequest: Invalid argument 'where': list_table_ids takes projectId, \
datasetId, pageSize, pageToken
    """
    if arguments is not None and not isinstance(arguments, Mapping):
        raise InvalidRequest("Invalid arguments: expected an object")
    props: Mapping[str, Any] = spec.input_schema["properties"]
    out: dict[str, Any] = {}
    for raw_name, value in (arguments or {}).items():
        name = ALIASES.get(str(raw_name), str(raw_name))
        if name not in props:
            raise InvalidRequest(
                f"Invalid argument {str(raw_name)[:64]!r}: {spec.name} takes {', '.join(props)}"
            )
        if name in out:
            raise InvalidRequest(f"Invalid argument {name!r}: given twice")
        if value is None:
            continue
        kind = props[name]["type"]
        ok = (
            isinstance(value, str)
            if kind == "string"
            else isinstance(value, bool)
            if kind == "boolean"
            else isinstance(value, int) and not isinstance(value, bool) and value >= 0
        )
        if not ok:
            want = "a non-negative integer" if kind == "integer" else f"a {kind}"
            raise InvalidRequest(f"Invalid value at '{name}': expected {want}")
        if kind == "integer" and value < props[name].get("minimum", 0):
            raise InvalidRequest(
                f"Invalid value at '{name}': must be at least {props[name]['minimum']}"
            )
        out[name] = value
    for name in spec.input_schema["required"]:
        if name not in out or out[name] == "":
            raise InvalidRequest(f"Invalid value at '{name}': required")
    for name in ("projectId", "datasetId", "tableId"):
        if name in out and not ID_RE.match(out[name]):
            raise InvalidRequest(f"Invalid value at '{name}': not a valid id")
    if "jobId" in out and not wire.JOB_ID_RE.match(out["jobId"]):
        raise InvalidRequest("Invalid value at 'jobId': letters, digits, _ and - only")
    return out


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ToolResult:
    """What one tool call answers: a JSON object, and whether it is a tool error."""

    structured: dict[str, Any]
    is_error: bool = False
    summary: str | None = None

    @property
    def text(self) -> str:
        """The text content: a one-line summary for errors and pending requests, then the
        JSON (most agents read only the text)."""
        body = json.dumps(self.structured, separators=(",", ":"), sort_keys=False)
        return f"{self.summary}\n{body}" if self.summary else body


def error_result(err: BqgateError) -> ToolResult:
    """A tool error carrying BigQuery's error body (its text carries no data).

    >>> from bqgate.errors import AccessDenied
    >>> r = error_result(AccessDenied("Blocked by bqgate policy: DROP is blocked"))
    >>> r.is_error, r.summary
    (True, 'accessDenied: Blocked by bqgate policy: DROP is blocked')
    """
    return ToolResult(err.to_body(), is_error=True, summary=f"{err.reason}: {err.message}")


def _timestamp(micros: str) -> str:
    """A REST int64 TIMESTAMP (microseconds) as RFC 3339 UTC text.

    >>> _timestamp("1700000000123456"), _timestamp("-1")
    ('2023-11-14T22:13:20.123456Z', '1969-12-31T23:59:59.999999Z')
    """
    n = int(micros)
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=n)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _cell(value: Any, fld: Mapping[str, Any]) -> Any:
    if value is None:
        return None
    if fld.get("mode") == "REPEATED":
        elem = {**fld, "mode": "NULLABLE"}
        return [_cell(e.get("v") if isinstance(e, dict) else e, elem) for e in value]
    if fld.get("type") in ("RECORD", "STRUCT"):
        subs = fld.get("fields") or []
        cells = value.get("f", []) if isinstance(value, dict) else []
        return {str(f.get("name")): _cell(c.get("v"), f) for c, f in zip(cells, subs, strict=False)}
    if fld.get("type") == "TIMESTAMP" and isinstance(value, str):
        return _timestamp(value)
    return value


def rows_to_objects(
    rows: Sequence[Mapping[str, Any]], schema: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """REST rows (``{"f": [{"v": ...}]}``, int64 timestamps) as one object per row, keyed
    by column name; a RECORD is an object, a REPEATED column a list, a TIMESTAMP RFC 3339.

    >>> schema = [{"name": "n", "type": "INTEGER"}, {"name": "t", "type": "TIMESTAMP"},
    ...           {"name": "r", "type": "RECORD", "mode": "REPEATED",
    ...            "fields": [{"name": "x", "type": "STRING"}]}]
    >>> rows_to_objects([{"f": [{"v": "1"}, {"v": "0"}, {"v": [{"v": {"f": [{"v": "a"}]}}]}]}],
    ...                 schema)
    [{'n': '1', 't': '1970-01-01T00:00:00.000000Z', 'r': [{'x': 'a'}]}]
    """
    out = []
    for row in rows:
        cells = row.get("f", [])
        out.append(
            {str(f.get("name")): _cell(c.get("v"), f) for c, f in zip(cells, schema, strict=False)}
        )
    return out


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pending_request(job: Job, *, now_ms: int, required_approvals: int) -> dict[str, Any]:
    """What an approver sees of a job that waits for approval, for the agent that asked.

    >>> from bqgate.classification import Classification
    >>> job = Job(job_id="j1", project="p", location="US", sql="SELECT 1", owner="a@x",
    ...           state="PENDING_APPROVAL", bytes_estimate=1536, created_ms=0,
    ...           expire_at_ms=900_000, classification=Classification(
    ...               tables=("p.finance.ledger",), reasons=("reads finance: approval required",)))
    >>> view = pending_request(job, now_ms=300_000, required_approvals=1)
    >>> view["status"], view["expireTime"], view["expiresInSeconds"], view["estimatedBytes"]
    ('PENDING_APPROVAL', '1970-01-01T00:15:00Z', 600, '1536')
    """
    rec = record_of(job, required_approvals)
    view: dict[str, Any] = {
        "status": "PENDING_APPROVAL",
        "jobId": job.job_id,
        "requestedBy": job.owner,
        "groups": list(job.groups),
        "query": job.sql,
        "tables": list(job.classification.tables),
        "reasons": list(job.classification.reasons),
        "estimatedBytes": None if job.bytes_estimate is None else str(job.bytes_estimate),
        "approvals": {"received": len(rec.votes), "required": rec.required},
    }
    if job.blast_radius:
        view["blastRadius"] = [
            {
                "target": str(b.get("target", "")),
                "rowsTouched": b.get("touched"),
                "rowsInTable": b.get("total"),
            }
            for b in job.blast_radius
        ]
    if job.expire_at_ms is not None:
        view["expireTime"] = _iso(job.expire_at_ms)
        view["expiresInSeconds"] = max(0, (job.expire_at_ms - now_ms) // 1000)
    return view


# --------------------------------------------------------------------------- the tools


@dataclass(frozen=True)
class McpConfig:
    """Bounds of the MCP tools."""

    #: Longest one execute_sql call waits for its job (an approval) before it answers.
    wait_ms: int = 30_000
    #: Most rows in one execute_sql answer (further rows: the pageToken).
    max_rows: int = 10_000
    #: Approvals a request needs (the policy's ``approvals.required``), shown to the agent.
    required_approvals: int = 1


@dataclass
class McpTools:
    """Answers ``tools/call`` for one verified principal, through the gateway's core."""

    gateway: Gateway
    metadata: Any  # bqgate.service.metadata.MetadataApi
    config: McpConfig = field(default_factory=McpConfig)
    monotonic: Callable[[], float] = time.monotonic

    def call(
        self, principal: Principal | None, name: str, arguments: Mapping[str, Any] | None
    ) -> ToolResult:
        """Run one tool; every gateway error becomes a tool error with BigQuery's text."""
        try:
            if principal is None:  # the HTTP edge verifies first: this is unreachable
                raise Unauthenticated("missing bearer token")
            spec = TOOLS_BY_NAME.get(name)
            if spec is None:
                raise NotFound(f"Unknown tool: {name[:64]!r}; tools: {', '.join(TOOLS_BY_NAME)}")
            args = parse_arguments(spec, arguments)
            handler: Callable[[Principal, dict[str, Any]], ToolResult] = getattr(self, "_" + name)
            return handler(principal, args)
        except BqgateError as err:
            return error_result(err)

    # --- metadata ------------------------------------------------------------------

    @staticmethod
    def _page_params(args: Mapping[str, Any]) -> dict[str, str]:
        params = {}
        if "pageSize" in args:
            params["maxResults"] = str(args["pageSize"])
        if "pageToken" in args:
            params["pageToken"] = args["pageToken"]
        return params

    def _list_dataset_ids(self, principal: Principal, args: dict[str, Any]) -> ToolResult:
        body = self.metadata.list_datasets(principal, args["projectId"], self._page_params(args))
        out: dict[str, Any] = {"datasets": [{"id": d["id"]} for d in body.get("datasets", [])]}
        if body.get("nextPageToken"):
            out["nextPageToken"] = body["nextPageToken"]
        return ToolResult(out)

    def _get_dataset_info(self, principal: Principal, args: dict[str, Any]) -> ToolResult:
        found = self.metadata.get_dataset(principal, args["projectId"], args["datasetId"])
        return ToolResult(dict(found))

    def _list_table_ids(self, principal: Principal, args: dict[str, Any]) -> ToolResult:
        body = self.metadata.list_tables(
            principal, args["projectId"], args["datasetId"], self._page_params(args)
        )
        out: dict[str, Any] = {"tables": [{"id": t["id"]} for t in body.get("tables", [])]}
        if body.get("nextPageToken"):
            out["nextPageToken"] = body["nextPageToken"]
        return ToolResult(out)

    def _get_table_info(self, principal: Principal, args: dict[str, Any]) -> ToolResult:
        found = self.metadata.get_table(
            principal, args["projectId"], args["datasetId"], args["tableId"]
        )
        return ToolResult(dict(found))

    # --- execute_sql ---------------------------------------------------------------

    def _execute_sql(self, principal: Principal, args: dict[str, Any]) -> ToolResult:
        project = args["projectId"]
        budget_ms = min(args.get("timeoutMs", self.config.wait_ms), self.config.wait_ms)
        deadline = self.monotonic() + budget_ms / 1000
        if "pageToken" in args and "jobId" not in args:
            raise InvalidRequest("Invalid value at 'pageToken': a pageToken needs its jobId")
        if "jobId" in args:
            # The caller's own job only (anyone else's is notFound), and the same statement:
            # a job id is never a way to read another query's rows.
            job = self.gateway._owned(principal, project, args["jobId"])
            if job.sql.split() != args["query"].split():
                raise InvalidRequest(
                    f"Invalid value at 'jobId': job {job.job_id} ran another query; pass "
                    "the query it was started with, or leave jobId out to run a new one"
                )
            if job.dry_run:
                raise InvalidRequest(f"Invalid value at 'jobId': job {job.job_id} is a dry run")
        else:
            req = wire.parse_query(
                {"query": args["query"], "useLegacySql": False, "dryRun": args.get("dryRun")}
            )
            job = self.gateway.submit(principal, project, req, self.gateway.new_id(), REQUEST_KIND)
            if job.dry_run:
                if job.error:
                    raise job_error(job)
                return ToolResult(self._dry_run_answer(job))
        return self._collect(principal, project, job, args, deadline)

    @staticmethod
    def _dry_run_answer(job: Job) -> dict[str, Any]:
        body = wire.query_results(job, rows=None, next_offset=None, query_response=True)
        body["statementType"] = wire.statement_type(job)
        if job.referenced_tables:
            body["referencedTables"] = [wire.table_reference(t) for t in job.referenced_tables]
        return body

    def _collect(
        self,
        principal: Principal,
        project: str,
        job: Job,
        args: Mapping[str, Any],
        deadline: float,
    ) -> ToolResult:
        """Wait (in the gateway's own bounded waits) until the job is done or the budget is
        spent; answer with its rows, its error, or the pending request."""
        max_rows = min(args.get("maxResults", self.config.max_rows), self.config.max_rows)
        params = {
            "maxResults": str(max_rows),
            "formatOptions.useInt64Timestamp": "true",
        }
        if "pageToken" in args:
            params["pageToken"] = _decode_token(args["pageToken"], job.job_id)
        while True:
            left_ms = max(0, int((deadline - self.monotonic()) * 1000))
            body = self.gateway.get_query_results(
                principal, project, job.job_id, {**params, "timeoutMs": str(left_ms)}
            )
            if body.get("jobComplete") or left_ms == 0:
                break
        if not body.get("jobComplete"):
            return self._pending(principal, project, job.job_id, body)
        schema = (body.get("schema") or {}).get("fields") or []
        out: dict[str, Any] = {
            "kind": "bigquery#queryResponse",
            "jobReference": body["jobReference"],
            "queryId": job.job_id,
            "jobComplete": True,
        }
        for key in ("schema", "totalRows", "totalBytesProcessed", "numDmlAffectedRows"):
            if key in body:
                out[key] = body[key]
        out["rows"] = rows_to_objects(body.get("rows") or [], schema)
        if body.get("pageToken"):
            offset = wire.decode_page_token(body["pageToken"])
            out["pageToken"] = _encode_token(job.job_id, offset)
        return ToolResult(out)

    def _pending(
        self, principal: Principal, project: str, job_id: str, body: Mapping[str, Any]
    ) -> ToolResult:
        job = self.gateway._owned(principal, project, job_id)
        out: dict[str, Any] = {
            "kind": "bigquery#queryResponse",
            "jobReference": body["jobReference"],
            "queryId": job_id,
            "jobComplete": False,
        }
        again = f"call execute_sql again with the same projectId and query and jobId={job_id!r}"
        if job.state == PENDING_APPROVAL:
            out["pending"] = pending_request(
                job,
                now_ms=int(self.gateway.clock() * 1000),
                required_approvals=self.config.required_approvals,
            )
            expiry = out["pending"].get("expireTime")
            summary = (
                f"Waiting for approval: job {job_id} needs an approver "
                f"({'; '.join(out['pending']['reasons']) or 'policy'})"
                + (f"; the request expires at {expiry}" if expiry else "")
                + f". To get the rows once it is approved, {again}."
            )
        else:
            out["pending"] = {"status": job.bigquery_state, "jobId": job_id}
            summary = f"Job {job_id} is still {job.bigquery_state.lower()}: {again}."
        return ToolResult(out, summary=summary)


def _encode_token(job_id: str, offset: int) -> str:
    """An execute_sql page token: the job and the row offset (opaque to the agent).

    >>> _decode_token(_encode_token("j1", 10), "j1") == wire.encode_page_token(10)
    True
    >>> _decode_token(_encode_token("j1", 10), "j2")
    Traceback (most recent call last):
    bqgate.errors.InvalidRequest: Invalid value at 'pageToken': not a token of this job
    """
    raw = f"bqgate-mcp:{job_id}:{offset}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, job_id: str) -> str:
    """The gateway's page token for ``token``, which must belong to ``job_id``."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, owner, offset = raw.split(":")
        if prefix != "bqgate-mcp" or owner != job_id or int(offset) < 0:
            raise ValueError(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("Invalid value at 'pageToken': not a token of this job") from None
    return wire.encode_page_token(int(offset))


__all__ = [
    "TOOLS",
    "TOOLS_BY_NAME",
    "McpConfig",
    "McpTools",
    "ToolResult",
    "ToolSpec",
    "error_result",
    "parse_arguments",
    "pending_request",
    "rows_to_objects",
]
