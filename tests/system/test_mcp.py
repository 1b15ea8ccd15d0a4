"""MCP end to end: the official MCP SDK's own client against the local stack's MCP function.

The tools of Google's BigQuery MCP server, answered through the gateway's core: the datasets
the policy lets the agent read, a table's schema with its masked columns described, a
masked query on ``sales.customers``, a blocked DROP as a tool error with BigQuery's text, an
approval-bound query on ``finance.ledger`` that returns rows after ``bqgate approve``, the
same answers as the REST API for the masking attacks, and ``bqgate mcp`` (stdio) forwarding
to it with a refreshing dev token.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
import requests
from bqgate.adapters.firestore_store import FirestoreJobStore
from bqgate.dev.stack import PROJECT, Stack
from bqgate.service.mcp import rows_to_objects
from conftest import AGENT, mint_token_for
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery, firestore
from helpers import read_cases
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

pytestmark = pytest.mark.system

T = TypeVar("T")
ATTACKS = Path(__file__).parents[1] / "fixtures" / "attacks" / "masking.sql"
LEDGER_SQL = (
    "SELECT entry_id, account, amount FROM `demo-project.finance.ledger` ORDER BY entry_id LIMIT 3"
)
GOOGLE_TOOLS = {
    "list_dataset_ids": ["projectId"],
    "get_dataset_info": ["projectId", "datasetId"],
    "list_table_ids": ["projectId", "datasetId"],
    "get_table_info": ["projectId", "datasetId", "tableId"],
    "execute_sql": ["projectId", "query"],
}


def run(coro: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro())  # type: ignore[arg-type]


def connect(stack: Stack, token: str | None) -> Client:
    """The SDK's own client on the stack's MCP endpoint, with the agent's bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(120.0))
    return Client(streamable_http_client(stack.endpoints()["mcp"], http_client=http))


async def call(client: Client, name: str, args: dict[str, Any]) -> CallToolResult:
    return await client.call_tool(name, args)


def ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    # The text content carries the same answer (most agents read only the text).
    assert json.loads(result.content[0].text.splitlines()[-1]) == result.structured_content  # type: ignore[union-attr]
    return result.structured_content


def error_of(result: CallToolResult) -> dict[str, Any]:
    assert result.is_error, result.structured_content
    body = result.structured_content
    assert isinstance(body, dict)
    entry: dict[str, Any] = body["error"]["errors"][0]
    assert result.content[0].text.startswith(f"{entry['reason']}: {entry['message']}")  # type: ignore[union-attr]
    return entry


# --------------------------------------------------------------------------- discovery


def test_tools_are_googles_with_their_argument_names(stack: Stack, agent_token: str) -> None:
    async def go() -> Any:
        async with connect(stack, agent_token) as client:
            return await client.list_tools()

    listed = run(go)
    tools = {t.name: t for t in listed.tools}
    assert set(tools) == set(GOOGLE_TOOLS)
    for name, required in GOOGLE_TOOLS.items():
        schema = tools[name].input_schema
        assert schema["required"] == required, name
        assert set(required) <= set(schema["properties"]), name
    assert tools["execute_sql"].input_schema["properties"]["dryRun"]["type"] == "boolean"
    assert tools["get_table_info"].annotations.read_only_hint is True
    assert tools["execute_sql"].annotations.read_only_hint is False


def test_without_a_valid_token_nothing_is_served(stack: Stack) -> None:
    url = stack.endpoints()["mcp"]
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Accept": "application/json, text/event-stream"}
    for auth in (None, "Bearer not-a-token", "Basic dXNlcjpwYXNz"):
        sent = {**headers, **({"Authorization": auth} if auth else {})}
        resp = requests.post(url, json=body, headers=sent, timeout=30)
        assert resp.status_code == 401, resp.text
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="bqgate"'
        assert resp.json()["error"]["message"].startswith("unauthorized: ")
    # A web page cannot drive it, even with a token.
    token = mint_token_for(stack, AGENT)
    resp = requests.post(
        url,
        json=body,
        timeout=30,
        headers={**headers, "Authorization": f"Bearer {token}", "Origin": "https://evil.example"},
    )
    assert resp.status_code == 403 and "Origin" in resp.json()["error"]["message"]
    # Health needs no token; anything but /mcp is not found.
    assert requests.get(url.removesuffix("/mcp") + "/", timeout=30).json()["status"] == "ok"
    assert requests.post(url + "x", json=body, headers=headers, timeout=30).status_code == 404


