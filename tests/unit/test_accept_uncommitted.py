"""An allowed read handed to the executor uncommitted, over fakes.

The ingress does not commit an allowed read before the direct call: the executor creates
it with its claim, in one commit made while the read runs
(:func:`bqgate.service.dispatch.directly_acceptable`). What must hold whatever happens:
the session record is the same as on the committed path, the agent's rows never come
from a job this call did not create, a job is never lost (anything the executor did not
create, the ingress creates) and never created twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import pytest
from bqgate import outbox
from bqgate.classification import Classification
from bqgate.errors import Duplicate, Unavailable
from bqgate.jobs import Job, handed_over_job_id, warehouse_job_id
from bqgate.outbox import OutboxRecord
from bqgate.policy import load_policy
from bqgate.service.dispatch import NOT_CREATED, STORE_DOWN, ExecutorAnswer, directly_acceptable
from bqgate.service.executor import Executor, ExecutorConfig
from bqgate.service.gateway import Gateway, GatewayConfig
from fakes import CUSTOMERS, Events, FakeWarehouse, MemoryJobStore, MemoryQueue, caller

POLICY = load_policy("policies/default.yaml")
AGENT = caller("agent@demo-project.iam.gserviceaccount.com", subject="agent", expires_at=10**10)
SQL = "SELECT customer_id, email, ssn FROM `demo-project.sales.customers`"

OTHER = caller("other@demo-project.iam.gserviceaccount.com", subject="other", expires_at=10**10)
TABLE = "demo-project.sales.customers"


def verdict(sql: str, **_: Any) -> Classification:
    return Classification(
        "allow",
        reasons=("allowed by the test",),
        tables=(TABLE,),
        statements=("SELECT",),
        statement_hash="h",
    )


def agents_read(job_id: str) -> Job:
    """The agent's allowed read of the customers table, as the ingress makes it."""
    return Job.new(
        job_id=job_id,
        project="demo-project",
        location="US",
        sql=SQL,
        owner=AGENT.email,
        classification=verdict(SQL),
        now_ms=1,
    )


def cells(body: Mapping[str, Any]) -> list[list[Any]]:
    return [[c["v"] for c in row["f"]] for row in body["rows"]]


ACCEPTED_PATH = [
    "request",
    "classification",
    "execution_started",
    "execution_finished",
    "result",
]


class Rig:
    """A gateway and an executor over one store; the direct calls go through the
    answer's JSON form, as over HTTP. ``sized``: the table's stored size is known (the
    read's cost is settled without a dry run)."""

    def __init__(self, *, sized: bool = True, rows: int = 5) -> None:
        self.store, self.queue, self.events = MemoryJobStore(), MemoryQueue(), Events()
        self.wh = FakeWarehouse(
            CUSTOMERS,
            [[str(i), f"user{i}@example.com", f"123-45-{i:04d}"] for i in range(rows)],
            schemas={TABLE: CUSTOMERS},
        )
        if sized:
            self.wh.sizes[TABLE] = 10_000
        self.ex = Executor(
            store=self.store,
            warehouse=self.wh,
            policy=POLICY,
            hmac_key=b"k",
            queue=self.queue,
            recorder=self.events,
            config=ExecutorConfig(inline_result_bytes=1024 * 1024),
        )
        self.direct_calls: list[str] = []
        self.accepts: list[ExecutorAnswer] = []
        #: What the executor's side of the hand-over does (replaced to break it).
        self.on_accept: Callable[[Job, OutboxRecord], ExecutorAnswer | None] = self._accept
        self.created_states: list[str] = []
        create = self.store.create

        def spy_create(job: Job, **kw: Any) -> None:
            create(job, **kw)
            self.created_states.append(job.state)

        self.store.create = spy_create  # type: ignore[method-assign]  # a spy on the fake
        self.gw = Gateway(
            store=self.store,
            queue=self.queue,
            classify=verdict,
            config=GatewayConfig(max_wait_ms=0),
            recorder=self.events,
            dispatch=self._direct,
            accept=lambda job, rec: self.on_accept(job, rec),
            sleep=lambda s: None,
            new_id=lambda: "job1",
        )

    def _direct(self, job_id: str) -> ExecutorAnswer | None:
        self.direct_calls.append(job_id)
        return _over_http(self.ex.execute(job_id, direct=True))

    def _accept(self, job: Job, rec: OutboxRecord) -> ExecutorAnswer | None:
        # The hand-over crosses HTTP as JSON too.
        answer = _over_http(self.ex.accept(Job.from_doc(job.to_doc()), rec))
        self.accepts.append(answer)
        return answer

    def query(self, principal: Any = AGENT, **extra: Any) -> dict[str, Any]:
        return self.gw.query(
            principal, "demo-project", {"query": SQL, "useLegacySql": False, **extra}
        )


def _over_http(answer: ExecutorAnswer) -> ExecutorAnswer:
    got = ExecutorAnswer.from_json(answer.to_json())
    assert got is not None
    return got


