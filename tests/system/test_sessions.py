"""Session recording end to end through the local stack: an agent session with an
allowed, a blocked and an approved query, then ``bqgate sessions show / replay /
export / verify`` on it; tampering with any stored event, and what someone who can write
Firestore could try (edit and re-hash, truncate, delete a session) named by ``verify``;
a session label naming another principal's session; re-judging under a stricter policy;
and twenty concurrent requests in one session."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import helpers
import pytest
from bqgate.adapters.anchor_sinks import FolderSink
from bqgate.adapters.firestore_audit import EVENTS, SESSIONS, FirestoreRecorder
from bqgate.anchors import AnchorIndex
from bqgate.audit.chain import Event, SessionHead, canonical_json
from bqgate.chain import GENESIS, Keyring, load_or_create_dev_key
from bqgate.cli import main
from bqgate.client import gateway_client as make_client
from bqgate.dev.stack import PROJECT, Stack
from bqgate.verification import verify_chain, verify_session
from conftest import AGENT
from google.api_core import exceptions as gexc
from google.cloud import bigquery, firestore

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
ALLOWED = "SELECT event_id, name FROM `demo-project.analytics.events` ORDER BY event_id LIMIT 3"
BLOCKED = "DROP TABLE `demo-project.analytics.events`"
APPROVED = (
    "SELECT employee_id, name, salary FROM `demo-project.finance.payroll` "
    "ORDER BY employee_id LIMIT 2"
)
WAIT_S = 90


#: Waits for a condition, up to WAIT_S (helpers.until).
until = partial(helpers.until, timeout=WAIT_S)


@pytest.fixture(scope="module")
def record(stack: Stack) -> FirestoreRecorder:
    return FirestoreRecorder(
        firestore.Client(project=PROJECT), retention_seconds=3600, record_rows=100
    )


@pytest.fixture(scope="module")
def keys(stack: Stack) -> Keyring:
    return Keyring([load_or_create_dev_key(stack.state_dir)])


def labelled(session: str) -> bigquery.QueryJobConfig:
    return bigquery.QueryJobConfig(labels={"session_id": session})


def stored_id(record: FirestoreRecorder, label: str, principal: str = AGENT) -> str:
    """The stored id of ``principal``'s session for a client label (derived, not the label)."""
    heads = [h for h in record.by_label(label) if h.principals == (principal,)]
    return heads[0].session_id if heads else ""


def kinds_of(record: FirestoreRecorder, label: str, job_id: str) -> list[str]:
    sid = stored_id(record, label)
    return [e.kind for e in record.events(sid) if e.job_id == job_id] if sid else []


def fully_checkpointed(stack: Stack, keys: Keyring, sid: str) -> bool:
    """True once every stored event of ``sid`` is covered by a checkpoint (flushed ~1 s)."""
    reader = FirestoreRecorder(
        firestore.Client(project=PROJECT), retention_seconds=0, record_rows=0
    )
    anchors = AnchorIndex.read(FolderSink(stack.state_dir / "anchors").read(), keys)
    report = verify_session(
        sid,
        reader.head(sid),
        reader.events(sid),
        keys=keys,
        anchors=anchors.of(sid),
        now_ms=int(time.time() * 1000),
    )
    return report.ok and report.unanchored is None and report.anchored_seq > 0


@pytest.fixture(scope="module")
def session(stack: Stack, record: FirestoreRecorder, keys: Keyring) -> dict[str, str]:
    """One agent session: allowed, blocked, approved (by alice through the approver API)."""
    sid = f"sess-{uuid.uuid4().hex[:10]}"
    client = make_client(stack.url("gateway"), dev_dir=stack.state_dir)
    allowed = client.query(ALLOWED, job_config=labelled(sid))
    assert [r.event_id for r in allowed.result(timeout=WAIT_S)] == [1, 2, 3]
    with pytest.raises(gexc.Forbidden):
        client.query(BLOCKED, job_config=labelled(sid)).result(timeout=WAIT_S)
    approved = client.query(APPROVED, job_config=labelled(sid))
    # The approver acts once Slack has the request (slack_notify records "notified").
    until(
        "the approval request in Slack",
        lambda: "notified" in kinds_of(record, sid, approved.job_id or ""),
    )
    assert (
        main(
            [
                "approve",
                approved.job_id or "",
                "--principal",
                "alice@example.com",
                "--dev-dir",
                str(stack.state_dir),
            ]
        )
        == 0
    )
    rows = list(approved.result(timeout=WAIT_S))
    assert len(rows) == 2 and all(r.salary is None for r in rows)  # masked: nullify
    # The result event is written just after the job is marked DONE.
    for job_id in (allowed.job_id, approved.job_id):

        def has_result(j: str = job_id) -> bool:
            return "result" in kinds_of(record, sid, j)

        until(f"the result of {job_id}", has_result)

    stored = stored_id(record, sid)
    until("every event checkpointed", lambda: fully_checkpointed(stack, keys, stored))
    blocked = next(e.job_id for e in record.events(stored) if e.kind == "blocked")
    return {
        "label": sid,
        "id": stored,
        "allowed": allowed.job_id or "",
        "blocked": blocked,
        "approved": approved.job_id or "",
    }