def test_datasets_are_only_those_the_policy_lets_the_agent_read(
    stack: Stack, agent_token: str
) -> None:
    # A dataset the policy does not name exists in the warehouse, and is never shown.
    direct = bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=stack.url("bigquery")),
    )
    direct.create_dataset(f"{PROJECT}.mcp_unlisted", exists_ok=True)
    assert "mcp_unlisted" in {d.dataset_id for d in direct.list_datasets()}
    stranger = mint_token_for(stack, "stranger@example.com")

    async def go() -> tuple[Any, ...]:
        async with connect(stack, agent_token) as client:
            datasets = ok(await call(client, "list_dataset_ids", {"projectId": PROJECT}))
            tables = ok(
                await call(client, "list_table_ids", {"projectId": PROJECT, "datasetId": "sales"})
            )
            info = ok(
                await call(
                    client, "get_dataset_info", {"project_id": PROJECT, "dataset_id": "analytics"}
                )
            )
            hidden = error_of(
                await call(
                    client, "get_dataset_info", {"projectId": PROJECT, "datasetId": "mcp_unlisted"}
                )
            )
            typo = error_of(
                await call(client, "list_table_ids", {"projectId": PROJECT, "dataset": "sales"})
            )
        async with connect(stack, stranger) as client:
            nothing = ok(await call(client, "list_dataset_ids", {"projectId": PROJECT}))
            denied = error_of(
                await call(client, "list_table_ids", {"projectId": PROJECT, "datasetId": "sales"})
            )
        return datasets, tables, info, hidden, typo, nothing, denied

    datasets, tables, info, hidden, typo, nothing, denied = run(go)
    assert datasets == {
        "datasets": [
            {"id": f"{PROJECT}:analytics"},
            {"id": f"{PROJECT}:finance"},
            {"id": f"{PROJECT}:sales"},
        ]
    }
    assert tables == {
        "tables": [{"id": f"{PROJECT}:sales.customers"}, {"id": f"{PROJECT}:sales.orders"}]
    }
    assert info["datasetReference"] == {"projectId": PROJECT, "datasetId": "analytics"}
    assert "access" not in info
    assert hidden == {"reason": "notFound", "message": f"Not found: Dataset {PROJECT}:mcp_unlisted"}
    assert typo["reason"] == "invalid" and "'dataset'" in typo["message"]
    assert nothing == {"datasets": []}
    assert denied == {"reason": "notFound", "message": f"Not found: Dataset {PROJECT}:sales"}


def test_table_schema_says_which_columns_are_masked(stack: Stack, agent_token: str) -> None:
    async def go() -> dict[str, Any]:
        async with connect(stack, agent_token) as client:
            return ok(
                await call(
                    client,
                    "get_table_info",
                    {"projectId": PROJECT, "datasetId": "sales", "tableId": "customers"},
                )
            )

    table = run(go)
    assert table["tableReference"] == {
        "projectId": PROJECT,
        "datasetId": "sales",
        "tableId": "customers",
    }
    assert table["numRows"] == "1000"
    fields = {f["name"]: f for f in table["schema"]["fields"]}
    assert fields["ssn"]["description"] == "masked by bqgate: last4"
    assert fields["email"]["description"] == "masked by bqgate: email"
    assert fields["full_name"]["description"] == "masked by bqgate: hmac"
    assert "description" not in fields["customer_id"]


# --------------------------------------------------------------------------- execute_sql


