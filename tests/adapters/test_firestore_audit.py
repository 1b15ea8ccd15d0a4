"""The session record against the Firestore emulator: chain, concurrency, tampering, TTL,
and the checkpoint of every head it commits."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator

import pytest
from bqgate.adapters.firestore_audit import EVENTS, SESSIONS, FirestoreRecorder
from bqgate.anchors import Checkpoint
from bqgate.audit.chain import seal, session_doc_id
from bqgate.chain import GENESIS, ChainKey, Keyring
from bqgate.dev.stack import PROJECT, Stack
from bqgate.jobs import Job
from bqgate.verification import Finding, verify_chain
from google.cloud import firestore

pytestmark = pytest.mark.emulators

DAY = 86_400
KEY = ChainKey(b"adapter-test-chain-key-0123456789abc")
KEYS = Keyring([KEY])


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[firestore.Client]:
    # The stack fixture put FIRESTORE_EMULATOR_HOST in os.environ.
    c = firestore.Client(project=PROJECT)
    yield c
    c.close()


def recorder(client: firestore.Client, **kwargs: object) -> FirestoreRecorder:
    return FirestoreRecorder(client, key=KEY, retention_seconds=30 * DAY, record_rows=2, **kwargs)  # type: ignore[arg-type]


def job(session: str, job_id: str = "j1", owner: str = "agent@x.com") -> Job:
    return Job.new(
        job_id=job_id,
        project="demo-project",
        location="US",
        sql="SELECT 1 AS x",
        owner=owner,
        groups=["ai-coding-agents"],
        issuer="dev",
        session_id=session,
        labels={"session_id": session},
        now_ms=0,
    )


def sid() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def test_events_chain_and_head_track_the_tip(client: firestore.Client) -> None:
    rec = recorder(client)
    s = sid()
    rec.record(job(s), "request", {"request_kind": "jobs.query"})
    rec.record(job(s), "classification", {"decision": "allow", "reasons": []})
    rec.record(
        job(s), "result", {"schema": [{"name": "x"}], "rows": [[1], [2], [3]], "total_rows": 3}
    )
    events = rec.events(s)
    head = rec.head(s)
    assert head is not None
    assert [e.kind for e in events] == ["request", "classification", "result"]
    assert [e.event_id for e in events] == ["00000001", "00000002", "00000003"]
    assert events[0].prev_mac == GENESIS
    assert events[1].prev_mac == events[0].mac and events[2].prev_mac == events[1].mac
    assert (head.last_seq, head.last_mac) == (3, events[2].mac)
    assert head.principals == ("agent@x.com",) and head.issuer == "dev"
    assert head.counts == {"request": 1, "classification": 1, "result": 1}
    assert events[0].data["statement"] == "SELECT 1 AS x"
    assert events[2].data["rows"] == [[1], [2]]  # record_rows=2
    assert verify_chain(events, keys=KEYS, head=head, now_ms=0) is None


def test_every_doc_has_an_expire_at_timestamp_for_ttl(client: firestore.Client) -> None:
    now = 1_800_000_000.0
    rec = recorder(client, clock=lambda: now)
    s = sid()
    rec.record(job(s), "request", {})
    expected = dt.datetime.fromtimestamp(now + 30 * DAY, tz=dt.UTC)
    head_doc = client.collection(SESSIONS).document(s).get().to_dict() or {}
    event_doc = (
        client.collection(SESSIONS)
        .document(s)
        .collection(EVENTS)
        .document("00000001")
        .get()
        .to_dict()
        or {}
    )
    assert head_doc["expire_at"] == expected
    assert event_doc["expire_at"] == expected
    assert event_doc["expire_at_ms"] == int((now + 30 * DAY) * 1000)


@pytest.mark.parametrize("instances", [1, 20], ids=["one-recorder", "twenty-recorders"])
def test_twenty_concurrent_writers_make_one_unbroken_chain(
    client: firestore.Client, instances: int
) -> None:
    # twenty-recorders: no shared in-process lock, so only Firestore serialises them
    # (like twenty function instances); one-recorder: one instance, twenty threads.
    recs = [recorder(client) for _ in range(instances)]
    s = sid()
    start = threading.Barrier(20)
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            start.wait()
            recs[i % instances].record(job(s, job_id=f"j{i:02d}"), "request", {"n": i})
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    events = recs[0].events(s)
    head = recs[0].head(s)
    assert head is not None and head.last_seq == 20
    assert [e.seq for e in events] == list(range(1, 21))
    assert sorted(e.data["n"] for e in events) == list(range(20))
    assert len({e.prev_mac for e in events}) == 20  # no fork: every link used once
    assert verify_chain(events, keys=KEYS, head=head) is None


def test_a_writer_that_lost_a_race_starts_over_from_the_new_head(client: firestore.Client) -> None:
    other = recorder(client)
    s = sid()
    raced: list[bool] = []

    def clock() -> float:
        # Called between reading the head and committing: another writer gets in first.
        if not raced:
            raced.append(True)
            other.record(job(s, job_id="winner"), "request", {})
        return 1_800_000_000.0

    recorder(client, clock=clock).record(job(s, job_id="loser"), "request", {})
    events = other.events(s)
    assert [e.job_id for e in events] == ["winner", "loser"]
    assert verify_chain(events, keys=KEYS, head=other.head(s)) is None


def _event_ref(client: firestore.Client, s: str, seq: int) -> firestore.DocumentReference:
    ref: firestore.DocumentReference = (
        client.collection(SESSIONS).document(s).collection(EVENTS).document(f"{seq:08d}")
    )
    return ref


def _session_of_three(client: firestore.Client) -> tuple[FirestoreRecorder, str]:
    rec = recorder(client)
    s = sid()
    for kind in ("request", "classification", "blocked"):
        rec.record(job(s), kind, {"message": "x"})
    return rec, s


def _verify(rec: FirestoreRecorder, s: str) -> Finding | None:
    return verify_chain(rec.events(s), keys=KEYS, head=rec.head(s), now_ms=0)


def test_editing_an_event_names_that_event(client: firestore.Client) -> None:
    rec, s = _session_of_three(client)
    _event_ref(client, s, 2).update({"data": '{"decision":"allow","reasons":[]}'})
    broken = _verify(rec, s)
    assert broken is not None
    assert (broken.kind, broken.event_id) == ("edited", "00000002")


def test_resealing_an_edited_event_without_the_key_is_named_edited(
    client: firestore.Client,
) -> None:
    rec, s = _session_of_three(client)
    forged = seal(
        session_id=s,
        seq=1,
        kind="request",
        at_ms=1,
        job_id="j1",
        principal="agent@x.com",
        data={"statement": "SELECT 2"},
        prev=None,
        expire_at_ms=2,
        key=ChainKey(b"a Firestore writer's own key......"),
    )
    _event_ref(client, s, 1).set({**forged.to_doc(), "key_id": KEY.key_id})
    broken = _verify(rec, s)
    assert broken is not None and (broken.kind, broken.event_id) == ("edited", "00000001")


def test_deleting_events_is_detected(client: firestore.Client) -> None:
    rec, s = _session_of_three(client)
    _event_ref(client, s, 2).delete()
    broken = _verify(rec, s)
    assert broken is not None and broken.event_id == "00000003"
    assert "00000002 is missing" in broken.message
    _event_ref(client, s, 3).delete()
    broken = _verify(rec, s)
    assert broken is not None and "head records 3 events, 1 are stored" in broken.message


def test_unreadable_event_document_is_reported_not_raised(client: firestore.Client) -> None:
    rec, s = _session_of_three(client)
    _event_ref(client, s, 3).update({"data": "{not json", "seq": "three"})
    broken = _verify(rec, s)
    assert broken is not None and broken.event_id == "00000003"
    assert broken.message.startswith("malformed stored event")


def test_list_sessions_filters_by_principal_and_time(client: firestore.Client) -> None:
    t = [1_900_000_000.0]
    rec = recorder(client, clock=lambda: t[0])
    a, b = sid(), sid()
    who = f"{uuid.uuid4().hex[:8]}@x.com"
    rec.record(job(a, owner=who), "request", {})
    t[0] += 100
    rec.record(job(b, owner=who), "request", {})
    rec.record(job(b, owner="other@x.com"), "request", {})
    mine = rec.list_sessions(principal=who)
    assert [h.session_id for h in mine] == [b, a]
    assert rec.list_sessions(principal=who, since_ms=int(t[0] * 1000))[0].session_id == b
    assert len(rec.list_sessions(principal=who, since_ms=int(t[0] * 1000))) == 1
    assert b in [h.session_id for h in rec.list_sessions(since_ms=int(t[0] * 1000))]
    assert rec.list_sessions(principal="other@x.com", since_ms=int(t[0] * 1000))[0].principals == (
        who,
        "other@x.com",
    )


def test_session_ids_unfit_for_a_document_id_are_stored_under_a_digest(
    client: firestore.Client,
) -> None:
    rec = recorder(client)
    s = f"a/b/{uuid.uuid4().hex}"
    rec.record(job(s), "request", {})
    head = rec.head(s)
    assert head is not None and head.session_id == s
    assert [e.session_id for e in rec.events(s)] == [s]
    assert client.collection(SESSIONS).document(session_doc_id(s)).get().exists


def test_record_many_appends_in_order_in_one_commit_and_keeps_the_chain(
    client: firestore.Client,
) -> None:
    rec = recorder(client)
    s = sid()
    rec.record(job(s), "request", {"request_kind": "jobs.insert"})
    rec.record_many(
        job(s),
        [
            ("classification", {"decision": "allow", "reasons": []}),
            ("execution_finished", {"error": None}),
            ("result", {"schema": [], "rows": [], "total_rows": 0}),
        ],
    )
    threads = [
        threading.Thread(
            target=rec.record_many,
            args=(
                job(s, f"j{i}"),
                [
                    ("request", {"request_kind": "jobs.query"}),
                    ("classification", {"decision": "allow"}),
                ],
            ),
        )
        for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = rec.events(s)
    assert [e.kind for e in events[:4]] == [
        "request",
        "classification",
        "execution_finished",
        "result",
    ]
    assert len(events) == 4 + 12
    # Each pair stays adjacent: one commit, one link after the other.
    for first, second in zip(events[4::2], events[5::2], strict=True):
        assert (first.kind, second.kind) == ("request", "classification")
        assert first.job_id == second.job_id
    assert verify_chain(events, keys=KEYS, head=rec.head(s), now_ms=0) is None


def test_every_commit_is_checkpointed_with_its_new_head(client: firestore.Client) -> None:
    seen: list[Checkpoint] = []
    rec = recorder(client, checkpoint=seen.append)
    s = sid()
    rec.record(job(s), "request", {})
    rec.record_many(job(s), [("classification", {"decision": "allow"}), ("blocked", {})])
    head = rec.head(s)
    assert head is not None and head.label == s
    assert [(c.session_id, c.seq) for c in seen] == [(s, 1), (s, 3)]  # one per commit
    last = seen[-1]
    assert (last.mac, last.principal, last.issuer, last.label) == (
        head.last_mac,
        "agent@x.com",
        "dev",
        s,
    )
    assert last.expire_at_ms == head.last_expire_at_ms


def test_a_failing_checkpoint_does_not_fail_the_append(client: firestore.Client) -> None:
    def broken(cp: Checkpoint) -> None:
        raise OSError("the bucket is unreachable")

    rec = recorder(client, checkpoint=broken)
    s = sid()
    rec.record(job(s), "request", {})
    assert [e.kind for e in rec.events(s)] == ["request"]


def test_a_reader_without_a_key_cannot_append(client: firestore.Client) -> None:
    reader = FirestoreRecorder(client, retention_seconds=0, record_rows=0)
    with pytest.raises(RuntimeError, match="no chain key"):
        reader.record(job(sid()), "request", {})