def dev(stack: Stack) -> list[str]:
    return ["--dev-dir", str(stack.state_dir)]


def test_the_session_record_has_every_step(
    session: dict[str, str], record: FirestoreRecorder, keys: Keyring
) -> None:
    sid, label = session["id"], session["label"]
    assert sid.startswith(label + ".") and sid != label  # derived from (issuer, agent, label)
    assert kinds_of(record, label, session["allowed"]) == [
        "request",
        "classification",
        "execution_started",
        "execution_finished",
        "result",
    ]
    assert kinds_of(record, label, session["blocked"]) == ["request", "classification", "blocked"]
    assert kinds_of(record, label, session["approved"]) == [
        "request",
        "classification",
        "approval_requested",
        "notified",
        "approval_decided",
        "execution_started",
        "execution_finished",
        "result",
    ]
    events = record.events(sid)
    request = events[0].data
    assert request["statement"] == ALLOWED and request["principal"] == AGENT
    assert request["issuer"] and isinstance(request["groups"], list)
    assert request["client"]["request_kind"] == "jobs.insert"
    assert request["client"]["labels"] == {"session_id": label}
    decided = next(e for e in events if e.kind == "approval_decided")
    assert decided.data["approver"] == "alice@example.com"
    result = [e for e in events if e.kind == "result"][-1].data
    assert result["total_rows"] == 2 and len(result["rows"]) == 2
    assert {m["column"]: m["strategy"] for m in result["masking"]} == {
        "name": "hmac",
        "salary": "nullify",
    }
    assert all(row[2] is None for row in result["rows"])  # what the agent saw: masked
    head = record.head(sid)
    assert head is not None and head.principals == (AGENT,) and head.label == label
    assert verify_chain(events, keys=keys, head=head, now_ms=int(time.time() * 1000)) is None
    assert all(e.key_id == keys.current.key_id and len(e.mac) == 64 for e in events)


