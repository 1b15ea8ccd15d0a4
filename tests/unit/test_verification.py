"""Verification of the session record (pure): the MAC chain, the checkpoints kept outside
Firestore, and every way someone who can write Firestore (but holds no chain key) could try
to change history: edit and re-hash, truncate, delete, rebuild, forge a checkpoint. Also the
checkpoint sinks and the batching checkpointer, with in-memory and folder sinks."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from bqgate.adapters.anchor_sinks import Checkpointer, FolderSink, LogSink
from bqgate.anchors import AnchorIndex, Checkpoint, encode_line, parse_line, read_text
from bqgate.audit.chain import Event, SessionHead, canonical_json, event_mac, seal
from bqgate.chain import GENESIS, ChainKey, ChainKeyError, Keyring, load_or_create_dev_key
from bqgate.verification import expired_prefix, verify, verify_chain, verify_session
from hypothesis import given, settings
from hypothesis import strategies as st

KEY = ChainKey(b"unit-test-chain-key-0123456789abcdef")
KEYS = Keyring([KEY])
NOW = 5_000


def chain(n: int, session: str = "s", key: ChainKey = KEY, expire: int = 10_000) -> list[Event]:
    out: list[Event] = []
    for i in range(1, n + 1):
        out.append(
            seal(
                session_id=session,
                seq=i,
                kind="request",
                at_ms=1000 + i,
                job_id=f"j{i}",
                principal="a@x",
                data={"i": i, "f": i / 3},
                prev=out[-1] if out else None,
                expire_at_ms=expire + i,
                key=key,
            )
        )
    return out


def head_of(events: Sequence[Event]) -> SessionHead:
    head = SessionHead(events[0].session_id)
    for e in events:
        head = head.advanced(e, "dev")
    return head


def checkpoint(e: Event) -> Checkpoint:
    return Checkpoint(e.session_id, e.seq, e.mac, e.at_ms, e.expire_at_ms, e.principal, "dev")


def sha_rehash(events: list[Event], start: int) -> list[Event]:
    """What an insider could do before: recompute every link from ``start`` on, here with
    plain SHA-256 (the old scheme) since the chain key is not theirs."""
    out = list(events[:start])
    for e in events[start:]:
        prev = out[-1].mac if out else GENESIS
        e = replace(e, prev_mac=prev)
        text = prev + "\n" + canonical_json(e.body())
        out.append(replace(e, mac=hashlib.sha256(text.encode()).hexdigest()))
    return out


# --------------------------------------------------------------------------- the chain


def test_an_intact_chain_verifies_with_its_head() -> None:
    events = chain(5)
    assert verify_chain(events, keys=KEYS, head=head_of(events), now_ms=0) is None
    assert verify_chain([], keys=KEYS, head=None) is None


FIELDS = [
    "session_id",
    "seq",
    "kind",
    "at_ms",
    "job_id",
    "principal",
    "data",
    "prev_mac",
    "expire_at_ms",
    "prev_expire_at_ms",
    "mac",
    "key_id",
]


@settings(max_examples=80)
@given(st.integers(min_value=0, max_value=5), st.sampled_from(FIELDS))
def test_editing_any_field_of_any_event_names_that_event(index: int, name: str) -> None:
    events = chain(6)
    new_value: Any = {
        "session_id": "other",
        "seq": 99,
        "kind": "result",
        "at_ms": 7,
        "job_id": "jX",
        "principal": "mallory@x",
        "data": {"i": -1},
        "prev_mac": "f" * 64,
        "expire_at_ms": 1,
        "prev_expire_at_ms": 3,
        "mac": "e" * 64,
        "key_id": "0" * 16,
    }[name]
    events[index] = replace(events[index], **{name: new_value})
    found = verify_chain(events, keys=KEYS, head=head_of(chain(6)), now_ms=0)
    assert found is not None
    assert found.event_id == f"{index + 1:08d}", found


@pytest.mark.parametrize("start", [0, 2, 4])
def test_an_edited_and_rehashed_event_is_named_edited(start: int) -> None:
    """Editing event ``start`` and recomputing every later link and the head no longer
    passes: nobody without the chain key can compute a valid MAC."""
    events = chain(6)
    events[start] = replace(events[start], data={"i": "edited"})
    forged = sha_rehash(events, start)
    found = verify_chain(forged, keys=KEYS, head=head_of(forged), now_ms=0)
    assert found is not None and found.kind == "edited"
    assert found.event_id == f"{start + 1:08d}"
    report = verify_session("s", head_of(forged), forged, keys=KEYS, now_ms=NOW)
    assert (report.status, report.ok) == ("edited", False)
    assert report.describe().startswith(
        f"BROKEN  session s: edited: event {start + 1:08d}: its content does not match its MAC"
    )


def test_a_chain_rebuilt_with_another_key_is_caught() -> None:
    mallory = ChainKey(b"mallory's own key, 32 bytes long!!")
    forged = chain(4, key=mallory)
    found = verify_chain(forged, keys=KEYS, head=head_of(forged))
    assert found is not None and found.kind == "broken" and found.event_id == "00000001"
    assert "does not hold" in found.message
    # ... and pretending to be the real key only moves the failure to the MAC check
    pretend = [replace(e, key_id=KEY.key_id) for e in forged]
    found = verify_chain(pretend, keys=KEYS)
    assert found is not None and found.kind == "edited"


@pytest.mark.parametrize(
    ("mutate", "event_id", "kind", "needle"),
    [
        (lambda ev: [ev[0], ev[2], ev[3]], "00000003", "broken", "00000002 is missing"),
        (
            lambda ev: [ev[1], ev[0], ev[2], ev[3]],
            "00000002",
            "truncated",
            "missing before it (not expired)",
        ),
        (
            lambda ev: [ev[0], ev[1], ev[1], ev[2], ev[3]],
            "00000002",
            "broken",
            "reordered or duplicated",
        ),
        (lambda ev: ev[:3], "00000004", "truncated", "head records 4 events, 3 are stored"),
        (
            lambda ev: [
                *ev,
                seal(
                    session_id="s",
                    seq=5,
                    kind="k",
                    at_ms=9,
                    job_id="j",
                    principal="p",
                    data={},
                    prev=ev[3],
                    expire_at_ms=9,
                    key=KEY,
                ),
            ],
            "00000005",
            "broken",
            "records only 4 events",
        ),
        (
            lambda ev: [ev[0], replace(ev[1], event_id="00000009"), *ev[2:]],
            "00000009",
            "broken",
            "stored as",
        ),
    ],
    ids=["gap", "reordered", "duplicated", "truncated", "appended-behind-head", "moved"],
)
def test_missing_moved_and_extra_events_are_detected(
    mutate: Any, event_id: str, kind: str, needle: str
) -> None:
    events = chain(4)
    found = verify_chain(mutate(events), keys=KEYS, head=head_of(events), now_ms=0)
    assert found is not None
    assert (found.event_id, found.kind) == (event_id, kind), found
    assert needle in found.message


def test_events_of_another_session_do_not_verify() -> None:
    events = chain(2)
    other = seal(
        session_id="t",
        seq=3,
        kind="k",
        at_ms=1,
        job_id="j",
        principal="p",
        data={},
        prev=events[1],
        expire_at_ms=9,
        key=KEY,
    )
    found = verify_chain([*events, other], keys=KEYS, now_ms=0)
    assert found is not None and "belongs to session 't'" in found.message


def test_a_prefix_removed_by_retention_is_not_a_break_but_an_early_deletion_is() -> None:
    events = chain(5)  # event i expires at 10_000 + i
    tail = events[2:]
    assert expired_prefix(tail, now_ms=10_002) == 2
    assert verify_chain(tail, keys=KEYS, head=head_of(events), now_ms=10_002) is None
    found = verify_chain(tail, keys=KEYS, head=head_of(events), now_ms=10_001)
    assert found is not None and found.event_id == "00000003"
    assert "events 1 to 2 are missing before it (not expired)" in found.message


def test_a_malformed_stored_event_is_reported_not_raised() -> None:
    events = chain(2)
    doc = {**events[1].to_doc(), "data": "{truncated"}
    stored = [events[0], Event.from_doc("00000002", doc)]
    found = verify_chain(stored, keys=KEYS, now_ms=0)
    assert found is not None and found.event_id == "00000002"
    assert "data is not a JSON object" in found.message


# --------------------------------------------------------------------------- checkpoints


def test_truncation_with_the_head_rewound_is_caught_by_the_checkpoint() -> None:
    events = chain(6)
    anchors = [checkpoint(e) for e in events]
    kept = events[:4]
    report = verify_session("s", head_of(kept), kept, keys=KEYS, anchors=anchors, now_ms=NOW)
    assert report.status == "truncated" and not report.ok
    (finding,) = report.findings
    assert finding.event_id == "00000005"
    assert "events 5 to 6 are missing at the end" in finding.message
    assert "names 6 events, 4 are stored" in finding.message
    # the head alone (rewound) would have said nothing
    assert verify_chain(kept, keys=KEYS, head=head_of(kept)) is None


def test_a_deleted_session_is_named_deleted() -> None:
    events = chain(3, session="gone")
    index = AnchorIndex.build(checkpoint(e) for e in events)
    stored = {"kept": (head_of(chain(2, "kept")), chain(2, "kept"))}
    ids = sorted(set(stored) | set(index.sessions()))
    report = verify(ids, lambda s: stored.get(s, (None, [])), keys=KEYS, anchors=index, now_ms=NOW)
    by = {r.session_id: r for r in report.sessions}
    assert by["gone"].status == "deleted" and by["kept"].status == "intact"
    assert (
        by["gone"]
        .describe()
        .startswith("BROKEN  session gone: deleted: the session is gone: a checkpoint of")
    )
    assert "names 3 events of a@x" in by["gone"].findings[0].message
    assert not report.ok
    assert report.to_dict()["sessions"][0]["status"] == "deleted"


def test_a_session_rebuilt_with_the_chain_key_is_caught_by_its_checkpoints() -> None:
    """Even someone holding the key (which Firestore writers do not) cannot rewrite history
    that was checkpointed: the event at a checkpointed position has another MAC."""
    events = chain(5)
    anchors = [checkpoint(e) for e in events]
    rebuilt = chain(2) + [
        seal(
            session_id="s",
            seq=i,
            kind="request",
            at_ms=1000 + i,
            job_id=f"j{i}",
            principal="a@x",
            data={"i": "other"},
            prev=None,
            expire_at_ms=10_000 + i,
            key=KEY,
            prev_mac=None,
        )
        for i in range(3, 6)
    ]
    for i in range(2, 5):  # relink the rebuilt tail correctly
        rebuilt[i] = replace(rebuilt[i], prev_mac=rebuilt[i - 1].mac)
        rebuilt[i] = replace(rebuilt[i], mac=event_mac(KEY, rebuilt[i]))
    assert verify_chain(rebuilt, keys=KEYS, head=head_of(rebuilt)) is None
    report = verify_session("s", head_of(rebuilt), rebuilt, keys=KEYS, anchors=anchors, now_ms=NOW)
    assert report.status == "rewritten" and report.findings[0].event_id == "00000003"


def test_un_checkpointed_events_are_reported_and_fail_only_when_stale() -> None:
    events = chain(5)
    anchors = [checkpoint(e) for e in events[:3]]
    report = verify_session("s", head_of(events), events, keys=KEYS, anchors=anchors, now_ms=NOW)
    assert report.ok and report.unanchored == (4, 5) and report.anchored_seq == 3
    assert report.describe(NOW) == (
        "ok      session s: 5 events, chain intact, checkpointed through event 3, "
        "events 4-5 not yet checkpointed, oldest written 4.0 s ago"
    )
    # truncating an un-checkpointed tail is the window the design admits: it verifies
    kept = events[:3]
    assert verify_session("s", head_of(kept), kept, keys=KEYS, anchors=anchors, now_ms=NOW).ok
    stale = verify_session(
        "s", head_of(events), events, keys=KEYS, anchors=anchors, now_ms=NOW, stale_after_ms=1000
    )
    assert stale.status == "unanchored" and stale.findings[0].event_id == "00000004"


def test_expired_checkpoints_and_sessions_are_retention_not_tampering() -> None:
    events = chain(3, expire=100)  # expire at 101..103
    anchors = [checkpoint(e) for e in events]
    gone = verify_session("s", None, [], keys=KEYS, anchors=anchors, now_ms=200)
    assert (gone.status, gone.ok) == ("expired", True)
    head_only = verify_session("s", head_of(events), [], keys=KEYS, anchors=anchors, now_ms=200)
    assert head_only.status == "expired"
    early = verify_session("s", None, [], keys=KEYS, anchors=anchors, now_ms=102)
    assert early.status == "deleted"


def test_checkpoint_lines_are_sealed_and_forgeries_are_problems() -> None:
    cp = checkpoint(chain(1)[0])
    line = encode_line(cp, KEY)
    assert parse_line(line, KEYS) == cp
    assert parse_line({"jsonPayload": json.loads(line), "logName": "x"}, KEYS) == cp
    doc = json.loads(line)
    doc["bqgate_anchor"]["seq"] = 99
    forged = json.dumps(doc)
    mallory = ChainKey(b"mallory's own key, 32 bytes long!!")
    text = "\n".join([line, forged, encode_line(cp, mallory), "{}", "not json", ""])
    found, problems = read_text("batch-1", text, KEYS)
    assert found == [cp]
    assert problems == [
        "batch-1 line 2: its checkpoint MAC does not match (forged or altered)",
        "batch-1 line 3: sealed with an unknown key",
    ]
    index = AnchorIndex.read([("batch-1", text)], KEYS)
    report = verify([], lambda s: (None, []), keys=KEYS, anchors=index, now_ms=0)
    assert not report.ok and len(report.problems) == 2 and index.sources == 1


def test_a_checkpoint_mac_is_not_an_event_mac() -> None:
    """The checkpoint key is derived: an event's MAC never passes as a checkpoint's."""
    e = chain(1)[0]
    line = json.loads(encode_line(checkpoint(e), KEY))
    assert line["anchor_mac"] != KEY.mac(canonical_json(line["bqgate_anchor"]))


# --------------------------------------------------------------------------- keys


def test_keys_from_text_and_the_dev_key_file(tmp_path: Path) -> None:
    with pytest.raises(ChainKeyError):
        ChainKey.from_text("too short")
    assert ChainKey.from_text("00" * 32).secret == bytes(32)
    key = load_or_create_dev_key(tmp_path)
    assert load_or_create_dev_key(tmp_path) == key
    assert (tmp_path / "audit-chain.key").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["audit-chain.key"]


def test_a_rotated_key_keeps_old_events_verifiable() -> None:
    old, new = KEY, ChainKey(b"the next chain key, 32 bytes long!")
    first = chain(2)
    second = seal(
        session_id="s",
        seq=3,
        kind="k",
        at_ms=1003,
        job_id="j",
        principal="p",
        data={},
        prev=first[-1],
        expire_at_ms=10_003,
        key=new,
    )
    assert verify_chain([*first, second], keys=Keyring([new, old])) is None
    assert verify_chain([*first, second], keys=Keyring([new])) is not None


# --------------------------------------------------------------------------- sinks


class MemorySink:
    def __init__(self, fail: int = 0) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail

    def write(self, lines: Sequence[str]) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError("bucket unavailable")
        self.batches.append(list(lines))


def cp(session: str, seq: int) -> Checkpoint:
    return Checkpoint(session, seq, f"{seq:064x}", seq, 10**12, "a@x", "dev")


def test_the_checkpointer_batches_keeps_the_newest_head_and_retries() -> None:
    log, bucket = MemorySink(), MemorySink(fail=1)
    c = Checkpointer(KEY, immediate=[log], batched=[bucket], interval_s=3600)
    for seq in (1, 2, 3):
        c.note(cp("a", seq))
    c.note(cp("b", 1))
    c.note(cp("a", 2))  # late and older: does not replace seq 3
    assert len(log.batches) == 5 and bucket.batches == []  # immediate: every one
    assert c.flush() is False and c.pending() == 2  # the bucket failed: still queued
    assert c.flush() is True and c.pending() == 0
    (batch,) = bucket.batches
    got = sorted(
        (p.session_id, p.seq)
        for p in (parse_line(x, KEYS) for x in batch)
        if isinstance(p, Checkpoint)
    )
    assert got == [("a", 3), ("b", 1)]
    c.close()


def test_the_checkpointer_flushes_in_the_background() -> None:
    bucket = MemorySink()
    done = threading.Event()

    class Signalling(MemorySink):
        def write(self, lines: Sequence[str]) -> None:
            bucket.write(lines)
            done.set()

    c = Checkpointer(KEY, batched=[Signalling()], interval_s=0.05)
    c.note(cp("a", 1))
    assert done.wait(5) and bucket.batches and c.pending() == 0
    c.close()


def test_a_checkpoint_failure_never_raises_to_the_recorder() -> None:
    c = Checkpointer(
        KEY, immediate=[MemorySink(fail=1)], batched=[MemorySink(fail=1)], interval_s=0
    )
    c.note(cp("a", 1))  # both sinks fail once: logged, not raised
    assert c.failures == 2 and c.pending() == 1
    assert c.flush() and c.pending() == 0


def test_the_folder_sink_writes_new_read_only_files(tmp_path: Path) -> None:
    sink = FolderSink(tmp_path / "anchors", clock=lambda: 1_750_000_000.0)
    sink.write([encode_line(cp("a", 1), KEY)])
    sink.write([encode_line(cp("a", 2), KEY), encode_line(cp("b", 1), KEY)])
    files = sorted((tmp_path / "anchors").rglob("*.jsonl"))
    assert len(files) == 2 and all(f.stat().st_mode & 0o777 == 0o444 for f in files)
    assert files[0].parent.relative_to(tmp_path / "anchors") == Path("2025/06/15")
    index = AnchorIndex.read(sink.read(), KEYS)
    assert [c.seq for c in index.of("a")] == [1, 2] and index.sources == 2


def test_the_log_sink_writes_one_structured_line_per_checkpoint(tmp_path: Path) -> None:
    import io

    out = io.StringIO()
    LogSink(out).write([encode_line(cp("a", 1), KEY), encode_line(cp("a", 2), KEY)])
    lines = out.getvalue().splitlines()
    assert [json.loads(x)["severity"] for x in lines] == ["NOTICE", "NOTICE"]
    # what a Cloud Logging sink exports: the line as jsonPayload of an entry
    exported = "\n".join(json.dumps({"jsonPayload": json.loads(x)}) for x in lines)
    assert [c.seq for c in read_text("logs/x.json", exported, KEYS)[0]] == [1, 2]