def test_an_allowed_read_is_created_by_the_executor_as_claimed_in_one_commit() -> None:
    rig = Rig()
    body = rig.query()
    assert body["jobComplete"] is True and len(cells(body)) == 5
    # One create, by the executor, of the job already claimed; then the one commit that
    # ends it. The ingress committed nothing and made no other call.
    assert rig.created_states == ["RUNNING"] and rig.store.transitions == 1
    assert rig.direct_calls == [] and len(rig.accepts) == 1 and rig.accepts[0].accepted
    assert rig.events.kinds("job1") == ACCEPTED_PATH
    # The hand-off record was written with the job and finished with its end.
    rec = rig.store.outbox[outbox.record_id("job1", outbox.ACCEPTED)]
    assert rec["done_ms"] is not None
    done = rig.store.get("job1")
    assert done is not None and done.state == "DONE" and done.executions == 1


def test_the_session_record_is_the_same_as_on_the_committed_path() -> None:
    """Differential: only the hand-over differs; every recorded event is the same."""
    handed = Rig()
    committed = Rig()
    committed.gw.dispatcher.accept = None  # the path every other job takes
    handed.query()
    committed.query()
    assert committed.created_states == ["PENDING"] and committed.direct_calls == ["job1"]

    def plain(rig: Rig) -> list[tuple[str, dict[str, Any]]]:
        # What may differ: the run's measured duration, and the BigQuery job id (a
        # handed-over read runs as one of its own: jobs.handed_over_job_id).
        return [
            (
                k,
                {**d, "duration_ms": None, "warehouse_job_id": None}
                if "duration_ms" in d or "warehouse_job_id" in d
                else d,
            )
            for _, k, d in rig.events.events
        ]

    assert plain(handed) == plain(committed)
    a, b = handed.store.docs["job1"], committed.store.docs["job1"]
    assert a["warehouse_job_id"] == handed_over_job_id(Job.from_doc(a))
    assert b["warehouse_job_id"] == warehouse_job_id("job1")
    skip = {"created_ms", "started_ms", "ended_ms", "timings", "warehouse_job_id"}
    assert {k: v for k, v in a.items() if k not in skip} == {
        k: v for k, v in b.items() if k not in skip
    }


def test_a_read_whose_cost_needs_a_dry_run_is_created_first_then_goes_on_as_usual() -> None:
    rig = Rig(sized=False)
    body = rig.query()
    assert len(cells(body)) == 5 and rig.wh.dry_runs == 1
    # Created PENDING (the ingress's own create, made by the executor), then claimed.
    assert rig.created_states == ["PENDING"] and rig.accepts[0].accepted
    assert rig.events.kinds("job1") == ACCEPTED_PATH


def test_an_id_someone_else_holds_gets_none_of_their_rows_and_takes_nothing() -> None:
    rig = Rig()
    rig.gw.new_id = lambda: "taken"
    rig.query(OTHER)  # someone else's job holds the id
    before = dict(rig.store.docs["taken"])
    events_before = list(rig.events.events)
    with pytest.raises(Duplicate):
        rig.query()
    assert rig.accepts[-1].outcome == NOT_CREATED and not rig.accepts[-1].accepted
    assert rig.accepts[-1].job is None and not rig.accepts[-1].rest  # no rows came back
    assert rig.store.docs["taken"] == before and rig.events.events == events_before


def test_a_retry_of_the_same_request_is_answered_from_its_job_and_records_nothing() -> None:
    rig = Rig()
    body = {"requestId": "req-1"}
    first = rig.query(**body)
    again = rig.query(**body)
    assert cells(again) == cells(first)
    assert rig.events.kinds("req-1").count("request") == 1
    assert rig.store.docs["req-1"]["executions"] == 1


def test_an_executor_that_cannot_be_asked_leaves_the_job_to_the_ingress() -> None:
    rig = Rig()

    def down(job: Job, rec: OutboxRecord) -> ExecutorAnswer | None:
        raise ConnectionError("executor down")

    rig.on_accept = down
    body = rig.query()
    # Created by the ingress, handed off the usual way: nothing lost, one run.
    assert len(cells(body)) == 5 and rig.created_states == ["PENDING"]
    assert rig.direct_calls == ["job1"] and rig.events.kinds("job1") == ACCEPTED_PATH


def test_an_executor_that_knows_no_hand_over_leaves_the_job_to_the_ingress() -> None:
    """An executor of the version before (its answer has no ``accepted``)."""
    rig = Rig()
    rig.on_accept = lambda job, rec: ExecutorAnswer(outcome="unknown")
    assert len(cells(rig.query())) == 5
    assert rig.created_states == ["PENDING"] and rig.direct_calls == ["job1"]


def test_a_store_that_does_not_answer_the_executor_is_a_503_and_nothing_is_kept() -> None:
    rig = Rig()
    rig.events.fail_on = {"request"}  # the executor's create-and-claim cannot commit
    with pytest.raises(Unavailable):
        rig.query()
    assert rig.accepts[0].outcome == STORE_DOWN and not rig.accepts[0].accepted
    assert rig.accepts[0].job is None and not rig.accepts[0].rest  # no rows came back
    assert rig.store.docs == {} and rig.events.events == [] and rig.direct_calls == []


