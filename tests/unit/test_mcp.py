"""The MCP tools' core over fakes: arguments, metadata through the policy, execute_sql through
Gateway.submit and its waits, the pending request, job ownership and page tokens."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from bqgate.classification import Classification
from bqgate.identity import Principal
from bqgate.jobs import DONE, PENDING, PENDING_APPROVAL, Job
from bqgate.policy import load_policy
from bqgate.service.catalog import CatalogClient, CatalogService
from bqgate.service.gateway import Gateway, GatewayConfig
from bqgate.service.mcp import (
    REQUEST_KIND,
    TOOLS,
    McpConfig,
    McpTools,
    ToolResult,
    parse_arguments,
)
from bqgate.service.metadata import MetadataApi
from fakes import MemoryJobStore, MemoryQueue, caller

POLICY = load_policy("policies/default.yaml")
AGENT = caller("agent@demo-project.iam.gserviceaccount.com", subject="agent")
OTHER = caller("bob@example.com", subject="bob")
SCHEMA = [
    {"name": "id", "type": "INTEGER"},
    {"name": "ssn", "type": "STRING"},
    {"name": "at", "type": "TIMESTAMP"},
]
ROWS = [[str(i), f"XXX-XX-{1000 + i}", str(i * 1_000_000)] for i in range(1, 26)]


def verdict_for(sql: str, **_: Any) -> Classification:
    if "DROP" in sql:
        return Classification("block", reasons=("DROP is blocked by policy",))
    if "finance" in sql:
        return Classification(
            "approve",
            reasons=("reads finance: approval required",),
            tables=("demo-project.finance.ledger",),
        )
    return Classification("allow", tables=("demo-project.sales.customers",))


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def record(self, job: Job, kind: str, data: Mapping[str, Any]) -> None:
        self.events.append((job.job_id, kind, job.request_kind))


class Executor:
    """Plays the executor: finishes allowed jobs with rows (in pages of 10); asks for an
    approval (with an estimate) for the others."""

    def __init__(self, store: MemoryJobStore) -> None:
        self.store = store

    def __call__(self, job_id: str) -> None:
        job = self.store.get(job_id)
        assert job is not None
        if job.state == PENDING_APPROVAL:
            self.store.transition(
                job.job_id, lambda j: replace(j, bytes_estimate=4096, approval_requested_ms=1000)
            )
            return
        self.finish(job.job_id)

    def finish(self, job_id: str) -> None:
        if self.store.get(job_id).dry_run:  # type: ignore[union-attr]
            self.store.transition(
                job_id,
                lambda j: replace(
                    j,
                    state=DONE,
                    schema=SCHEMA,
                    total_bytes_processed=123,
                    referenced_tables=["demo-project.sales.customers"],
                ),
            )
            return
        for index, start in enumerate(range(0, len(ROWS), 10)):
            self.store.put_page(job_id, index, start, json.dumps(ROWS[start : start + 10]))
        self.store.transition(
            job_id,
            lambda j: replace(
                j,
                state=DONE,
                schema=SCHEMA,
                total_rows=len(ROWS),
                page_starts=list(range(0, len(ROWS), 10)),
                total_bytes_processed=2048,
            ),
        )


class Clock:
    """Monotonic time that moves on by a second at every look."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def make(wait_ms: int = 5_000) -> tuple[McpTools, MemoryJobStore, Executor, Recorder]:
    store, recorder = MemoryJobStore(), Recorder()
    executor = Executor(store)
    ids = iter(f"job{i}" for i in range(100))
    gateway = Gateway(
        store=store,
        queue=MemoryQueue(),
        classify=verdict_for,
        config=GatewayConfig(max_wait_ms=0),
        recorder=recorder,
        dispatch=executor,
        clock=lambda: 1.0,
        sleep=lambda s: None,
        new_id=lambda: next(ids),
    )
    raw = FakeCatalog()
    metadata = MetadataApi(
        catalog=CatalogClient(CatalogService(raw, POLICY).answer),
        policy=POLICY,
        jobs=store,
        owned_job=gateway._owned,
    )
    tools = McpTools(
        gateway=gateway,
        metadata=metadata,
        config=McpConfig(wait_ms=wait_ms, max_rows=10),
        monotonic=Clock(),
    )
    return tools, store, executor, recorder


class FakeCatalog:
    def get_dataset(self, project: str, dataset: str) -> dict[str, Any] | None:
        if dataset not in ("analytics", "sales", "finance", "hidden"):
            return None
        return {
            "datasetReference": {"projectId": project, "datasetId": dataset},
            "location": "US",
            "access": [{"role": "OWNER", "userByEmail": "a@x"}],
        }

    def list_tables(self, project: str, dataset: str) -> list[dict[str, Any]] | None:
        ref = {"projectId": project, "datasetId": dataset, "tableId": "customers"}
        return [{"tableReference": ref, "type": "TABLE"}]

    def get_table(self, project: str, dataset: str, table: str) -> dict[str, Any] | None:
        if table != "customers":
            return None
        return {
            "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
            "schema": {"fields": [{"name": "ssn", "type": "STRING"}]},
            "type": "TABLE",
        }


