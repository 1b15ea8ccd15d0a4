"""The executor's guards over fakes: the masking rewrite is what runs, the blast radius of a
write is measured before it commits, BigQuery's dry run is a second opinion, errors carry
no data."""

from __future__ import annotations

from typing import Any

import pytest
from bqgate.errors import InvalidQuery
from bqgate.jobs import DONE, PENDING, PENDING_APPROVAL, Job, warehouse_job_id
from bqgate.policy import load_policy
from bqgate.service.executor import Executor
from bqgate.sql.classify import classify
from fakes import FakeWarehouse, MemoryJobStore, MemoryQueue
from sqlglot.dialects.dialect import Dialect
from sqlglot.tokenizer_core import TokenType

POLICY = load_policy("policies/default.yaml")
AGENT = "agent@demo-project.iam.gserviceaccount.com"
CUSTOMERS = [
    {"name": "customer_id", "type": "INTEGER"},
    {"name": "full_name", "type": "STRING"},
    {"name": "email", "type": "STRING"},
    {"name": "ssn", "type": "STRING"},
]
EVENTS = [{"name": "event_id", "type": "INTEGER"}, {"name": "name", "type": "STRING"}]


def make() -> tuple[Executor, MemoryJobStore, FakeWarehouse, MemoryQueue]:
    store, queue = MemoryJobStore(), MemoryQueue()
    wh = FakeWarehouse(
        [{"name": "x", "type": "INTEGER"}],
        [["1"]],
        schemas={
            "demo-project.sales.customers": CUSTOMERS,
            "demo-project.analytics.events": EVENTS,
        },
    )
    ex = Executor(
        store=store,
        warehouse=wh,
        policy=POLICY,
        hmac_key=b"secret-key",
        queue=queue,
        warehouse_project="wh-internal",
    )
    return ex, store, wh, queue


def submit(store: MemoryJobStore, sql: str, **kw: Any) -> Job:
    verdict = classify(
        sql, policy=POLICY, principal=AGENT, groups=(), default_project="demo-project"
    )
    job = Job.new(
        job_id="j1",
        project="demo-project",
        location="US",
        sql=sql,
        owner=AGENT,
        classification=verdict,
        now_ms=1,
        **kw,
    )
    if verdict.decision == "approve":
        job.state = PENDING_APPROVAL
        job.needs_approval = True
    store.create(job)
    return job


def test_the_rewritten_statement_runs_with_the_key_as_parameters() -> None:
    ex, store, wh, _ = make()
    submit(store, "SELECT full_name FROM `demo-project.sales.customers` WHERE ssn LIKE '1%'")
    assert ex.run("j1") == "done"
    ran = wh.sqls[-1]
    assert "REPLACE (" in ran and "@bqgate_hmac_ipad" in ran
    assert "secret-key" not in ran
    names = {p.get("name") for p in wh.params[-1]}
    assert names == {"bqgate_hmac_ipad", "bqgate_hmac_opad"}
    done = store.get("j1")
    assert done is not None and done.rewritten_sql == ran


def test_positional_parameters_keep_their_order_around_the_key() -> None:
    ex, store, wh, _ = make()
    params = [{"parameterType": {"type": "STRING"}, "parameterValue": {"value": "1%"}}]
    submit(
        store,
        "SELECT full_name FROM `demo-project.sales.customers` WHERE ssn LIKE ?",
        query_parameters=params,
        parameter_mode="POSITIONAL",
    )
    assert ex.run("j1") == "done"
    sent = wh.params[-1]
    assert [p["parameterType"]["type"] for p in sent] == ["BYTES", "BYTES", "STRING"]
    assert not any(p.get("name") for p in sent)
    tokens = Dialect.get_or_raise("bigquery").tokenize(wh.sqls[-1])
    assert sum(t.token_type == TokenType.PLACEHOLDER for t in tokens) == 3


def test_a_whole_table_delete_is_measured_and_sent_for_approval() -> None:
    ex, store, wh, queue = make()
    wh.counts = (5000, 5000)
    submit(store, "DELETE FROM `demo-project.analytics.events` WHERE event_id IS NOT NULL")
    assert ex.run("j1") == "sent-for-approval"
    job = store.get("j1")
    assert job is not None and job.state == PENDING_APPROVAL
    assert any(
        "deletes 5,000 of 5,000 rows of demo-project.analytics.events" in r
        for r in job.classification.reasons
    )
    assert job.blast_radius[0]["touched"] == 5000
    assert queue.messages == [("approvals", {"job_id": "j1"})]
    assert list(wh.jobs) == [warehouse_job_id("j1") + "_m1"], "only the count ran"
    assert any("AS touched" in s for s in wh.sqls)


