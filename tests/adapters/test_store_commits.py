"""One commit per state change, against the Firestore emulator: a job write and the session
events about it (and an inline result's pages, and a finished hand-off) are written
together or not at all; what a process remembers (a job, a session head, a hint from the
other end of the direct call) only ever saves a read, never changes what is written."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
from bqgate import outbox
from bqgate.adapters.firestore_audit import FirestoreRecorder
from bqgate.adapters.firestore_store import FirestoreJobStore
from bqgate.chain import ChainKey, Keyring
from bqgate.dev.stack import PROJECT, Stack
from bqgate.errors import Duplicate
from bqgate.jobs import DONE, PENDING, RUNNING, Job
from bqgate.ports import EventItems, Page, Recording
from bqgate.verification import verify_chain
from google.cloud import firestore

pytestmark = pytest.mark.emulators

KEY = ChainKey(b"store-commit-test-chain-key-0123456789")
KEYS = Keyring([KEY])


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[firestore.Client]:
    c = firestore.Client(project=PROJECT)
    yield c
    c.close()


def pair(client: firestore.Client) -> tuple[FirestoreJobStore, FirestoreRecorder]:
    """A store and a recorder as one process holds them (own collections)."""
    tag = uuid.uuid4().hex[:8]
    store = FirestoreJobStore(
        client,
        collection=f"jobs-{tag}",
        outbox_collection=f"outbox-{tag}",
        quota_collection=f"quota-{tag}",
    )
    rec = FirestoreRecorder(
        client,
        key=KEY,
        retention_seconds=86_400,
        record_rows=5,
        collection=f"sessions-{tag}",
    )
    return store, rec


def other_process(
    client: firestore.Client, store: FirestoreJobStore, rec: FirestoreRecorder
) -> tuple[FirestoreJobStore, FirestoreRecorder]:
    """The same collections, as another process (nothing remembered) sees them."""
    return (
        FirestoreJobStore(
            client,
            collection=store.jobs.id,
            outbox_collection=store.outbox.id,
            quota_collection=store.quotas.id,
        ),
        FirestoreRecorder(
            client, key=KEY, retention_seconds=86_400, record_rows=5, collection=rec.sessions.id
        ),
    )


def new_job(session: str) -> Job:
    return Job.new(
        job_id="j-" + uuid.uuid4().hex,
        project=PROJECT,
        location="US",
        sql="SELECT 1 AS x",
        owner="agent@x.com",
        issuer="dev",
        session_id=session,
        now_ms=1,
    )


def kinds(rec: FirestoreRecorder, session: str) -> list[str]:
    return [e.kind for e in rec.events(session)]


def chain_holds(rec: FirestoreRecorder, session: str) -> bool:
    return verify_chain(rec.events(session), keys=KEYS, head=rec.head(session), now_ms=0) is None


def test_a_create_and_its_events_are_one_commit(client: firestore.Client) -> None:
    store, rec = pair(client)
    s = "s-" + uuid.uuid4().hex[:8]
    job = new_job(s)
    handoff = outbox.new_record(job.job_id, outbox.ACCEPTED, "execute", now_ms=1, deadline_ms=9)
    events: EventItems = [
        ("request", {"request_kind": "jobs.query"}),
        ("classification", {"decision": "allow"}),
    ]
    store.create(job, dispatch=[handoff], record=Recording.of(rec, job, events))
    assert kinds(rec, s) == ["request", "classification"] and chain_holds(rec, s)
    assert store.outbox_of(job.job_id) == [handoff]
    # A duplicate fails its whole commit: no second job, and no events with it.
    with pytest.raises(Duplicate):
        store.create(job, record=Recording.of(rec, job, [("request", {})]))
    assert kinds(rec, s) == ["request", "classification"] and chain_holds(rec, s)


def test_a_transition_writes_its_events_pages_and_finished_hand_off_together(
    client: firestore.Client,
) -> None:
    store, rec = pair(client)
    s = "s-" + uuid.uuid4().hex[:8]
    job = new_job(s)
    handoff = outbox.new_record(job.job_id, outbox.ACCEPTED, "execute", now_ms=1, deadline_ms=9)
    store.create(job, dispatch=[handoff], record=Recording.of(rec, job, [("request", {})]))
    rows = [["1"], ["2"], ["3"]]
    pages = [Page(0, 0, json.dumps(rows[:2])), Page(1, 2, json.dumps(rows[2:]))]
    done = store.transition(
        job.job_id,
        lambda j: replace(j, state=DONE, total_rows=3, page_starts=[0, 2], schema=[]),
        record=Recording(
            rec, job, lambda j: [("result", {"rows": rows, "total_rows": j.total_rows})]
        ),
        pages=pages,
        complete=[handoff.record_id],
    ).after
    assert done.state == DONE
    assert store.get_pages(job.job_id, 0, 1) == [(0, pages[0].rows_json), (2, pages[1].rows_json)]
    (finished,) = store.outbox_of(job.job_id)
    assert finished.finished and finished.done_ms is not None
    assert kinds(rec, s) == ["request", "result"] and chain_holds(rec, s)
    assert rec.events(s)[-1].data["total_rows"] == 3
    # A change that writes nothing records nothing.
    store.transition(job.job_id, lambda j: None, record=Recording.of(rec, job, [("result", {})]))
    assert kinds(rec, s) == ["request", "result"]


def test_a_hand_off_to_finish_that_is_gone_does_not_fail_the_change(
    client: firestore.Client,
) -> None:
    store, _ = pair(client)
    job = new_job("s-" + uuid.uuid4().hex[:8])
    store.create(job)  # no outbox record
    done = store.transition(
        job.job_id,
        lambda j: replace(j, state=DONE),
        complete=[outbox.record_id(job.job_id, "accepted")],
    ).after
    assert done.state == DONE and store.outbox_of(job.job_id) == []


def test_what_a_process_remembers_never_decides_what_is_written(
    client: firestore.Client,
) -> None:
    """The job and the head one process last wrote are stale after another process writes:
    the next change still sees the stored job, and the chain stays unbroken."""
    store, rec = pair(client)
    s = "s-" + uuid.uuid4().hex[:8]
    job = new_job(s)
    store.create(job, record=Recording.of(rec, job, [("request", {})]))
    store.transition(
        job.job_id,
        lambda j: replace(j, state=RUNNING),
        record=Recording.of(rec, job, [("execution_started", {})]),
    )
    other_store, other_rec = other_process(client, store, rec)
    other_store.transition(
        job.job_id,
        lambda j: replace(j, executions=7),
        record=Recording.of(other_rec, job, [("execution_started", {"attempt": 7})]),
    )
    seen: list[int] = []

    def end(j: Job) -> Job | None:
        seen.append(j.executions)
        return replace(j, state=DONE)

    done = store.transition(
        job.job_id, end, record=Recording.of(rec, job, [("execution_finished", {})])
    ).after
    assert seen[-1] == 7 and done.executions == 7 and done.state == DONE
    assert kinds(rec, s) == [
        "request",
        "execution_started",
        "execution_started",
        "execution_finished",
    ]
    assert chain_holds(rec, s)
    # A remembered job that the change leaves alone is confirmed against the store.
    other_store.transition(job.job_id, lambda j: replace(j, state=PENDING))  # (not a real move)
    assert store.transition(job.job_id, lambda j: None).after.state == PENDING


def test_a_head_handed_over_saves_the_read_and_a_stale_one_costs_only_a_retry(
    client: firestore.Client,
) -> None:
    store, rec = pair(client)
    s = "s-" + uuid.uuid4().hex[:8]
    first = new_job(s)
    store.create(first, record=Recording.of(rec, first, [("request", {})]))
    hint = rec.hint(s)
    assert hint is not None
    # The other end of the direct call learns the head and appends without reading it.
    other_store, other_rec = other_process(client, store, rec)
    other_rec.learn(hint)
    assert other_rec.known_head(s) == rec.known_head(s)
    second = new_job(s)
    other_store.create(second, record=Recording.of(other_rec, second, [("request", {})]))
    # The first process's head is stale now: its next create retries and still chains.
    third = new_job(s)
    store.create(third, record=Recording.of(rec, third, [("request", {})]))
    assert kinds(rec, s) == ["request", "request", "request"] and chain_holds(rec, s)
    assert [e.job_id for e in rec.events(s)] == [first.job_id, second.job_id, third.job_id]
    # Garbage is no hint.
    other_rec.learn("not-a-hint")
    other_rec.learn(None)