def error(result: ToolResult) -> tuple[str, str]:
    assert result.is_error, result.structured
    entry = result.structured["error"]["errors"][0]
    assert result.text.startswith(f"{entry['reason']}: {entry['message']}\n")
    return entry["reason"], entry["message"]


def sql_call(tools: McpTools, query: str, who: Principal = AGENT, **extra: Any) -> ToolResult:
    return tools.call(who, "execute_sql", {"projectId": "demo-project", "query": query, **extra})


# --------------------------------------------------------------------------- arguments


def test_every_tool_schema_is_closed_and_names_its_required_arguments() -> None:
    for spec in TOOLS:
        schema = spec.input_schema
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert set(schema["required"]) <= set(schema["properties"])
        assert schema["required"][0] == "projectId"


BAD_INT = "expected a non-negative integer"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"projectId": 7, "query": "x"}, "Invalid value at 'projectId': expected a string"),
        ({"projectId": "p", "query": ""}, "Invalid value at 'query': required"),
        ({"projectId": "p", "query": "x", "dryRun": "y"}, "Invalid value at 'dryRun': expected a "),
        (
            {"projectId": "p", "query": "x", "timeoutMs": -1},
            f"Invalid value at 'timeoutMs': {BAD_INT}",
        ),
        (
            {"projectId": "p", "query": "x", "maxResults": True},
            f"Invalid value at 'maxResults': {BAD_INT}",
        ),
        ({"projectId": "p", "query": "x", "maxResults": 0}, "Invalid value at 'maxResults': must "),
        ({"projectId": "p q", "query": "x"}, "Invalid value at 'projectId': not a valid id"),
        ({"projectId": "p", "query": "x", "jobId": "../j"}, "Invalid value at 'jobId'"),
        (
            {"projectId": "p", "project_id": "p", "query": "x"},
            "Invalid argument 'projectId': given ",
        ),
    ],
)
def test_bad_arguments_are_refused_with_the_argument_named(
    args: dict[str, Any], message: str
) -> None:
    spec = next(s for s in TOOLS if s.name == "execute_sql")
    with pytest.raises(Exception, match="^" + message.replace("(", r"\(")) as err:
        parse_arguments(spec, args)
    assert type(err.value).__name__ == "InvalidRequest"


def test_unknown_tools_and_missing_principals_are_tool_errors() -> None:
    tools, *_ = make()
    assert error(tools.call(AGENT, "drop_everything", {}))[0] == "notFound"
    assert error(tools.call(None, "list_dataset_ids", {"projectId": "demo-project"})) == (
        "unauthorized",
        "missing bearer token",
    )
    assert error(tools.call(AGENT, "list_dataset_ids", None)) == (
        "invalid",
        "Invalid value at 'projectId': required",
    )


# --------------------------------------------------------------------------- metadata


def test_metadata_tools_answer_through_the_policy() -> None:
    tools, *_ = make()
    listed = tools.call(AGENT, "list_dataset_ids", {"projectId": "demo-project"})
    assert listed.structured == {
        "datasets": [
            {"id": "demo-project:analytics"},
            {"id": "demo-project:finance"},
            {"id": "demo-project:sales"},
        ]
    }
    page = tools.call(AGENT, "list_dataset_ids", {"projectId": "demo-project", "pageSize": 2})
    assert len(page.structured["datasets"]) == 2 and page.structured["nextPageToken"]
    rest = tools.call(
        AGENT,
        "list_dataset_ids",
        {"projectId": "demo-project", "pageToken": page.structured["nextPageToken"]},
    )
    assert rest.structured == {"datasets": [{"id": "demo-project:sales"}]}
    assert tools.call(
        AGENT, "list_table_ids", {"projectId": "demo-project", "datasetId": "sales"}
    ).structured == {"tables": [{"id": "demo-project:sales.customers"}]}
    table = tools.call(
        AGENT,
        "get_table_info",
        {"projectId": "demo-project", "datasetId": "sales", "tableId": "customers"},
    ).structured
    assert table["schema"]["fields"] == [
        {"name": "ssn", "type": "STRING", "description": "masked by bqgate: last4"}
    ]
    info = tools.call(
        AGENT, "get_dataset_info", {"projectId": "demo-project", "datasetId": "sales"}
    ).structured
    assert "access" not in info and info["id"] == "demo-project:sales"
    # A dataset outside the policy is worded like one that does not exist.
    assert error(
        tools.call(AGENT, "get_dataset_info", {"projectId": "demo-project", "datasetId": "hidden"})
    ) == ("notFound", "Not found: Dataset demo-project:hidden")
    assert tools.call(OTHER, "list_dataset_ids", {"projectId": "demo-project"}).structured == {
        "datasets": []
    }


# --------------------------------------------------------------------------- execute_sql


