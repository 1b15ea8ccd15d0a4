"""A read starts on BigQuery while its claim commits; anything that may write is claimed
first. Over fakes: the order of what reaches the store and the warehouse, and what a job
that ended meanwhile keeps."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from bqgate.classification import Classification
from bqgate.errors import InvalidQuery, Stopped, Unavailable, stored
from bqgate.jobs import DONE, PENDING, RUNNING, Job, warehouse_job_id
from bqgate.policy import load_policy
from bqgate.service.executor import Executor
from fakes import FakeWarehouse, MemoryJobStore, MemoryQueue

POLICY = load_policy("policies/default.yaml")
EVENTS = [{"name": "name", "type": "STRING"}, {"name": "n", "type": "INTEGER"}]
READ = "SELECT name, COUNT(*) AS n FROM `demo-project.analytics.events` GROUP BY name"
WRITE = "DELETE FROM `demo-project.analytics.events` WHERE event_id < 0"


class Recorder:
    """The session record's events, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def record(self, job: Job, kind: str, data: Mapping[str, Any]) -> None:
        self.events.append(kind)


class Warehouse(FakeWarehouse):
    """Notes the job's state each time a statement starts; ``during`` runs meanwhile, and
    ``error`` is raised instead of an answer."""

    def __init__(self, store: MemoryJobStore) -> None:
        super().__init__(EVENTS, [["click", "3"], ["view", "5"]])
        self.store = store
        self.seen: list[str | None] = []
        self.during: Any = None
        self.error: Exception | None = None

    def run(self, job_id: str, sql: str, **kwargs: Any) -> Any:
        job = self.store.get("j1")
        self.seen.append(job.state if job else None)
        if self.during is not None:
            self.during()
        if self.error is not None:
            raise self.error
        return super().run(job_id, sql, **kwargs)


def make() -> tuple[Executor, MemoryJobStore, Warehouse, Recorder]:
    store, recorder = MemoryJobStore(), Recorder()
    wh = Warehouse(store)
    ex = Executor(
        store=store,
        warehouse=wh,
        policy=POLICY,
        hmac_key=b"k",
        queue=MemoryQueue(),
        recorder=recorder,
    )
    return ex, store, wh, recorder


def new_job(sql: str, kinds: tuple[str, ...], written: tuple[str, ...] = ()) -> Job:
    job = Job.new(
        job_id="j1",
        project="demo-project",
        location="US",
        owner="agent@x",
        sql=sql,
        now_ms=1,
    )
    return replace(
        job,
        classification=Classification(
            decision="allow",
            statements=kinds,
            tables=("demo-project.analytics.events",),
            written_tables=written,
        ),
    )


def claims_wait_for(store: MemoryJobStore, event: threading.Event) -> None:
    """Hold every claim (a transition from the executor's claim threads) until ``event``."""
    transition = store.transition

    def held(job_id: str, change: Any, **kw: Any) -> Any:
        if threading.current_thread().name.startswith("bqgate-claim"):
            assert event.wait(5), "the read waited for its claim"
        return transition(job_id, change, **kw)

    store.transition = held  # type: ignore[method-assign]


def test_a_read_is_kept_only_once_its_claim_committed_and_the_record_keeps_the_order() -> None:
    ex, store, wh, recorder = make()
    store.create(new_job(READ, ("SELECT",)))
    # Hold the claim back until the read has started: the read does not wait for it.
    started = threading.Event()
    claims_wait_for(store, started)
    wh.during = started.set
    assert ex.run("j1") == "done"
    done = store.get("j1")
    assert done is not None and done.state == DONE and done.total_rows == 2
    assert done.executions == 1 and done.warehouse_job_id == warehouse_job_id("j1")
    assert recorder.events == ["execution_started", "execution_finished", "result"]


def test_a_read_whose_job_was_cancelled_meanwhile_keeps_the_cancel_and_drops_its_rows() -> None:
    ex, store, wh, recorder = make()
    store.create(new_job(READ, ("SELECT",)))

    def cancel() -> None:  # the owner's jobs.cancel lands while the read runs
        store.transition(
            "j1",
            lambda j: replace(
                j, state=DONE, ended_ms=2, error=stored(Stopped("Job cancelled by its owner"))
            ),
        )

    cancelled = threading.Event()
    claims_wait_for(store, cancelled)  # the cancel lands before the claim commits

    def during() -> None:
        cancel()
        cancelled.set()

    wh.during = during
    assert ex.run("j1") == "skipped"
    assert wh.seen == [PENDING]  # it did start (a read), on a job not yet claimed
    done = store.get("j1")
    assert done is not None and done.state == DONE
    assert done.error is not None and done.error["reason"] == "stopped"
    assert done.total_rows is None and not done.page_starts
    assert store.pages == {}
    assert "result" not in recorder.events


def test_a_write_is_claimed_before_it_starts() -> None:
    ex, store, wh, _ = make()
    store.create(new_job(WRITE, ("DELETE",), ("demo-project.analytics.events",)))
    ex.run("j1")
    # The blast-radius count and the DELETE itself: the DELETE starts on a claimed job.
    assert wh.seen[-1] == RUNNING
    assert store.get("j1").executions == 1  # type: ignore[union-attr]


def test_a_read_that_bigquery_rejects_ends_with_the_error_after_its_claim() -> None:
    ex, store, wh, recorder = make()
    store.create(new_job(READ, ("SELECT",)))
    wh.error = InvalidQuery("Syntax error: Unexpected keyword")
    assert ex.run("j1") == "failed"
    done = store.get("j1")
    assert done is not None and done.state == DONE and done.error is not None
    assert done.error["reason"] == "invalidQuery" and done.executions == 1
    assert recorder.events == ["execution_started", "execution_finished"]


def test_a_read_on_a_transient_outage_is_redelivered_after_its_claim() -> None:
    ex, store, wh, _ = make()
    store.create(new_job(READ, ("SELECT",)))
    wh.error = Unavailable("BigQuery is unavailable")
    with pytest.raises(Unavailable):
        ex.run("j1")
    job = store.get("j1")
    assert job is not None and job.state == RUNNING and job.transient_failures == 1
    wh.error = None
    assert ex.run("j1") == "done"  # the redelivery attaches to the same BigQuery job id
    assert store.get("j1").executions == 2  # type: ignore[union-attr]
    assert len(wh.seen) == 2  # two attempts, one BigQuery job id
    assert wh.jobs == {warehouse_job_id("j1"): 1}
