"""The outbox, its dispatcher and reconciler, retries that resume, the approval quota and
the sweeper, over the in-memory fakes (the same behaviours run against the emulators in
tests/adapters and tests/system)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from bqgate import outbox
from bqgate.classification import Classification
from bqgate.errors import QuotaExceeded
from bqgate.identity import Principal
from bqgate.jobs import DONE, PENDING, PENDING_APPROVAL, RUNNING, Job
from bqgate.service.dispatch import Dispatcher
from bqgate.service.gateway import Gateway, GatewayConfig
from bqgate.service.sweeper import Sweeper, SweeperConfig
from bqgate.vocabulary import Decision
from fakes import MemoryJobStore, MemoryQueue, caller

AGENT = caller("agent@x", "ai-coding-agents")
OTHER = caller("other@x", "ai-coding-agents")


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, job: Job, kind: str, data: Mapping[str, Any]) -> None:
        self.events.append((job.job_id, kind, dict(data)))


def verdict_for(sql: str, **_: Any) -> Classification:
    decision: Decision = "approve" if "finance" in sql else "allow"
    return Classification(decision, reasons=(f"test says {decision}",), statement_hash="h-" + sql)


class Direct:
    """The fast path to the executor: records calls, or fails like an unreachable executor."""

    def __init__(self, queue: MemoryQueue) -> None:
        self.calls: list[str] = []
        self.down = False
        self.queue = queue

    def __call__(self, job_id: str) -> None:
        if self.down:
            # What DirectExecutor does when the call fails: fall back to the topic.
            self.queue.publish("execute", {"job_id": job_id})
            return
        self.calls.append(job_id)


def make(*, direct: bool = False, quota: int = 10) -> dict[str, Any]:
    store, queue, clock, recorder = MemoryJobStore(), MemoryQueue(), Clock(), Recorder()
    fast = Direct(queue) if direct else None
    gw = Gateway(
        store=store,
        queue=queue,
        classify=verdict_for,
        recorder=recorder,
        config=GatewayConfig(max_wait_ms=0, max_pending_per_principal=quota),
        dispatch=fast,
        clock=clock,
        sleep=lambda s: None,
    )
    return {
        "gw": gw,
        "store": store,
        "queue": queue,
        "clock": clock,
        "recorder": recorder,
        "direct": fast,
    }


def insert(gw: Gateway, sql: str, job_id: str, who: Principal = AGENT) -> dict[str, Any]:
    return gw.insert_job(
        who,
        "demo-project",
        {
            "jobReference": {"jobId": job_id},
            "configuration": {"query": {"query": sql, "useLegacySql": False}},
        },
    )


def record(store: MemoryJobStore, job_id: str, event: str) -> outbox.OutboxRecord:
    return outbox.OutboxRecord.from_doc(store.outbox[outbox.record_id(job_id, event)])


# --------------------------------------------------------------------------- the record


def test_record_lifecycle_and_unknown_fields() -> None:
    rec = outbox.new_record(
        "j", outbox.NOTIFY, "approvals", now_ms=0, deadline_ms=10, until_done=True
    )
    sent = outbox.published(rec, 5, retry_ms=10)
    assert sent is not None
    assert not sent.finished and sent.due_ms == 15  # a notification waits for its consumer
    done = outbox.completed(sent, 7)
    assert done is not None and done.finished and done.done_ms == 7
    assert outbox.published(done, 8, retry_ms=10) is None  # a finished record stays finished
    with pytest.raises(ValueError, match="unknown outbox record fields"):
        outbox.OutboxRecord.from_doc({**rec.to_doc(), "surprise": 1})
    with pytest.raises(ValueError, match="unknown outbox event"):
        outbox.new_record("j", "nope", "t", now_ms=0, deadline_ms=1)


# --------------------------------------------------------------------------- ingress


def test_an_accepted_job_is_stored_with_its_hand_off_and_marked_sent() -> None:
    env = make()
    insert(env["gw"], "SELECT 1", "j1")
    rec = record(env["store"], "j1", outbox.ACCEPTED)
    assert rec.finished and rec.sent_ms is not None and rec.attempts == 1
    assert env["queue"].messages == [("execute", {"job_id": "j1"})]


def test_publish_failure_keeps_the_job_and_the_reconciler_sends_it_once_back() -> None:
    env = make()
    env["queue"].down = True
    res = insert(env["gw"], "SELECT 1", "j1")
    assert res["status"]["state"] == "PENDING"  # accepted, not a 500
    rec = record(env["store"], "j1", outbox.ACCEPTED)
    assert not rec.finished and rec.sent_ms is None and rec.attempts == 1
    sweeper = Sweeper(store=env["store"], queue=env["queue"], clock=env["clock"])
    env["clock"].now += 25  # past the 20 s deadline, Pub/Sub still down
    assert sweeper.sweep()["outbox"] == {"published": 0, "failed": 1, "given_up": 0}
    env["queue"].down = False
    env["clock"].now += 5
    assert sweeper.sweep()["outbox"]["published"] == 0  # not due again yet (20 s)
    env["clock"].now += 20
    assert sweeper.sweep()["outbox"]["published"] == 1
    assert env["queue"].messages == [("execute", {"job_id": "j1"})]
    assert record(env["store"], "j1", outbox.ACCEPTED).finished
    env["clock"].now += 60
    assert sweeper.sweep()["outbox"]["published"] == 0  # sent once, never again


def test_a_retried_insert_of_an_undispatched_job_dispatches_it() -> None:
    env = make(direct=True)
    env["direct"].down = True
    env["queue"].down = True  # the direct call and the topic both fail
    first = insert(env["gw"], "SELECT 1", "j1")
    assert first["status"]["state"] == "PENDING" and env["direct"].calls == []
    env["direct"].down = env["queue"].down = False
    again = insert(env["gw"], "SELECT 1", "j1")  # the client's retry: same id, same SQL
    assert again["jobReference"]["jobId"] == "j1"
    assert env["direct"].calls == ["j1"]
    assert record(env["store"], "j1", outbox.ACCEPTED).finished
    insert(env["gw"], "SELECT 1", "j1")  # a further retry hands off nothing more
    assert env["direct"].calls == ["j1"] and env["queue"].messages == []


def test_the_fast_path_marks_the_record_without_publishing() -> None:
    env = make(direct=True)
    insert(env["gw"], "SELECT 1", "j1")
    assert env["direct"].calls == ["j1"] and env["queue"].messages == []
    assert record(env["store"], "j1", outbox.ACCEPTED).finished


# --------------------------------------------------------------------------- the quota


def test_quota_refuses_approval_requests_past_the_limit_and_records_why() -> None:
    env = make(quota=3)
    for i in range(3):
        insert(env["gw"], f"SELECT {i} FROM finance.ledger", f"j{i}")
    with pytest.raises(QuotaExceeded) as err:
        insert(env["gw"], "SELECT 9 FROM finance.ledger", "j9")
    assert err.value.reason == "quotaExceeded" and err.value.http_status == 403
    assert "agent@x already has 3 requests awaiting approval" in err.value.message
    assert "approvals.max_pending_per_principal = 3" in err.value.message
    refused = env["store"].get("j9")
    assert refused.state == DONE and refused.error["reason"] == "quotaExceeded"
    blocked = [d for j, k, d in env["recorder"].events if j == "j9" and k == "blocked"]
    assert blocked and blocked[0]["quota"] == "approvals.max_pending_per_principal"
    assert outbox.record_id("j9", outbox.ACCEPTED) not in env["store"].outbox
    # Allowed statements and other principals are not held back by the quota.
    insert(env["gw"], "SELECT 1", "ok")
    insert(env["gw"], "SELECT 1 FROM finance.ledger", "other", who=OTHER)
    # A retry of the refused job answers with the stored refusal, it is not re-judged.
    assert (
        insert(env["gw"], "SELECT 9 FROM finance.ledger", "j9")["status"]["errorResult"]["reason"]
        == "quotaExceeded"
    )


def test_expired_and_decided_requests_free_their_slots() -> None:
    env = make(quota=2)
    insert(env["gw"], "SELECT 1 FROM finance.ledger", "a")
    insert(env["gw"], "SELECT 2 FROM finance.ledger", "b")
    with pytest.raises(QuotaExceeded):
        insert(env["gw"], "SELECT 3 FROM finance.ledger", "c")
    env["clock"].now += 15 * 60  # both expire (TTL 15 min), even before anyone sweeps
    insert(env["gw"], "SELECT 4 FROM finance.ledger", "d")
    env["store"].transition("d", lambda j: replace(j, state=PENDING))  # approved
    insert(env["gw"], "SELECT 5 FROM finance.ledger", "e")
    insert(env["gw"], "SELECT 6 FROM finance.ledger", "f")


def test_concurrent_submissions_never_overshoot_the_quota() -> None:
    env = make(quota=5)
    refused: list[str] = []
    start = threading.Barrier(20)

    def submit(i: int) -> None:
        start.wait()
        try:
            insert(env["gw"], f"SELECT {i} FROM finance.ledger", f"c{i:02d}")
        except QuotaExceeded:
            refused.append(f"c{i:02d}")

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    waiting = [j for j in env["store"]._jobs() if j.state == PENDING_APPROVAL]
    assert len(waiting) == 5 and len(refused) == 15


# --------------------------------------------------------------------------- sweeper


def test_sweeper_expires_requests_and_asks_for_their_messages_to_close() -> None:
    env = make()
    insert(env["gw"], "SELECT 1 FROM finance.ledger", "j1")
    sweeper = Sweeper(
        store=env["store"], queue=env["queue"], clock=env["clock"], recorder=env["recorder"]
    )
    assert sweeper.sweep()["expired"] == 0
    env["clock"].now += 15 * 60
    assert sweeper.sweep()["expired"] == 1
    job = env["store"].get("j1")
    assert job.state == DONE and job.approval["status"] == "expired"
    assert ("approvals", {"job_id": "j1"}) in env["queue"].messages  # slack_notify closes it
    assert not record(env["store"], "j1", outbox.CLOSE).finished  # until slack_notify says so
    assert ("j1", "expired") in [(j, k) for j, k, _ in env["recorder"].events]
    assert sweeper.sweep()["expired"] == 0


def test_sweeper_fails_orphaned_running_jobs_and_a_late_executor_changes_nothing() -> None:
    env = make()
    store = env["store"]
    now_ms = int(env["clock"].now * 1000)
    store.create(
        Job.new(
            job_id="orphan",
            project="p",
            location="US",
            sql="SELECT 1",
            owner="a@x",
            now_ms=now_ms,
            state=RUNNING,
            started_ms=now_ms,
            executions=1,
            warehouse_job_id="bqgate_x",
        )
    )
    sweeper = Sweeper(
        store=store,
        queue=env["queue"],
        clock=env["clock"],
        config=SweeperConfig(running_deadline_ms=60_000),
    )
    assert sweeper.sweep()["orphans_failed"] == 0
    env["clock"].now += 61
    assert sweeper.sweep()["orphans_failed"] == 1
    job = store.get("orphan")
    assert job.state == DONE and job.error["reason"] == "timeout"
    assert "bqgate_x may have run" in job.error["message"]
    # The executor's results arriving late never overwrite the failure (its own rule).
    store.transition("orphan", lambda j: None if j.done else replace(j, error=None))
    assert store.get("orphan").error["reason"] == "timeout"


def test_dead_letters_fail_execute_jobs_and_leave_notifications_to_the_reconciler() -> None:
    env = make()
    insert(env["gw"], "SELECT 1", "j1")
    insert(env["gw"], "SELECT 1 FROM finance.ledger", "j2")
    sweeper = Sweeper(store=env["store"], queue=env["queue"], clock=env["clock"])
    assert sweeper.dead_letter("execute", "j1", 5) == "failed"
    job = env["store"].get("j1")
    assert job.error["reason"] == "gatewayError"
    assert job.error["message"] == (
        "bqgate could not run this job: its executor failed on all "
        "5 deliveries. Nothing ran in BigQuery"
    )
    assert sweeper.dead_letter("execute", "j1", 5) == "already-done"
    assert sweeper.dead_letter("approvals", "j2", 5) == "left-to-reconciler"
    assert env["store"].get("j2").state == PENDING_APPROVAL
    assert sweeper.dead_letter("execute", "nope", 5) == "unknown"
    resp = sweeper.handle("POST", "/dead-letter/execute", {"message": {"data": "???"}})
    assert resp.status == 200 and resp.body == {"outcome": "malformed"}
    assert sweeper.handle("GET", "/dead-letter/execute", None).status == 404


def test_a_hand_off_that_never_happens_ends_the_job_within_the_bound() -> None:
    env = make()
    env["queue"].down = True
    insert(env["gw"], "SELECT 1", "j1")
    sweeper = Sweeper(store=env["store"], queue=env["queue"], clock=env["clock"])
    env["clock"].now += outbox.GIVE_UP_MS / 1000
    assert sweeper.sweep()["outbox"]["given_up"] == 1
    job = env["store"].get("j1")
    assert job.state == DONE and job.error["reason"] == "gatewayError"
    assert "could not hand this job to its executor within 1 hour" in job.error["message"]
    assert record(env["store"], "j1", outbox.ACCEPTED).gave_up_ms is not None


def test_dispatcher_marks_failures_with_backoff_only_for_notifications() -> None:
    store, queue, clock = MemoryJobStore(), MemoryQueue(), Clock(0)
    d = Dispatcher(store=store, queue=queue, clock=clock, redispatch_after_ms=1000)
    store.create(
        Job.new(job_id="j", project="p", location="US", sql="", owner="a", now_ms=0),
        dispatch=[
            d.record("j", outbox.NOTIFY, "approvals", until_done=True),
            d.record("j", outbox.ACCEPTED, "execute"),
        ],
    )
    queue.down = True
    for attempt in range(1, 4):
        for rec in store.outbox_of("j"):
            d.send(rec)
        notify, accepted = record(store, "j", outbox.NOTIFY), record(store, "j", outbox.ACCEPTED)
        assert notify.due_ms == 1000 * 2 ** (attempt - 1) and accepted.due_ms == 1000
        assert "pubsub is down" in (accepted.last_error or "")
