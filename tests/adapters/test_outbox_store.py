"""The job store's outbox, quota counter and approval queries against the Firestore emulator."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace

import pytest
from bqgate import outbox
from bqgate.adapters.firestore_store import FirestoreJobStore
from bqgate.classification import Classification
from bqgate.dev.stack import PROJECT, Stack
from bqgate.errors import Duplicate
from bqgate.jobs import DONE, PENDING, PENDING_APPROVAL, RUNNING, Job
from bqgate.ports import OpenRequestQuota, PendingCursor, QuotaFull
from google.cloud import firestore

pytestmark = pytest.mark.emulators


@pytest.fixture()
def store(stack: Stack) -> FirestoreJobStore:
    # Own collections: these tests count and order documents, other tests' jobs would mix in.
    tag = uuid.uuid4().hex[:8]
    return FirestoreJobStore(
        firestore.Client(project=PROJECT),
        collection=f"jobs-{tag}",
        outbox_collection=f"outbox-{tag}",
        quota_collection=f"quota-{tag}",
    )


def now_ms() -> int:
    return int(time.time() * 1000)


def pending(
    job_id: str,
    *,
    owner: str = "agent@x",
    created_ms: int,
    expire_at_ms: int,
    statement_hash: str = "h",
) -> Job:
    return Job.new(
        job_id=job_id,
        project=PROJECT,
        location="US",
        sql="SELECT 1",
        owner=owner,
        now_ms=created_ms,
        state=PENDING_APPROVAL,
        expire_at_ms=expire_at_ms,
        bytes_estimate=1,
        classification=Classification(statement_hash=statement_hash),
    )


def test_a_job_and_its_hand_off_are_one_commit(store: FirestoreJobStore) -> None:
    t = now_ms()
    job = Job.new(
        job_id="j-" + uuid.uuid4().hex,
        project=PROJECT,
        location="US",
        sql="SELECT 1",
        owner="a@x",
        now_ms=t,
    )
    rec = outbox.new_record(job.job_id, outbox.ACCEPTED, "execute", now_ms=t, deadline_ms=1000)
    store.create(job, dispatch=[rec])
    assert store.outbox_of(job.job_id) == [rec]
    assert rec.record_id not in [r.record_id for r in store.outbox_due(now_ms=t, limit=50)]
    assert rec.record_id in [r.record_id for r in store.outbox_due(now_ms=t + 1000, limit=50)]
    # The commit is atomic: a duplicate job id writes no second record either.
    other = outbox.new_record(job.job_id, outbox.APPROVED, "execute", now_ms=t, deadline_ms=1)
    with pytest.raises(Duplicate):
        store.create(job, dispatch=[other])
    assert store.outbox_of(job.job_id) == [rec]
    sent = store.outbox_transition(
        rec.record_id, lambda r: outbox.published(r, t + 5, retry_ms=1000)
    )
    assert sent is not None and sent.finished and sent.sent_ms == t + 5
    assert rec.record_id not in [r.record_id for r in store.outbox_due(now_ms=t + 10**9, limit=500)]
    assert store.outbox_transition("no-such~record", lambda r: replace(r, due_ms=1)) is None


def test_a_transition_writes_its_records_only_when_it_changes_the_job(
    store: FirestoreJobStore,
) -> None:
    t = now_ms()
    job = pending("p-" + uuid.uuid4().hex, created_ms=t, expire_at_ms=t + 60_000)
    store.create(job)

    def records(j: Job) -> list[outbox.OutboxRecord]:
        return [outbox.new_record(j.job_id, outbox.APPROVED, "execute", now_ms=t, deadline_ms=10)]

    store.transition(job.job_id, lambda j: None, dispatch=records)
    assert store.outbox_of(job.job_id) == []
    store.transition(job.job_id, lambda j: replace(j, state=PENDING), dispatch=records)
    assert [r.event for r in store.outbox_of(job.job_id)] == [outbox.APPROVED]


def test_pending_approvals_newest_first_paged_without_expired_ones(
    store: FirestoreJobStore,
) -> None:
    t = now_ms()
    live = [
        pending(f"{i:03d}-live", created_ms=t - 1000 + i, expire_at_ms=t + 60_000) for i in range(7)
    ]
    expired = [
        pending(f"{i:03d}-old", created_ms=t - 500 + i, expire_at_ms=t - 1) for i in range(3)
    ]
    for job in [*live, *expired]:
        store.create(job)
    done = pending("000-done", created_ms=t, expire_at_ms=t + 60_000)
    done.state = DONE
    store.create(done)
    seen, after = [], None
    while True:
        page = store.pending_approvals(now_ms=t, limit=3, after=after)
        seen += [j.job_id for j in page]
        if len(page) < 3:
            break
        last = page[-1]
        after = PendingCursor(last.created_ms, last.expire_at_ms or 0, last.job_id)
    assert seen == [j.job_id for j in reversed(live)]
    assert {j.job_id for j in store.expired_approvals(now_ms=t, limit=50)} == {
        j.job_id for j in expired
    }
    similar = store.similar_pending(owner="agent@x", statement_hash="h", now_ms=t, limit=50)
    assert {j.job_id for j in similar} == {j.job_id for j in live}


def test_stale_running_jobs(store: FirestoreJobStore) -> None:
    t = now_ms()
    for job_id, started in (("old", t - 10_000), ("new", t)):
        store.create(
            Job.new(
                job_id=job_id,
                project=PROJECT,
                location="US",
                sql="",
                owner="a",
                now_ms=started,
                state=RUNNING,
                started_ms=started,
            )
        )
    assert [j.job_id for j in store.stale_running(started_before_ms=t - 5000, limit=10)] == ["old"]


def test_concurrent_requests_of_one_principal_never_overshoot_the_quota(
    store: FirestoreJobStore,
) -> None:
    t = now_ms()
    admitted, refused = [], []
    start = threading.Barrier(12)

    def submit(i: int) -> None:
        job = pending(f"q{i:02d}", created_ms=t + i, expire_at_ms=t + 60_000)
        start.wait()
        try:
            store.create(job, quota=OpenRequestQuota("agent@x", 4, t))
            admitted.append(job.job_id)
        except QuotaFull as full:
            refused.append((job.job_id, len(full.open_job_ids)))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(12)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(admitted) == 4 and len(refused) == 8
    assert all(count == 4 for _, count in refused)
    # A decided request gives its slot back; so does an expired one, without any sweep.
    store.transition(admitted[0], lambda j: replace(j, state=PENDING))
    store.transition(admitted[1], lambda j: replace(j, expire_at_ms=t - 1))
    for job_id in ("r1", "r2"):
        store.create(
            pending(job_id, created_ms=t, expire_at_ms=t + 60_000),
            quota=OpenRequestQuota("agent@x", 4, t),
        )
    with pytest.raises(QuotaFull):
        store.create(
            pending("r3", created_ms=t, expire_at_ms=t + 60_000),
            quota=OpenRequestQuota("agent@x", 4, t),
        )
    assert store.get("r3") is None  # refused: nothing written


def test_a_transition_into_awaiting_approval_counts_against_the_quota(
    store: FirestoreJobStore,
) -> None:
    t = now_ms()
    store.create(
        pending("open", created_ms=t, expire_at_ms=t + 60_000),
        quota=OpenRequestQuota("agent@x", 1, t),
    )
    store.create(
        Job.new(job_id="costly", project=PROJECT, location="US", sql="", owner="agent@x", now_ms=t)
    )
    with pytest.raises(QuotaFull):
        store.transition(
            "costly",
            lambda j: replace(j, state=PENDING_APPROVAL, expire_at_ms=t + 60000),
            quota=OpenRequestQuota("agent@x", 1, t),
        )
    assert store.get("costly").state == PENDING  # type: ignore[union-attr]
