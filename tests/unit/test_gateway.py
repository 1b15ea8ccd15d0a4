"""The ingress core over in-memory fakes: routing of decisions, ownership, paging."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from bqgate.classification import Classification
from bqgate.errors import AccessDenied, Duplicate, InvalidRequest, NotFound
from bqgate.identity import Principal
from bqgate.jobs import DONE, PENDING, PENDING_APPROVAL
from bqgate.service.gateway import Gateway, GatewayConfig
from bqgate.vocabulary import Decision
from bqgate.wire import bigquery as wire
from fakes import MemoryJobStore, MemoryQueue, caller

ALICE = caller("agent@x", "ai-coding-agents")
BOB = caller("other@x", "ai-coding-agents")


def verdict_for(sql: str, **_: Any) -> Classification:
    decision: Decision = "block" if "DROP" in sql else "approve" if "finance" in sql else "allow"
    return Classification(decision, reasons=(f"test says {decision}",))


def make() -> tuple[Gateway, MemoryJobStore, MemoryQueue]:
    store, queue = MemoryJobStore(), MemoryQueue()
    gw = Gateway(
        store=store,
        queue=queue,
        classify=verdict_for,
        config=GatewayConfig(max_wait_ms=0),
        sleep=lambda s: None,
    )
    return gw, store, queue


def insert(gw: Gateway, sql: str, job_id: str = "j1", who: Principal = ALICE) -> dict[str, Any]:
    return gw.insert_job(
        who,
        "demo-project",
        {
            "jobReference": {"jobId": job_id},
            "configuration": {"query": {"query": sql, "useLegacySql": False}},
        },
    )


def test_allowed_job_is_stored_pending_and_published_to_execute() -> None:
    gw, store, queue = make()
    res = insert(gw, "SELECT 1")
    assert res["status"]["state"] == "PENDING"
    assert store.get("j1").state == PENDING  # type: ignore[union-attr]
    assert queue.messages == [("execute", {"job_id": "j1"})]


def test_blocked_job_is_recorded_and_denied_without_publishing() -> None:
    gw, store, queue = make()
    with pytest.raises(AccessDenied) as err:
        insert(gw, "DROP TABLE x")
    assert "test says block" in err.value.message
    assert store.get("j1").state == DONE and queue.messages == []  # type: ignore[union-attr]


def test_approval_job_waits_and_goes_to_the_executor_for_its_estimate() -> None:
    gw, store, queue = make()
    res = insert(gw, "SELECT * FROM finance.ledger")
    assert res["status"]["state"] == "PENDING"  # the agent sees a pending BigQuery job
    job = store.get("j1")
    assert job is not None and job.state == PENDING_APPROVAL and job.needs_approval
    # The executor dry-runs it (it alone holds BigQuery rights), then asks for approval.
    assert queue.messages == [("execute", {"job_id": "j1"})]
    results = gw.get_query_results(ALICE, "demo-project", "j1", {"timeoutMs": "0"})
    assert results["jobComplete"] is False


def test_another_principal_gets_not_found() -> None:
    gw, _, _ = make()
    insert(gw, "SELECT 1")
    with pytest.raises(NotFound):
        gw.get_job(BOB, "demo-project", "j1")
    with pytest.raises(NotFound):
        gw.get_query_results(BOB, "demo-project", "j1", {})
    with pytest.raises(Duplicate):
        insert(gw, "SELECT 1", who=BOB)


def test_same_insert_retried_returns_the_same_job() -> None:
    gw, _, queue = make()
    insert(gw, "SELECT 1")
    assert insert(gw, "SELECT 1")["jobReference"]["jobId"] == "j1"
    assert len(queue.messages) == 1
    with pytest.raises(Duplicate):
        insert(gw, "SELECT 2")


def finish(store: MemoryJobStore, job_id: str, n: int, page: int) -> None:
    rows = [[str(i), f"name{i}"] for i in range(n)]
    starts = []
    for idx, start in enumerate(range(0, n, page)):
        starts.append(start)
        store.put_page(job_id, idx, start, json.dumps(rows[start : start + page]))
    store.transition(
        job_id,
        lambda j: replace(
            j,
            state=DONE,
            schema=[{"name": "i", "type": "INTEGER"}, {"name": "s", "type": "STRING"}],
            total_rows=n,
            page_starts=starts,
        ),
    )


@pytest.mark.parametrize(("max_results", "page"), [(7, 10), (10, 10), (25, 10), (None, 10), (3, 1)])
def test_paging_returns_every_row_once_in_order(max_results: int | None, page: int) -> None:
    gw, store, _ = make()
    insert(gw, "SELECT 1")
    finish(store, "j1", 53, page)
    seen: list[str] = []
    params: dict[str, str] = {} if max_results is None else {"maxResults": str(max_results)}
    for _ in range(100):
        body = gw.get_query_results(ALICE, "demo-project", "j1", params)
        assert body["totalRows"] == "53"
        seen += [r["f"][0]["v"] for r in body["rows"]]
        if "pageToken" not in body:
            break
        params = {**params, "pageToken": body["pageToken"]}
    assert seen == [str(i) for i in range(53)]


def test_start_index_and_max_results_zero() -> None:
    gw, store, _ = make()
    insert(gw, "SELECT 1")
    finish(store, "j1", 20, 6)
    body = gw.get_query_results(
        ALICE, "demo-project", "j1", {"startIndex": "13", "maxResults": "4"}
    )
    assert [r["f"][0]["v"] for r in body["rows"]] == ["13", "14", "15", "16"]
    empty = gw.get_query_results(ALICE, "demo-project", "j1", {"maxResults": "0"})
    assert "rows" not in empty and empty["totalRows"] == "20"


def test_failed_job_raises_its_error_on_results() -> None:
    gw, store, _ = make()
    insert(gw, "SELECT 1")
    store.transition(
        "j1",
        lambda j: replace(
            j,
            state=DONE,
            error={"reason": "accessDenied", "message": "Denied by alice@example.com: not today"},
        ),
    )
    with pytest.raises(AccessDenied, match="not today"):
        gw.get_query_results(ALICE, "demo-project", "j1", {})


def test_blocked_dry_run_says_it_is_blocked() -> None:
    gw, _, queue = make()
    with pytest.raises(AccessDenied, match="Blocked by bqgate policy"):
        gw.query(
            ALICE, "demo-project", {"query": "DROP TABLE x", "useLegacySql": False, "dryRun": True}
        )
    assert queue.messages == []


def test_dry_run_is_answered_by_the_executor_like_bigquery() -> None:
    from bqgate.policy import load_policy
    from bqgate.service.executor import Executor
    from fakes import FakeWarehouse

    store, queue = MemoryJobStore(), MemoryQueue()
    wh = FakeWarehouse([{"name": "x", "type": "INTEGER"}], [["1"]])
    wh.estimate = 4242
    ex = Executor(
        store=store,
        warehouse=wh,
        policy=load_policy("policies/default.yaml"),
        hmac_key=b"k",
        queue=queue,
    )
    gw = Gateway(
        store=store,
        queue=queue,
        classify=verdict_for,
        config=GatewayConfig(max_wait_ms=0),
        sleep=lambda s: None,
        dispatch=lambda job_id: ex.execute(job_id, direct=True),  # the fast path: to the executor
    )
    # Even a statement that needs approval is dry-run at once: nothing runs.
    res = gw.insert_job(
        ALICE,
        "demo-project",
        {
            "configuration": {
                "dryRun": True,
                "query": {"query": "SELECT x FROM finance.ledger", "useLegacySql": False},
            }
        },
    )
    assert res["status"] == {"state": "DONE"}
    stats = res["statistics"]["query"]
    assert stats["totalBytesProcessed"] == "4242" and stats["statementType"] == "SELECT"
    assert stats["schema"] == {"fields": [{"name": "x", "type": "INTEGER"}]}
    assert wh.jobs == {} and not [m for m in queue.messages if m[0] == "approvals"]
    body = gw.query(
        ALICE, "demo-project", {"query": "SELECT 1", "useLegacySql": False, "dryRun": True}
    )
    assert body["jobComplete"] is True and body["totalBytesProcessed"] == "4242"
    assert "rows" not in body and "totalRows" not in body


def test_cancel_stops_a_pending_job() -> None:
    gw, store, _ = make()
    insert(gw, "SELECT 1")
    res = gw.cancel_job(ALICE, "demo-project", "j1")
    assert res["job"]["status"]["state"] == "DONE"
    assert store.get("j1").error["reason"] == "stopped"  # type: ignore[index,union-attr]


def test_page_token_from_another_gateway_is_invalid() -> None:
    gw, store, _ = make()
    insert(gw, "SELECT 1")
    finish(store, "j1", 3, 3)
    with pytest.raises(InvalidRequest):
        gw.get_query_results(ALICE, "demo-project", "j1", {"pageToken": "xyz"})
    assert wire.decode_page_token(wire.encode_page_token(2)) == 2


def test_unanswered_approval_expires_when_the_agent_polls() -> None:
    clock = {"now": 1000.0}
    store, queue = MemoryJobStore(), MemoryQueue()
    gw = Gateway(
        store=store,
        queue=queue,
        classify=verdict_for,
        config=GatewayConfig(max_wait_ms=0, approval_ttl_ms=60_000),
        sleep=lambda s: None,
        clock=lambda: clock["now"],
    )
    insert(gw, "SELECT * FROM finance.ledger")
    assert gw.get_query_results(ALICE, "demo-project", "j1", {})["jobComplete"] is False
    clock["now"] += 61
    with pytest.raises(AccessDenied, match="expired"):
        gw.get_query_results(ALICE, "demo-project", "j1", {})
    assert (
        gw.get_job(ALICE, "demo-project", "j1")["status"]["errorResult"]["reason"] == "accessDenied"
    )


def test_a_stored_job_with_an_unknown_field_is_an_error_not_silence() -> None:
    gw, store, _ = make()
    insert(gw, "SELECT 1")
    store.docs["j1"]["stat"] = DONE  # a misspelt field, as another writer might store it
    with pytest.raises(ValueError, match="fields that Job does not: stat"):
        store.get("j1")
    with pytest.raises(ValueError, match="fields that Job does not: stat"):
        store.transition("j1", lambda j: replace(j, state=DONE))