def test_allowed_query_returns_rows_as_objects_and_is_recorded_as_mcp() -> None:
    tools, store, _, recorder = make()
    result = sql_call(tools, "SELECT id, ssn, at FROM sales.customers")
    body = result.structured
    assert not result.is_error and body["jobComplete"] is True
    assert body["jobReference"]["jobId"] == body["queryId"] == "job0"
    assert body["rows"][0] == {"id": "1", "ssn": "XXX-XX-1001", "at": "1970-01-01T00:00:01.000000Z"}
    assert len(body["rows"]) == 10 and body["totalRows"] == "25"
    assert json.loads(result.text) == body
    assert store.get("job0").request_kind == REQUEST_KIND  # type: ignore[union-attr]
    assert recorder.events[:2] == [
        ("job0", "request", REQUEST_KIND),
        ("job0", "classification", REQUEST_KIND),
    ]


def test_pages_follow_with_the_jobs_own_token_only() -> None:
    tools, *_ = make()
    sql = "SELECT id FROM sales.customers"
    first = sql_call(tools, sql).structured
    seen = [r["id"] for r in first["rows"]]
    token = first["pageToken"]
    while token:
        page = sql_call(tools, sql, jobId="job0", pageToken=token).structured
        seen += [r["id"] for r in page["rows"]]
        token = page.get("pageToken")
    assert seen == [str(i) for i in range(1, 26)]
    # No run was started for the follow-ups, and a token does not move to another job.
    sql_call(tools, sql)
    assert error(sql_call(tools, sql, jobId="job1", pageToken=first["pageToken"])) == (
        "invalid",
        "Invalid value at 'pageToken': not a token of this job",
    )
    assert error(sql_call(tools, sql, pageToken=first["pageToken"]))[1].endswith(
        "a pageToken needs its jobId"
    )


def test_blocked_statement_is_a_tool_error_with_the_reason_and_recorded() -> None:
    tools, store, _, recorder = make()
    assert error(sql_call(tools, "DROP TABLE sales.customers")) == (
        "accessDenied",
        "Blocked by bqgate policy: DROP is blocked by policy",
    )
    assert ("job0", "blocked", REQUEST_KIND) in recorder.events
    assert store.get("job0").state == DONE  # type: ignore[union-attr]


def test_dry_run_answers_at_once_with_the_estimate() -> None:
    tools, *_ = make()
    body = sql_call(tools, "SELECT id FROM sales.customers", dryRun=True).structured
    assert body["jobComplete"] is True and body["totalBytesProcessed"] == "123"
    assert body["statementType"] == "SELECT" and "rows" not in body
    assert body["referencedTables"] == [
        {"projectId": "demo-project", "datasetId": "sales", "tableId": "customers"}
    ]


def test_approval_bound_query_answers_pending_then_rows_after_approval() -> None:
    tools, store, executor, _ = make(wait_ms=3_000)
    sql = "SELECT * FROM finance.ledger"
    pending = sql_call(tools, sql, timeoutMs=60_000)  # capped by the gateway's wait_ms
    body = pending.structured
    assert not pending.is_error and body["jobComplete"] is False
    assert tools.monotonic.now <= 6  # type: ignore[attr-defined]
    view = body["pending"]
    assert view["status"] == "PENDING_APPROVAL" and view["jobId"] == "job0"
    assert view["reasons"] == ["reads finance: approval required"]
    assert view["tables"] == ["demo-project.finance.ledger"]
    assert view["estimatedBytes"] == "4096" and view["query"] == sql
    assert view["expireTime"] == "1970-01-01T00:15:01Z"
    assert view["approvals"] == {"received": 0, "required": 1}
    assert pending.text.startswith(
        "Waiting for approval: job job0 needs an approver (reads finance: approval required)"
    )
    # Still pending: the follow-up says so again (and runs nothing new).
    assert sql_call(tools, sql, jobId="job0").structured["pending"]["status"] == (
        "PENDING_APPROVAL"
    )
    # Approved (the approvals service releases it to the executor, which runs it).
    store.transition("job0", lambda j: replace(j, state=PENDING))
    executor.finish("job0")
    rows = sql_call(tools, "SELECT  *\nFROM finance.ledger", jobId="job0").structured
    assert rows["jobComplete"] is True and rows["rows"][0]["id"] == "1"
    # Only its owner may collect it, and only for the statement it ran.
    assert error(sql_call(tools, sql, who=OTHER, jobId="job0")) == (
        "notFound",
        "Not found: Job demo-project:job0",
    )
    assert "ran another query" in error(sql_call(tools, "SELECT 1", jobId="job0"))[1]
    assert sorted(store.docs) == ["job0"]


def test_a_denied_request_ends_with_the_approvers_reason() -> None:
    tools, store, *_ = make(wait_ms=1_000)
    sql_call(tools, "SELECT * FROM finance.payroll")
    store.transition(
        "job0",
        lambda j: replace(
            j,
            state=DONE,
            error={
                "reason": "accessDenied",
                "message": "Denied by bob@example.com: use the aggregates",
            },
        ),
    )
    assert error(sql_call(tools, "SELECT * FROM finance.payroll", jobId="job0")) == (
        "accessDenied",
        "Denied by bob@example.com: use the aggregates",
    )