def test_a_small_delete_runs_after_one_count() -> None:
    ex, store, wh, _ = make()
    wh.counts = (3, 5000)
    submit(store, "DELETE FROM `demo-project.analytics.events` WHERE event_id IN (1, 2, 3)")
    assert ex.run("j1") == "done"
    counts = [s for s in wh.sqls if "AS touched" in s]
    assert len(counts) == 1
    assert wh.sqls[-1].startswith("DELETE")


def test_an_unparseable_plain_query_runs_on_the_second_opinion() -> None:
    ex, store, wh, _ = make()
    wh.statement_type = "SELECT"
    wh.referenced = ("demo-project.analytics.events",)
    submit(store, "SELECT * FROM APPENDS(TABLE `demo-project.analytics.events`, NULL, NULL)")
    assert ex.run("j1") == "done"
    done = store.get("j1")
    assert done is not None and done.error is None
    assert done.classification.tables == ("demo-project.analytics.events",)


@pytest.mark.parametrize(
    ("statement_type", "tables", "why"),
    [
        ("SELECT", ("demo-project.sales.customers",), "sensitive columns"),
        ("SELECT", ("evil-project.ds.t",), "not in the policy"),
        ("SELECT", ("demo-project.finance.ledger",), "without approval"),
        ("DELETE", ("demo-project.analytics.events",), "only plain queries"),
    ],
)
def test_the_second_opinion_refuses_what_it_cannot_vouch_for(
    statement_type: str, tables: tuple[str, ...], why: str
) -> None:
    ex, store, wh, _ = make()
    wh.statement_type = statement_type
    wh.referenced = tables
    submit(store, "SELECT * FROM APPENDS(TABLE `demo-project.analytics.events`, NULL, NULL)")
    assert ex.run("j1") == "failed"
    done = store.get("j1")
    assert done is not None and done.state == DONE and done.error is not None
    assert done.error["reason"] == "accessDenied" and why in done.error["message"]
    assert not wh.jobs, "nothing ran"


def test_a_dry_run_that_disagrees_with_the_classifier_blocks() -> None:
    ex, store, wh, _ = make()
    wh.estimate = 10**11  # over the size bound: the dry run happens
    wh.statement_type = "SELECT"
    wh.referenced = ("demo-project.analytics.events", "demo-project.sales.customers")
    submit(store, "SELECT * FROM `demo-project.analytics.events`")
    ex.warehouse.sizes["demo-project.analytics.events"] = 10**12  # type: ignore[attr-defined]
    assert ex.run("j1") == "failed"
    done = store.get("j1")
    assert done is not None and done.error is not None
    assert "did not see" in done.error["message"] and "sales.customers" in done.error["message"]


def test_errors_reach_the_job_without_urls_ids_or_values() -> None:
    ex, store, _, _ = make()
    job = submit(store, "SELECT 1")
    ex._fail(
        job,
        InvalidQuery(
            "POST https://bigquery.googleapis.com/x: Bad int64 value: 123-45-6789 in "
            "wh-internal:sales.t job bqgate_" + "ab" * 32
        ),
    )
    done = store.get("j1")
    assert done is not None and done.error is not None
    message = done.error["message"]
    assert "http" not in message and "123-45-6789" not in message
    assert "wh-internal" not in message and "bqgate_" not in message
    assert "demo-project:sales.t" in message


def test_a_read_of_a_protected_table_with_an_unknown_schema_fails_closed() -> None:
    ex, store, wh, _ = make()
    del wh.schemas["demo-project.sales.customers"]
    submit(store, "SELECT ssn FROM `demo-project.sales.customers`")
    assert ex.run("j1") == "failed"
    done = store.get("j1")
    assert done is not None and done.error is not None and done.error["reason"] == "notFound"
    assert not wh.jobs


def test_pending_jobs_stay_pending_until_the_executor_decides() -> None:
    _, store, _, _ = make()
    job = submit(store, "SELECT 1")
    assert job.state == PENDING