def test_masked_query_on_customers(stack: Stack, agent_token: str) -> None:
    sql = (
        "SELECT customer_id, full_name, email, ssn, birth_date "
        "FROM `demo-project.sales.customers` ORDER BY customer_id LIMIT 20"
    )

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with connect(stack, agent_token) as client:
            answer = ok(await call(client, "execute_sql", {"projectId": PROJECT, "query": sql}))
            dry = ok(
                await call(
                    client, "execute_sql", {"projectId": PROJECT, "query": sql, "dryRun": True}
                )
            )
            return answer, dry

    answer, dry = run(go)
    assert answer["jobComplete"] is True and answer["totalRows"] == "20"
    assert [f["name"] for f in answer["schema"]["fields"]] == [
        "customer_id",
        "full_name",
        "email",
        "ssn",
        "birth_date",
    ]
    rows = answer["rows"]
    assert [r["customer_id"] for r in rows] == [str(i) for i in range(1, 21)]
    for row in rows:
        assert re.fullmatch(r"XXX-XX-\d{4}", row["ssn"]), row
        assert re.fullmatch(r"XXXXX@[\w.-]+", row["email"]), row
        assert re.fullmatch(r"tok_[0-9a-f]{24}", row["full_name"]), row
        assert row["birth_date"].endswith("-01-01"), row
    assert dry["jobComplete"] is True and "rows" not in dry
    # (The emulator's dry runs estimate 0 bytes; BigQuery's estimate passes through as is.)
    assert dry["totalBytesProcessed"].isdigit() and dry["statementType"] == "SELECT"
    assert [f["name"] for f in dry["schema"]["fields"]] == [
        "customer_id",
        "full_name",
        "email",
        "ssn",
        "birth_date",
    ]
    assert dry["referencedTables"] == [
        {"projectId": PROJECT, "datasetId": "sales", "tableId": "customers"}
    ]
    # The session record has the request, as an MCP request.
    store = FirestoreJobStore(firestore.Client(project=PROJECT))
    job = store.get(answer["jobReference"]["jobId"])
    assert job is not None and job.request_kind == "mcp.execute_sql" and job.owner == AGENT
    assert job.rewritten_sql is not None  # the masking rewrite ran


def test_blocked_drop_is_a_tool_error_with_the_reason(stack: Stack, agent_token: str) -> None:
    async def go() -> dict[str, Any]:
        async with connect(stack, agent_token) as client:
            return error_of(
                await call(
                    client,
                    "execute_sql",
                    {"projectId": PROJECT, "query": "DROP TABLE `demo-project.sales.customers`"},
                )
            )

    entry = run(go)
    assert entry["reason"] == "accessDenied"
    assert entry["message"].startswith("Blocked by bqgate policy: ")
    assert "DROP" in entry["message"]


