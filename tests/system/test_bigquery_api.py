"""Every BigQuery call the issue's clients make, through the local stack with the unmodified
google-cloud-bigquery client and plain HTTP: metadata through the policy, tabledata.list
through classification and masking, dry runs, job shapes, insertAll, refusals."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from typing import Any

import pytest
import requests
from bqgate.dev.stack import Stack
from conftest import AGENT, mint_token_for
from google.api_core import exceptions as gexc
from google.cloud import bigquery

pytestmark = pytest.mark.system

API = "/bigquery/v2/projects/demo-project"
SSN = re.compile(r"^\d{3}-\d{2}-\d{4}$")


def call(stack: Stack, method: str, path: str, token: str, **kw: object) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return requests.request(method, stack.url("gateway") + path, headers=headers, timeout=60, **kw)  # type: ignore[arg-type]


def test_metadata_lists_only_what_the_policy_lets_the_caller_read(
    stack: Stack, gateway_client: bigquery.Client
) -> None:
    assert [d.dataset_id for d in gateway_client.list_datasets()] == [
        "analytics",
        "finance",
        "sales",
    ]
    assert [t.table_id for t in gateway_client.list_tables("demo-project.sales")] == [
        "customers",
        "orders",
    ]
    assert [p.project_id for p in gateway_client.list_projects()] == ["demo-project"]
    dataset = gateway_client.get_dataset("demo-project.analytics")
    assert dataset.dataset_id == "analytics" and dataset.access_entries == []
    # A caller in no policy group sees nothing at all: no datasets, 404 on every name.
    nobody = mint_token_for(stack, "stranger@example.com")
    listed = call(stack, "GET", f"{API}/datasets", nobody)
    assert listed.status_code == 200 and "datasets" not in listed.json()
    for path in ("/datasets/sales", "/datasets/sales/tables", "/datasets/sales/tables/customers"):
        resp = call(stack, "GET", API + path, nobody)
        assert resp.status_code == 404, resp.text
        assert resp.json()["error"]["message"] == "Not found: Dataset demo-project:sales"


def test_get_table_is_real_and_says_which_columns_are_masked(
    gateway_client: bigquery.Client,
) -> None:
    table = gateway_client.get_table("demo-project.sales.customers")
    assert table.num_rows == 1000 and table.table_type == "TABLE"
    described = {f.name: (f.field_type, f.description) for f in table.schema}
    assert described["ssn"] == ("STRING", "masked by bqgate: last4")
    assert described["birth_date"] == ("DATE", "masked by bqgate: year")
    assert described["full_name"] == ("STRING", "masked by bqgate: hmac")
    assert described["customer_id"] == ("INTEGER", None)


def test_get_table_outside_the_policy_is_404_like_a_missing_table(
    gateway_client: bigquery.Client,
) -> None:
    for name in ("demo-project.secret.customers", "other-project.sales.customers"):
        with pytest.raises(gexc.NotFound) as err:
            gateway_client.get_table(name)
        assert "Not found: Dataset" in err.value.message
    with pytest.raises(gexc.NotFound, match=r"Not found: Table demo-project:sales\.nope"):
        gateway_client.get_table("demo-project.sales.nope")


def test_list_rows_on_customers_returns_masked_values_with_paging(
    gateway_client: bigquery.Client,
) -> None:
    rows = gateway_client.list_rows("demo-project.sales.customers", page_size=300)
    pages = list(rows.pages)
    assert rows.total_rows == 1000 and len(pages) == 4
    got = [r for page in pages for r in page]
    assert len(got) == 1000 and len({r["customer_id"] for r in got}) == 1000
    assert all(r["ssn"].startswith("XXX-XX-") and not SSN.match(r["ssn"]) for r in got)
    assert all(r["email"].startswith("XXXXX@") for r in got)
    assert all(r["full_name"].startswith("tok_") for r in got)
    assert all(r["birth_date"].month == 1 and r["birth_date"].day == 1 for r in got)
    few = list(
        gateway_client.list_rows(
            "demo-project.sales.customers",
            selected_fields=[bigquery.SchemaField("ssn", "STRING")],
            start_index=10,
            max_results=5,
        )
    )
    assert len(few) == 5 and list(few[0].keys()) == ["ssn"]


def test_list_rows_of_a_table_that_needs_approval_says_so(stack: Stack, agent_token: str) -> None:
    resp = call(stack, "GET", f"{API}/datasets/finance/tables/ledger/data", agent_token)
    assert resp.status_code == 403, resp.text
    err = resp.json()["error"]
    assert err["errors"][0]["reason"] == "accessDenied"
    assert "needs approval under the bqgate policy" in err["message"]


def test_dry_run_answers_like_bigquery_after_classification(
    gateway_client: bigquery.Client,
) -> None:
    config = bigquery.QueryJobConfig(dry_run=True, use_query_cache=False)
    job = gateway_client.query(
        "SELECT customer_id, ssn FROM `demo-project.sales.customers`", job_config=config
    )
    assert job.state == "DONE" and job.dry_run and job.statement_type == "SELECT"
    assert job.total_bytes_processed is not None
    assert [f.name for f in job.schema or ()] == ["customer_id", "ssn"]
    assert [t.table_id for t in job.referenced_tables] == ["customers"]
    # A statement that needs approval is dry-run too (nothing runs), without an approval.
    ledger = gateway_client.query("SELECT * FROM `demo-project.finance.ledger`", job_config=config)
    assert ledger.state == "DONE" and ledger.schema
    with pytest.raises(gexc.Forbidden, match="Blocked by bqgate policy"):
        gateway_client.query("DROP TABLE `demo-project.sales.customers`", job_config=config)


def test_job_resources_carry_statement_type_query_id_and_options(
    stack: Stack, agent_token: str, gateway_client: bigquery.Client
) -> None:
    job = gateway_client.query(
        "SELECT 1 AS x",
        job_config=bigquery.QueryJobConfig(priority="BATCH", maximum_bytes_billed=10**9),
    )
    job.result(timeout=60)
    assert job.statement_type == "SELECT" and job.priority == "BATCH"
    assert job.maximum_bytes_billed == 10**9 and job.destination is None
    body = call(
        stack,
        "POST",
        f"{API}/queries",
        agent_token,
        json={"query": "SELECT 2 AS y", "useLegacySql": False, "timeoutMs": 30000},
    ).json()
    assert body["kind"] == "bigquery#queryResponse" and body["queryId"]
    assert body["rows"] == [{"f": [{"v": "2"}]}]


def test_client_byte_cap_is_the_lower_of_client_and_policy(
    gateway_client: bigquery.Client,
) -> None:
    with pytest.raises(gexc.BadRequest) as err:
        gateway_client.query_and_wait(
            "SELECT COUNT(*) FROM `demo-project.analytics.events`",
            job_config=bigquery.QueryJobConfig(maximum_bytes_billed=1),
            wait_timeout=60,
        )
    assert "Query exceeded limit for bytes billed: 1. 10485760 or higher required." in str(
        err.value
    )


def test_legacy_sql_and_unsupported_options_are_refused_clearly(
    stack: Stack, agent_token: str
) -> None:
    resp = call(
        stack,
        "POST",
        f"{API}/queries",
        agent_token,
        json={"query": "SELECT a FROM analytics.events, analytics.sessions"},
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["errors"][0]["reason"] == "invalidQuery"
    assert "useLegacySql is not set, which BigQuery reads as legacy SQL" in resp.text
    assert "a comma between tables" in resp.text
    # Without a dialect, a statement that reads the same in both runs as GoogleSQL (bq's default).
    plain = call(stack, "POST", f"{API}/queries", agent_token, json={"query": "SELECT 1 AS x"})
    assert plain.status_code == 200 and plain.json()["rows"] == [{"f": [{"v": "1"}]}]
    ok = call(
        stack, "POST", f"{API}/queries", agent_token, json={"query": "#standardSQL\nSELECT 1"}
    )
    assert ok.status_code == 200 and ok.json()["jobComplete"] is True
    session = call(
        stack,
        "POST",
        f"{API}/queries",
        agent_token,
        json={"query": "SELECT 1", "useLegacySql": False, "createSession": True},
    )
    assert session.status_code == 400 and "sessions are not offered" in session.text


@pytest.mark.parametrize("kind", ["load", "copy", "extract"])
def test_load_copy_extract_jobs_are_refused_with_a_403_that_says_why(
    stack: Stack, agent_token: str, kind: str
) -> None:
    resp = call(stack, "POST", f"{API}/jobs", agent_token, json={"configuration": {kind: {}}})
    assert resp.status_code == 403
    assert resp.json()["error"]["message"].startswith(f"{kind} jobs are refused by bqgate: ")
    upload = call(stack, "POST", "/upload/bigquery/v2/projects/demo-project/jobs", agent_token)
    assert upload.status_code == 403 and "load jobs are refused" in upload.text


def test_streaming_inserts_are_writes_judged_by_the_policy(
    stack: Stack, gateway_client: bigquery.Client
) -> None:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    marker = uuid.uuid4().hex[:8]
    table = f"demo-project.analytics.scratch_insert_{marker}"
    direct = bigquery.Client(
        project="demo-project",
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=stack.url("bigquery")),
    )
    direct.create_table(
        bigquery.Table(
            table,
            schema=[
                bigquery.SchemaField("event_id", "INT64"),
                bigquery.SchemaField("name", "STRING"),
                bigquery.SchemaField("ts", "TIMESTAMP"),
                bigquery.SchemaField("tags", "STRING", mode="REPEATED"),
            ],
        )
    )
    rows: list[dict[str, Any]] = [
        {"event_id": 1, "name": "it's \\ odd\n", "ts": "2024-01-02 03:04:05", "tags": ["a"]},
        {"event_id": 2, "name": None, "ts": 1704164645.5},
    ]
    assert gateway_client.insert_rows_json(table, rows, row_ids=["r1", "r2"]) == []
    # A retry with the same insertIds is the same job: the rows land once.
    assert gateway_client.insert_rows_json(table, rows, row_ids=["r1", "r2"]) == []
    found = list(
        direct.query(f"SELECT event_id, name, tags FROM `{table}` ORDER BY event_id").result()
    )
    assert [(r.event_id, r.name, list(r.tags)) for r in found] == [
        (1, "it's \\ odd\n", ["a"]),
        (2, None, []),
    ]
    # A bad row is reported per row (the rest "stopped"), and nothing is inserted.
    errors = gateway_client.insert_rows_json(table, [{"event_id": 3}, {"event_id": "x"}])
    assert [(e["index"], e["errors"][0]["reason"]) for e in errors] == [
        (0, "stopped"),
        (1, "invalid"),
    ]
    count = next(iter(direct.query(f"SELECT COUNT(*) AS n FROM `{table}`").result())).n
    assert count == 2
    # Writes to production need approval: nothing is inserted, and the answer says why.
    with pytest.raises(gexc.Forbidden, match="needs approval"):
        gateway_client.insert_rows_json("demo-project.sales.orders", [{"order_id": 1}])


def test_jobs_list_shows_only_the_callers_own_jobs(
    stack: Stack, gateway_client: bigquery.Client
) -> None:
    mine = gateway_client.query("SELECT 3 AS z")
    mine.result(timeout=60)
    listed = [j.job_id for j in gateway_client.list_jobs(max_results=20)]
    assert mine.job_id in listed
    other = mint_token_for(stack, "eve@example.com", ("ai-coding-agents",))
    theirs = call(stack, "GET", f"{API}/jobs", other).json()
    assert mine.job_id not in [j["jobReference"]["jobId"] for j in theirs["jobs"]]
    everyone = call(stack, "GET", f"{API}/jobs?allUsers=true", other)
    assert everyone.status_code == 403


def test_discovery_document_is_served_for_what_the_gateway_implements(stack: Stack) -> None:
    doc = requests.get(stack.url("gateway") + "/$discovery/rest?version=v2", timeout=30).json()
    assert doc["rootUrl"] == stack.url("gateway") + "/"
    assert doc["baseUrl"] == stack.url("gateway") + "/bigquery/v2/"
    methods = {r: sorted(v["methods"]) for r, v in doc["resources"].items()}
    assert methods == {
        "datasets": ["get", "list"],
        "jobs": ["cancel", "get", "getQueryResults", "insert", "list", "query"],
        "projects": ["list"],
        "tabledata": ["insertAll", "list"],
        "tables": ["get", "list"],
    }


def bq(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """``bqgate bq ARGS`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "bqgate.cli", "bq", "--dev-dir", str(stack.state_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bq_cli_query_ls_show_head_through_bqgate_bq(stack: Stack) -> None:
    out = bq(
        stack,
        "query",
        "SELECT customer_id, ssn FROM `demo-project.sales.customers` ORDER BY customer_id LIMIT 2",
    )
    assert out.returncode == 0, out.stderr
    assert "XXX-XX-" in out.stdout and "customer_id" in out.stdout
    ls = bq(stack, "ls")
    assert ls.returncode == 0 and ls.stdout.split()[-3:] == ["analytics", "finance", "sales"]
    show = bq(stack, "show", "sales.customers")
    assert show.returncode == 0 and "|- ssn: string" in show.stdout
    head = bq(stack, "head", "-n", "3", "sales.customers")
    assert head.returncode == 0 and head.stdout.count("XXX-XX-") == 3
    missing = bq(stack, "show", "secret.t")
    assert missing.returncode != 0 and "Not found: Dataset demo-project:secret" in missing.stdout
    token = mint_token_for(stack, AGENT)
    for text in (out.stdout, out.stderr, ls.stdout, missing.stdout, missing.stderr):
        assert token[:40] not in text  # a fresh token each call, and never printed
