"""The executor core over fakes: idempotency, cost guard, approval routing, paging, masking."""

from __future__ import annotations

import json

from bqgate.classification import Classification
from bqgate.jobs import DONE, PENDING, PENDING_APPROVAL, Job, warehouse_job_id
from bqgate.policy import load_policy
from bqgate.service.executor import Executor, ExecutorConfig
from fakes import FakeWarehouse, MemoryJobStore, MemoryQueue

POLICY = load_policy("policies/default.yaml")
CUSTOMERS = [
    {"name": "customer_id", "type": "INTEGER"},
    {"name": "email", "type": "STRING"},
    {"name": "country", "type": "STRING"},
]


def make(
    rows: int = 25, estimate: int = 1000, page_bytes: int = 200
) -> tuple[Executor, MemoryJobStore, FakeWarehouse, MemoryQueue]:
    store, queue = MemoryJobStore(), MemoryQueue()
    wh = FakeWarehouse(
        CUSTOMERS,
        [[str(i), f"user{i}@example.com", "US"] for i in range(rows)],
        schemas={"demo-project.sales.customers": CUSTOMERS},
    )
    wh.estimate = estimate
    ex = Executor(
        store=store,
        warehouse=wh,
        policy=POLICY,
        hmac_key=b"k",
        queue=queue,
        config=ExecutorConfig(page_bytes=page_bytes, fetch_rows=7),
    )
    return ex, store, wh, queue


def job(**kw: object) -> Job:
    base = {
        "job_id": "j1",
        "project": "demo-project",
        "location": "US",
        "owner": "agent@x",
        "sql": "SELECT customer_id, email, country FROM `demo-project.sales.customers`",
        "now_ms": 1,
    }
    base.update(kw)
    return Job.new(**base)


def rows_of(store: MemoryJobStore, job_id: str) -> list[list[str]]:
    done = store.get(job_id)
    assert done is not None
    return [
        r
        for i in range(len(done.page_starts))
        for r in json.loads(store.get_pages(job_id, i, i)[0][1])
    ]


def test_runs_once_pages_small_and_masks_by_lineage() -> None:
    ex, store, wh, _ = make()
    store.create(job())
    assert ex.run("j1") == "done"
    assert ex.run("j1") == "skipped"  # a redelivery changes nothing
    done = store.get("j1")
    assert done is not None and done.state == DONE and done.total_rows == 25
    assert wh.jobs == {warehouse_job_id("j1"): 1}
    assert len(done.page_starts) > 1  # small page_bytes: results spread over pages
    rows = rows_of(store, "j1")
    assert [r[0] for r in rows] == [str(i) for i in range(25)]
    assert all(r[1].startswith("XXXXX@") for r in rows) and all(r[2] == "US" for r in rows)
    assert done.masking and done.masking[0]["column"] == "email"


def test_result_over_the_row_cap_is_truncated_and_says_so() -> None:
    ex, store, _, _ = make(rows=30)
    ex.policy = POLICY.__class__(
        **{
            **POLICY.__dict__,
            "cost": POLICY.cost.__class__(**{**POLICY.cost.__dict__, "max_result_rows": 10}),
        }
    )
    store.create(job())
    ex.run("j1")
    done = store.get("j1")
    assert done is not None and done.total_rows == 10 and done.truncated


def test_cost_guard_blocks_over_the_block_limit() -> None:
    ex, store, wh, _ = make(estimate=10**15)
    store.create(job())
    assert ex.run("j1") == "failed"
    done = store.get("j1")
    assert done is not None and done.error is not None and done.error["reason"] == "quotaExceeded"
    assert wh.jobs == {}


def test_cost_guard_sends_expensive_queries_for_approval() -> None:
    ex, store, wh, queue = make(estimate=5 * 1024**3)
    store.create(job())
    assert ex.run("j1") == "sent-for-approval"
    pending = store.get("j1")
    assert pending is not None and pending.state == PENDING_APPROVAL and pending.needs_approval
    assert pending.bytes_estimate == 5 * 1024**3
    assert any("approval threshold" in r for r in pending.classification.reasons)
    assert queue.messages == [("approvals", {"job_id": "j1"})] and wh.jobs == {}
    assert ex.run("j1") == "awaiting-approval" and len(queue.messages) == 1