def test_approval_bound_query_returns_rows_after_bqgate_approve(
    stack: Stack, agent_token: str
) -> None:
    async def ask() -> CallToolResult:
        async with connect(stack, agent_token) as client:
            return await call(
                client,
                "execute_sql",
                {"projectId": PROJECT, "query": LEDGER_SQL, "timeoutMs": 2000},
            )

    started = time.monotonic()
    first = run(ask)
    waited = time.monotonic() - started
    answer = ok(first)
    assert answer["jobComplete"] is False and 2.0 <= waited < 30, waited
    pending = answer["pending"]
    job_id = answer["jobReference"]["jobId"]
    assert pending["status"] == "PENDING_APPROVAL" and pending["jobId"] == job_id
    assert pending["tables"] == ["demo-project.finance.ledger"]
    assert pending["reasons"] and all(isinstance(r, str) and r for r in pending["reasons"])
    assert pending["estimatedBytes"] is not None and pending["estimatedBytes"].isdigit()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", pending["expireTime"])
    assert 0 < pending["expiresInSeconds"] <= 15 * 60
    assert pending["approvals"] == {"received": 0, "required": 1}
    text = first.content[0].text  # type: ignore[union-attr]
    assert text.startswith(f"Waiting for approval: job {job_id}") and job_id in text

    approve = subprocess.run(
        [
            sys.executable,
            "-m",
            "bqgate.cli",
            "approve",
            job_id,
            "--principal",
            "alice@example.com",
            "--dev-dir",
            str(stack.state_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert approve.returncode == 0, approve.stderr

    async def collect() -> dict[str, Any]:
        async with connect(stack, agent_token) as client:
            # Someone else's query under this job id is refused; the right one waits for it.
            other = error_of(
                await call(
                    client,
                    "execute_sql",
                    {"projectId": PROJECT, "query": "SELECT 1", "jobId": job_id},
                )
            )
            assert other["reason"] == "invalid" and "another query" in other["message"]
            return ok(
                await call(
                    client,
                    "execute_sql",
                    {"projectId": PROJECT, "query": LEDGER_SQL, "jobId": job_id},
                )
            )

    rows = run(collect)
    assert rows["jobComplete"] is True and rows["jobReference"]["jobId"] == job_id
    assert [r["entry_id"] for r in rows["rows"]] == ["1", "2", "3"]
    # Another principal cannot collect it: the job is not theirs.
    bob = mint_token_for(stack, "bob@example.com")

    async def steal() -> dict[str, Any]:
        async with connect(stack, bob) as client:
            return error_of(
                await call(
                    client,
                    "execute_sql",
                    {"projectId": PROJECT, "query": LEDGER_SQL, "jobId": job_id},
                )
            )

    assert run(steal) == {"reason": "notFound", "message": f"Not found: Job {PROJECT}:{job_id}"}


def test_rows_page_with_the_token_of_the_job(stack: Stack, agent_token: str) -> None:
    sql = "SELECT customer_id FROM `demo-project.sales.customers` ORDER BY 1 LIMIT 25"

    async def go() -> list[dict[str, Any]]:
        async with connect(stack, agent_token) as client:
            first = ok(
                await call(
                    client, "execute_sql", {"projectId": PROJECT, "query": sql, "maxResults": 10}
                )
            )
            pages = [first]
            while "pageToken" in pages[-1]:
                pages.append(
                    ok(
                        await call(
                            client,
                            "execute_sql",
                            {
                                "projectId": PROJECT,
                                "query": sql,
                                "maxResults": 10,
                                "jobId": first["jobReference"]["jobId"],
                                "pageToken": pages[-1]["pageToken"],
                            },
                        )
                    )
                )
            return pages

    pages = run(go)
    assert [len(p["rows"]) for p in pages] == [10, 10, 5]
    assert [r["customer_id"] for p in pages for r in p["rows"]] == [str(i) for i in range(1, 26)]


# --------------------------------------------------------------------------- differential


def subset(cases: list[dict[str, str]], n: int = 50) -> list[dict[str, str]]:
    """Every class, then every k-th case: a representative subset of at least ``n``."""
    step = max(1, len(cases) // n)
    chosen = {i for i in range(0, len(cases), step)}
    first_of_class: dict[str, int] = {}
    for i, case in enumerate(cases):
        first_of_class.setdefault(case["class"], i)
    return [cases[i] for i in sorted(chosen | set(first_of_class.values()))]


def rest_answer(stack: Stack, token: str, sql: str) -> dict[str, Any]:
    """What the REST API answers (jobs.query, then getQueryResults pages): the rows in order
    as objects, or the error's reason and message."""
    api = f"{stack.url('gateway')}/bigquery/v2/projects/{PROJECT}/queries"
    headers = {"Authorization": f"Bearer {token}"}
    resp = requests.post(
        api,
        headers=headers,
        timeout=120,
        json={
            "query": sql,
            "useLegacySql": False,
            "timeoutMs": 60000,
            "maxResults": 10000,
            "formatOptions": {"useInt64Timestamp": True},
        },
    )
    body = resp.json()
    deadline = time.monotonic() + 120
    rows: list[dict[str, Any]] = []
    while resp.status_code == 200:
        if not body.get("jobComplete"):
            assert time.monotonic() < deadline, body
        else:
            rows += rows_to_objects(body.get("rows") or [], body["schema"]["fields"])
            if not body.get("pageToken"):
                return {"schema": body["schema"], "rows": rows}
        job_id = body["jobReference"]["jobId"]
        params: dict[str, str] = {
            "timeoutMs": "10000",
            "maxResults": "10000",
            "formatOptions.useInt64Timestamp": "true",
        }
        if body.get("pageToken"):
            params["pageToken"] = body["pageToken"]
        resp = requests.get(f"{api}/{job_id}", headers=headers, params=params, timeout=120)
        body = resp.json()
    entry = body["error"]["errors"][0]
    return {"error": {"reason": entry["reason"], "message": entry["message"]}}


async def mcp_answer(client: Client, sql: str) -> dict[str, Any]:
    result = await call(client, "execute_sql", {"projectId": PROJECT, "query": sql})
    if result.is_error:
        entry = error_of(result)
        return {"error": {"reason": entry["reason"], "message": entry["message"]}}
    body = ok(result)
    assert body["jobComplete"] is True, body
    rows = list(body["rows"])
    while "pageToken" in body:
        body = ok(
            await call(
                client,
                "execute_sql",
                {
                    "projectId": PROJECT,
                    "query": sql,
                    "jobId": body["jobReference"]["jobId"],
                    "pageToken": body["pageToken"],
                },
            )
        )
        rows += body["rows"]
    return {"schema": body["schema"], "rows": rows}


def test_masking_attacks_answer_the_same_through_execute_sql_and_rest(
    stack: Stack, agent_token: str
) -> None:
    cases = subset(read_cases(ATTACKS))
    assert len(cases) >= 50 and {c["class"] for c in cases} == {
        c["class"] for c in read_cases(ATTACKS)
    }

    async def through_mcp() -> list[dict[str, Any]]:
        gate = asyncio.Semaphore(4)
        async with connect(stack, agent_token) as client:

            async def one(sql: str) -> dict[str, Any]:
                async with gate:
                    return await mcp_answer(client, sql)

            return list(await asyncio.gather(*(one(c["sql"]) for c in cases)))

    mcp_answers = run(through_mcp)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        rest_answers = list(pool.map(lambda c: rest_answer(stack, agent_token, c["sql"]), cases))
    differ = [
        (c["sql"], m, r) for c, m, r in zip(cases, mcp_answers, rest_answers, strict=True) if m != r
    ]
    assert not differ, differ[:3]
    # Both kinds of answer are represented: rows and refusals.
    assert sum("rows" in a for a in rest_answers) >= 20
    assert sum("error" in a for a in rest_answers) >= 5


# --------------------------------------------------------------------------- bqgate mcp


def test_bqgate_mcp_forwards_over_stdio_with_a_dev_token(stack: Stack) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "bqgate.cli", "mcp", "--dev-dir", str(stack.state_dir)],
    )
    marker = f"mcp-stdio-{uuid.uuid4().hex[:8]}"

    async def go() -> tuple[Any, ...]:
        async with Client(params) as client:
            tools = await client.list_tools()
            datasets = ok(await call(client, "list_dataset_ids", {"projectId": PROJECT}))
            answer = ok(
                await call(
                    client,
                    "execute_sql",
                    {
                        "projectId": PROJECT,
                        "query": f"SELECT '{marker}' AS m, ssn FROM `demo-project.sales.customers` "
                        "ORDER BY customer_id LIMIT 2",
                    },
                )
            )
            blocked = error_of(
                await call(
                    client,
                    "execute_sql",
                    {"projectId": PROJECT, "query": "DROP TABLE `demo-project.sales.orders`"},
                )
            )
            return tools, datasets, answer, blocked

    tools, datasets, answer, blocked = run(go)
    assert {t.name for t in tools.tools} == set(GOOGLE_TOOLS)
    assert [d["id"] for d in datasets["datasets"]] == [
        f"{PROJECT}:analytics",
        f"{PROJECT}:finance",
        f"{PROJECT}:sales",
    ]
    assert [r["m"] for r in answer["rows"]] == [marker, marker]
    assert all(re.fullmatch(r"XXX-XX-\d{4}", r["ssn"]) for r in answer["rows"])
    assert blocked["reason"] == "accessDenied"
    store = FirestoreJobStore(firestore.Client(project=PROJECT))
    job = store.get(answer["jobReference"]["jobId"])
    assert job is not None and job.owner == AGENT and job.request_kind == "mcp.execute_sql"