def test_a_failure_before_anything_is_stored_leaves_the_job_to_the_ingress() -> None:
    rig = Rig()
    size, calls = rig.wh.table_size, {"n": 0}

    def once(table_fqn: str) -> int | None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("the executor failed before storing anything")
        return size(table_fqn)

    rig.wh.table_size = once  # type: ignore[method-assign]  # break the fake once
    body = rig.query()
    assert rig.accepts[0].outcome == NOT_CREATED and not rig.accepts[0].accepted
    # Created by the ingress, handed off the usual way: nothing lost, one run.
    assert len(cells(body)) == 5 and rig.created_states == ["PENDING"]
    assert rig.direct_calls == ["job1"] and rig.events.kinds("job1") == ACCEPTED_PATH


def test_an_answer_lost_after_the_executor_created_the_job_finds_that_job() -> None:
    rig = Rig()

    def lost(job: Job, rec: OutboxRecord) -> ExecutorAnswer | None:
        rig._accept(job, rec)
        raise TimeoutError("the answer never came")

    rig.on_accept = lost
    body = rig.query()
    assert len(cells(body)) == 5  # from the job the executor ended
    assert rig.created_states == ["RUNNING"] and rig.direct_calls == []
    assert rig.events.kinds("job1") == ACCEPTED_PATH and rig.queue.messages == []


def test_a_lost_answer_for_a_job_still_running_is_delivered_again_by_the_topic() -> None:
    rig = Rig()

    def claimed_only(job: Job, rec: OutboxRecord) -> ExecutorAnswer | None:
        running = replace(job, state="RUNNING", executions=1)
        rig.store.create(running, dispatch=[rec])
        raise TimeoutError("the executor is still running it")

    rig.on_accept = claimed_only
    body = rig.query()
    assert body["jobComplete"] is False
    assert len(rig.queue.messages) == 1  # the topic delivers it again (idempotent)


def test_the_executor_creates_nothing_it_is_not_meant_to() -> None:
    rig = Rig()
    rec = outbox.new_record("w1", outbox.ACCEPTED, "execute", now_ms=1, deadline_ms=20_000)
    read = agents_read("w1")
    base = replace(
        read,
        sql="DELETE FROM t WHERE true",
        classification=Classification("allow", statements=("DELETE",), tables=(TABLE,)),
    )
    for job, handoff in [
        (base, rec),  # a write
        (replace(read, dry_run=True), rec),  # a dry run
        (replace(read, classification=replace(verdict(SQL), decision="approve")), rec),
        (read, replace(rec, job_id="other")),  # a record of another job
        (read, replace(rec, event=outbox.APPROVED)),
    ]:
        assert not directly_acceptable(job) or handoff != rec
        answer = rig.ex.accept(job, handoff)
        assert answer.outcome == NOT_CREATED and not answer.accepted
    assert rig.store.docs == {} and rig.wh.jobs == {} and rig.events.events == []


def test_a_transient_failure_after_the_create_is_the_jobs_not_a_new_job() -> None:
    rig = Rig()

    def fail(job_id: str, sql: str, **kwargs: Any) -> Any:
        raise Unavailable("BigQuery did not answer in time")

    rig.wh.run = fail  # type: ignore[method-assign]  # break the fake's run
    rec = outbox.new_record("t1", outbox.ACCEPTED, "execute", now_ms=1, deadline_ms=20_000)
    job = agents_read("t1")
    with pytest.raises(Unavailable):
        rig.ex.accept(job, rec)  # created: the failure is the job's (redelivered)
    stored = rig.store.get("t1")
    assert stored is not None and stored.state == "RUNNING" and stored.transient_failures == 1
    assert rig.store.outbox[rec.record_id]["done_ms"] is None  # due: the reconciler re-sends


def test_a_read_under_someone_elses_job_id_creates_no_bigquery_job_theirs_attaches_to() -> None:
    """Job-id squatting: the read starts on BigQuery before its create fails as a
    duplicate, so it must not run as the BigQuery job the holder's own job will."""
    rig = Rig()
    rig.gw.new_id = lambda: "held"
    held = replace(
        agents_read("held"),
        classification=replace(verdict(SQL), decision="approve"),
        state="PENDING_APPROVAL",
    )
    rig.store.create(held)  # awaiting an approver: it has not run on BigQuery yet
    with pytest.raises(Duplicate):
        rig.query(OTHER)
    assert rig.wh.jobs and warehouse_job_id("held") not in rig.wh.jobs
    # The holder's own read of that id would not attach to the squatter's either.
    mine = replace(held, owner=AGENT.email, created_ms=2)
    assert handed_over_job_id(mine) not in rig.wh.jobs


def test_a_redelivered_handed_over_read_attaches_to_its_own_bigquery_job() -> None:
    rig = Rig()
    rig.query()
    done = rig.store.get("job1")
    assert done is not None and done.warehouse_job_id == handed_over_job_id(done)
    assert list(rig.wh.jobs) == [done.warehouse_job_id]
    # A stale delivery of the finished job runs nothing more.
    assert rig.ex.run("job1") == "skipped" and list(rig.wh.jobs.values()) == [1]