def test_approval_bound_job_is_estimated_then_published_once() -> None:
    ex, store, wh, queue = make()
    store.create(job(state=PENDING_APPROVAL, needs_approval=True))
    assert ex.run("j1") == "sent-for-approval"
    assert ex.run("j1") == "awaiting-approval"
    assert queue.messages == [("approvals", {"job_id": "j1"})] and wh.jobs == {}


def test_approved_job_whose_statement_changed_is_refused() -> None:
    ex, store, wh, _ = make()
    store.create(
        job(
            state=PENDING,
            needs_approval=True,
            bytes_estimate=1000,
            approval={"binding": "0" * 64, "approved": True},
        )
    )
    assert ex.run("j1") == "failed"
    done = store.get("j1")
    assert done is not None and done.error is not None
    assert done.error["reason"] == "accessDenied" and wh.jobs == {}


def test_unknown_job_is_dropped() -> None:
    ex, _, _, _ = make()
    assert ex.run("nope") == "unknown"


def test_dry_run_is_skipped_only_when_table_sizes_settle_the_cost() -> None:
    table = "demo-project.sales.customers"
    cls = Classification("allow", tables=(table,))
    ex, store, wh, _ = make()
    wh.sizes[table] = 10_000  # far below the approval threshold: no dry run needed
    store.create(job(classification=cls))
    assert ex.run("j1") == "done" and wh.dry_runs == 0
    ex, store, wh, _ = make()
    wh.sizes[table] = 5 * 1024**3  # could be expensive: BigQuery must estimate
    store.create(job(classification=cls))
    assert ex.run("j1") == "done" and wh.dry_runs == 1
    ex, store, wh, _ = make()  # size unknown (a view, say): dry run
    store.create(job(classification=cls))
    assert ex.run("j1") == "done" and wh.dry_runs == 1


def test_client_byte_cap_is_applied_as_the_lower_of_client_and_policy() -> None:
    ex, store, wh, _ = make(estimate=1000)
    store.create(job(maximum_bytes_billed=1))  # BigQuery bills 10 MiB at least: over the cap
    assert ex.run("j1") == "failed" and wh.jobs == {}
    done = store.get("j1")
    assert done is not None and done.error == {
        "reason": "bytesBilledLimitExceeded",
        "message": "Query exceeded limit for bytes billed: 1. 10485760 or higher required.",
    }
    ex, store, wh, _ = make(estimate=1000)
    store.create(job(maximum_bytes_billed=20 * 1024**2, priority="BATCH"))
    assert ex.run("j1") == "done"
    assert wh.last_run["maximum_bytes_billed"] == 20 * 1024**2  # lower than the policy's 10 GB
    assert wh.last_run["priority"] == "BATCH"
    ex, store, wh, _ = make(estimate=1000)
    store.create(job(job_id="j2", maximum_bytes_billed=10**15))
    assert ex.run("j2") == "done"
    assert wh.last_run["maximum_bytes_billed"] == POLICY.cost.max_bytes_billed


def test_dry_run_job_runs_nothing_and_stores_what_bigquery_said() -> None:
    ex, store, wh, queue = make(estimate=777)
    wh.statement_type = "SELECT"
    cls = Classification(
        "approve", statements=("SELECT",), tables=("demo-project.sales.customers",)
    )
    store.create(job(dry_run=True, classification=cls))
    assert ex.run("j1") == "dry-run"
    done = store.get("j1")
    assert done is not None and done.state == DONE and done.total_bytes_processed == 777
    assert done.schema == CUSTOMERS and done.statement_type == "SELECT"
    assert wh.jobs == {} and queue.messages == [] and done.page_starts == []