def test_show_replay_export_and_verify(
    stack: Stack, session: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sid = session["id"]
    capsys.readouterr()
    assert main(["sessions", "list", "--principal", AGENT, "--since", "1h", *dev(stack)]) == 0
    assert sid in capsys.readouterr().out

    assert main(["sessions", "show", session["label"], *dev(stack)]) == 0  # by its label
    shown = capsys.readouterr().out
    assert f"session {sid}: 16 events, 3 jobs, principals {AGENT}" in shown
    assert "classified block" in shown and "approval approved by alice@example.com" in shown
    assert "masked name (hmac), salary (nullify)" in shown
    assert shown.rstrip().endswith(
        "chain: intact (16 events, chain intact, checkpointed through event 16)"
    )

    assert main(["sessions", "replay", sid, "--no-wait", *dev(stack)]) == 0
    replay = capsys.readouterr().out
    assert replay.count("== statement") == 3
    assert replay.index(ALLOWED) < replay.index(BLOCKED) < replay.index(APPROVED)
    assert "agent saw: 403 accessDenied: Blocked by bqgate policy" in replay
    assert "agent saw: 3 rows" in replay and "agent saw: 2 rows" in replay
    assert "masked salary with nullify" in replay

    assert main(["sessions", "replay", sid, "--speed", "1000", *dev(stack)]) == 0
    assert capsys.readouterr().out.count("== statement") == 3

    assert main(["sessions", "export", sid, "--format", "jsonl", *dev(stack)]) == 0
    lines = capsys.readouterr().out.splitlines()
    exported = [json.loads(line) for line in lines]
    assert [e["seq"] for e in exported] == list(range(1, 17))
    assert all(e["session_id"] == sid and len(e["mac"]) == 64 for e in exported)
    path = tmp_path / "session.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert main(["sessions", "verify", "--file", str(path), *dev(stack)]) == 0
    assert capsys.readouterr().out.startswith(f"ok      {path}: 16 events, chain intact")

    assert main(["sessions", "verify", sid, *dev(stack)]) == 0
    assert capsys.readouterr().out == (
        f"ok      session {sid}: 16 events, chain intact, checkpointed through event 16\n"
    )


def test_replay_under_a_stricter_policy_reports_the_allowed_query_as_blocked(
    stack: Stack, session: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rule = "    tiers: [non-production]\n    read: "
    text = (REPO / "policies" / "default.yaml").read_text()
    assert rule + "allow" in text
    strict = tmp_path / "strict.yaml"
    strict.write_text(text.replace(rule + "allow", rule + "block"))
    capsys.readouterr()
    assert main(["sessions", "replay", session["id"], "--policy", str(strict), *dev(stack)]) == 0
    out = capsys.readouterr().out
    assert f"statement 1 (job {session['allowed']}): allow -> block" in out
    assert f"statement 2 (job {session['blocked']}): block (unchanged)" in out
    assert f"statement 3 (job {session['approved']}): approve (unchanged)" in out
    assert "1 of 3 statements would be judged differently" in out


def test_editing_any_stored_event_makes_verify_fail_naming_it(
    stack: Stack,
    session: dict[str, str],
    record: FirestoreRecorder,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sid = session["id"]
    events = record.client.collection(SESSIONS).document(sid).collection(EVENTS)
    capsys.readouterr()
    for snap in list(events.stream()):
        original = snap.to_dict() or {}
        data = json.loads(original["data"])
        data["edited"] = True
        snap.reference.update({"data": canonical_json(data)})
        try:
            assert main(["sessions", "verify", sid, *dev(stack)]) == 1
            out = capsys.readouterr().out
            assert out.startswith(
                f"BROKEN  session {sid}: edited: event {snap.id}: its content "
                "does not match its MAC"
            ), out
        finally:
            snap.reference.set(original)
    assert main(["sessions", "verify", sid, *dev(stack)]) == 0
    capsys.readouterr()


def test_twenty_concurrent_requests_in_one_session_make_one_chain(
    stack: Stack, record: FirestoreRecorder, keys: Keyring
) -> None:
    sid = f"conc-{uuid.uuid4().hex[:10]}"
    # One client, its token fetched once up front: the dev issuer's listen backlog (5)
    # refuses a burst of twenty token fetches.
    client = make_client(stack.url("gateway"), dev_dir=stack.state_dir)
    client.query("SELECT 0 AS warm_up").result(timeout=WAIT_S)

    def run(i: int) -> str:
        job = client.query(f"SELECT {i} AS n", job_config=labelled(sid))
        assert [r.n for r in job.result(timeout=WAIT_S)] == [i]
        return job.job_id or ""

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        job_ids = list(pool.map(run, range(20)))
    label, sid = sid, stored_id(record, sid)
    until(
        "every result event",
        lambda: (record.head(sid) or SessionHead(sid)).counts.get("result", 0) == 20,
    )
    events = record.events(sid)
    head = record.head(sid)
    assert head is not None and head.last_seq == len(events) == 100
    assert [e.seq for e in events] == list(range(1, 101))
    assert verify_chain(events, keys=keys, head=head, now_ms=int(time.time() * 1000)) is None
    until("the whole session checkpointed", lambda: fully_checkpointed(stack, keys, sid))
    for job_id in job_ids:
        assert kinds_of(record, label, job_id) == [
            "request",
            "classification",
            "execution_started",
            "execution_finished",
            "result",
        ]


# --------------------------------------------------------------------------- an insider


def _short_session(stack: Stack, record: FirestoreRecorder, keys: Keyring, n: int = 3) -> str:
    """A fresh agent session of ``n`` allowed queries, fully checkpointed; its stored id."""
    label = f"ins-{uuid.uuid4().hex[:10]}"
    client = make_client(stack.url("gateway"), dev_dir=stack.state_dir)
    for i in range(n):
        assert [
            r.n
            for r in client.query(f"SELECT {i} AS n", job_config=labelled(label)).result(
                timeout=WAIT_S
            )
        ] == [i]
    until("the stored session", lambda: stored_id(record, label))
    sid = stored_id(record, label)
    until(
        "every result",
        lambda: (record.head(sid) or SessionHead(sid)).counts.get("result", 0) == n,
    )
    until("every event checkpointed", lambda: fully_checkpointed(stack, keys, sid))
    return sid


def _refs(record: FirestoreRecorder, sid: str) -> tuple[Any, Any]:
    head = record.client.collection(SESSIONS).document(sid)
    return head, head.collection(EVENTS)


def test_an_edited_and_rehashed_event_is_named_edited(
    stack: Stack, record: FirestoreRecorder, keys: Keyring, capsys: pytest.CaptureFixture[str]
) -> None:
    """Someone who can write Firestore edits the statement of event 1 and recomputes every
    later link and the head, as the plain SHA-256 chain let them: verify names event 1."""
    sid = _short_session(stack, record, keys)
    head_ref, events_ref = _refs(record, sid)
    prev = GENESIS
    for snap in sorted(events_ref.stream(), key=lambda d: d.id):
        doc = snap.to_dict() or {}
        if snap.id == "00000001":
            data = json.loads(doc["data"])
            data["statement"] = "SELECT 'nothing to see here'"
            doc["data"] = canonical_json(data)
        doc["prev_mac"] = prev
        event = Event.from_doc(snap.id, doc)
        text = prev + "\n" + canonical_json(event.body())
        doc["mac"] = prev = hashlib.sha256(text.encode()).hexdigest()
        snap.reference.set(doc)
    head_ref.update({"last_mac": prev})
    capsys.readouterr()
    assert main(["sessions", "verify", sid, *dev(stack)]) == 1
    assert capsys.readouterr().out.startswith(
        f"BROKEN  session {sid}: edited: event 00000001: its content does not match its MAC"
    )


def test_a_truncated_session_is_named_truncated(
    stack: Stack, record: FirestoreRecorder, keys: Keyring, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last job's events are deleted and the head rewound to the event before them:
    the chain and the head agree, but the checkpoint outside Firestore does not."""
    sid = _short_session(stack, record, keys)
    head_ref, events_ref = _refs(record, sid)
    events = record.events(sid)
    keep = len(events) - 5  # the last query's five events
    for e in events[keep:]:
        events_ref.document(e.event_id).delete()
    last = events[keep - 1]
    head_ref.update(
        {"last_seq": last.seq, "last_mac": last.mac, "last_expire_at_ms": last.expire_at_ms}
    )
    assert verify_chain(record.events(sid), keys=keys, head=record.head(sid)) is None
    capsys.readouterr()
    assert main(["sessions", "verify", sid, *dev(stack)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(
        f"BROKEN  session {sid}: truncated: event {keep + 1:08d}: events "
        f"{keep + 1} to {len(events)} are missing at the end"
    ), out


def test_a_deleted_session_is_named_deleted(
    stack: Stack, record: FirestoreRecorder, keys: Keyring, capsys: pytest.CaptureFixture[str]
) -> None:
    """Head and every event deleted: Firestore no longer lists the session, but the
    checkpoints (the global index) do, and verify of the whole record names it."""
    sid = _short_session(stack, record, keys, n=1)
    head_ref, events_ref = _refs(record, sid)
    for snap in events_ref.stream():
        snap.reference.delete()
    head_ref.delete()
    assert record.head(sid) is None and record.events(sid) == []
    capsys.readouterr()
    assert main(["sessions", "verify", *dev(stack)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(
        line.startswith(f"BROKEN  session {sid}: deleted: the session is gone") for line in lines
    ), lines
    assert main(["sessions", "verify", sid, "--json", *dev(stack)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["sessions"][0]["status"] == "deleted" and report["ok"] is False


def test_a_label_naming_another_principals_session_does_not_touch_it(
    stack: Stack, record: FirestoreRecorder, keys: Keyring
) -> None:
    """Eve labels her jobs with the agent's label, and with the agent's stored session id
    as near as a label can spell it ('.' is not a label character): each lands in a session
    of Eve's own; the agent's session is unchanged."""
    victim = _short_session(stack, record, keys, n=1)
    victim_label = (record.head(victim) or SessionHead(victim)).label
    before = record.events(victim)
    from bqgate.adapters.client import DevIdTokenCredentials
    from bqgate.dev.issuer import OIDC_SUBDIR, load_secret
    from google.api_core.client_options import ClientOptions

    creds = DevIdTokenCredentials(
        stack.url("oidc_issuer"),
        "eve@example.com",
        groups=("ai-coding-agents",),
        secret=load_secret(stack.state_dir / OIDC_SUBDIR),
    )
    eve = bigquery.Client(
        project=PROJECT,
        credentials=creds,
        client_options=ClientOptions(api_endpoint=stack.url("gateway")),
    )
    labels = (victim_label, victim.replace(".", "_"))
    for label in labels:
        assert [
            r.n
            for r in eve.query("SELECT 7 AS n", job_config=labelled(label)).result(timeout=WAIT_S)
        ] == [7]
    after = record.events(victim)
    assert after == before and (record.head(victim) or SessionHead("")).principals == (AGENT,)
    for label in labels:
        mine = stored_id(record, label, principal="eve@example.com")
        assert mine and mine != victim
        assert {e.principal for e in record.events(mine)} == {"eve@example.com"}
