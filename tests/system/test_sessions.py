"""Session recording end to end through the local stack: an agent session with an
allowed, a blocked and an approved query, then ``bqgate sessions show / replay /
export / verify`` on it; tampering with any stored event; re-judging under a
stricter policy; and twenty concurrent requests in one session."""

from __future__ import annotations

import concurrent.futures
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bqgate import audit
from bqgate.adapters.firestore_audit import EVENTS, SESSIONS, FirestoreRecorder
from bqgate.cli import main
from bqgate.client import gateway_client as make_client
from bqgate.dev.stack import PROJECT, Stack
from conftest import AGENT
from google.api_core import exceptions as gexc
from google.cloud import bigquery, firestore

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
ALLOWED = ("SELECT event_id, name FROM `demo-project.analytics.events` "
           "ORDER BY event_id LIMIT 3")
BLOCKED = "DROP TABLE `demo-project.analytics.events`"
APPROVED = ("SELECT employee_id, name, salary FROM `demo-project.finance.payroll` "
            "ORDER BY employee_id LIMIT 2")
WAIT_S = 90


def until(what: str, fn: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def record(stack: Stack) -> FirestoreRecorder:
    return FirestoreRecorder(firestore.Client(project=PROJECT), retention_seconds=3600,
                             record_rows=100)


def labelled(session: str) -> bigquery.QueryJobConfig:
    return bigquery.QueryJobConfig(labels={"session_id": session})


def kinds_of(record: FirestoreRecorder, session: str, job_id: str) -> list[str]:
    return [e.kind for e in record.events(session) if e.job_id == job_id]


@pytest.fixture(scope="module")
def session(stack: Stack, record: FirestoreRecorder) -> dict[str, str]:
    """One agent session: allowed, blocked, approved (by alice through the approver API)."""
    sid = f"sess-{uuid.uuid4().hex[:10]}"
    client = make_client(stack.url("gateway"), dev_dir=stack.state_dir)
    allowed = client.query(ALLOWED, job_config=labelled(sid))
    assert [r.event_id for r in allowed.result(timeout=WAIT_S)] == [1, 2, 3]
    with pytest.raises(gexc.Forbidden):
        client.query(BLOCKED, job_config=labelled(sid)).result(timeout=WAIT_S)
    approved = client.query(APPROVED, job_config=labelled(sid))
    until("the approval request", lambda: "approval_requested" in kinds_of(
        record, sid, approved.job_id or ""))
    assert main(["approve", approved.job_id or "", "--principal", "alice@example.com",
                 "--dev-dir", str(stack.state_dir)]) == 0
    rows = list(approved.result(timeout=WAIT_S))
    assert len(rows) == 2 and all(r.salary is None for r in rows)  # masked: nullify
    # The result event is written just after the job is marked DONE.
    for job_id in (allowed.job_id, approved.job_id):
        until(f"the result of {job_id}", lambda j=job_id: "result" in kinds_of(record, sid, j))
    blocked = next(e.job_id for e in record.events(sid) if e.kind == "blocked")
    return {"id": sid, "allowed": allowed.job_id or "", "blocked": blocked,
            "approved": approved.job_id or ""}


def dev(stack: Stack) -> list[str]:
    return ["--dev-dir", str(stack.state_dir)]


def test_the_session_record_has_every_step(session: dict[str, str],
                                           record: FirestoreRecorder) -> None:
    sid = session["id"]
    assert kinds_of(record, sid, session["allowed"]) == [
        "request", "classification", "execution_started", "execution_finished", "result"]
    assert kinds_of(record, sid, session["blocked"]) == ["request", "classification", "blocked"]
    assert kinds_of(record, sid, session["approved"]) == [
        "request", "classification", "approval_requested", "approval_decided",
        "execution_started", "execution_finished", "result"]
    events = record.events(sid)
    request = events[0].data
    assert request["statement"] == ALLOWED and request["principal"] == AGENT
    assert request["issuer"] and isinstance(request["groups"], list)
    assert request["client"]["request_kind"] == "jobs.insert"
    assert request["client"]["labels"] == {"session_id": sid}
    decided = next(e for e in events if e.kind == "approval_decided")
    assert decided.data["approver"] == "alice@example.com"
    result = [e for e in events if e.kind == "result"][-1].data
    assert result["total_rows"] == 2 and len(result["rows"]) == 2
    assert {m["column"]: m["strategy"] for m in result["masking"]} == {
        "name": "hmac", "salary": "nullify"}
    assert all(row[2] is None for row in result["rows"])  # what the agent saw: masked
    head = record.head(sid)
    assert head is not None and head.principals == (AGENT,)
    assert audit.verify_chain(events, head=head, now_ms=int(time.time() * 1000)) is None


def test_show_replay_export_and_verify(stack: Stack, session: dict[str, str],
                                       capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    sid = session["id"]
    capsys.readouterr()
    assert main(["sessions", "list", "--principal", AGENT, "--since", "1h", *dev(stack)]) == 0
    assert sid in capsys.readouterr().out

    assert main(["sessions", "show", sid, *dev(stack)]) == 0
    shown = capsys.readouterr().out
    assert f"session {sid}: 15 events, 3 jobs, principals {AGENT}" in shown
    assert "classified block" in shown and "approval approved by alice@example.com" in shown
    assert "masked name (hmac), salary (nullify)" in shown
    assert shown.rstrip().endswith("chain: intact (15 events)")

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
    assert [e["seq"] for e in exported] == list(range(1, 16))
    assert all(e["session_id"] == sid and len(e["hash"]) == 64 for e in exported)
    path = tmp_path / "session.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert main(["sessions", "verify", "--file", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"ok      {path}: 15 events, chain intact")

    assert main(["sessions", "verify", sid, *dev(stack)]) == 0
    assert capsys.readouterr().out.startswith(f"ok      session {sid}: 15 events, chain intact")


def test_replay_under_a_stricter_policy_reports_the_allowed_query_as_blocked(
        stack: Stack, session: dict[str, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    rule = "    tiers: [non-production]\n    read: "
    text = (REPO / "policies" / "default.yaml").read_text()
    assert rule + "allow" in text
    strict = tmp_path / "strict.yaml"
    strict.write_text(text.replace(rule + "allow", rule + "block"))
    capsys.readouterr()
    assert main(["sessions", "replay", session["id"], "--policy", str(strict),
                 *dev(stack)]) == 0
    out = capsys.readouterr().out
    assert f"statement 1 (job {session['allowed']}): allow -> block" in out
    assert f"statement 2 (job {session['blocked']}): block (unchanged)" in out
    assert f"statement 3 (job {session['approved']}): approve (unchanged)" in out
    assert "1 of 3 statements would be judged differently" in out


def test_editing_any_stored_event_makes_verify_fail_naming_it(
        stack: Stack, session: dict[str, str], record: FirestoreRecorder,
        capsys: pytest.CaptureFixture[str]) -> None:
    sid = session["id"]
    events = record.client.collection(SESSIONS).document(sid).collection(EVENTS)
    capsys.readouterr()
    for snap in list(events.stream()):
        original = snap.to_dict() or {}
        data = json.loads(original["data"])
        data["edited"] = True
        snap.reference.update({"data": audit.canonical_json(data)})
        try:
            assert main(["sessions", "verify", sid, *dev(stack)]) == 1
            out = capsys.readouterr().out
            assert f"BROKEN  session {sid}: event {snap.id} " in out, out
            assert "content does not match its hash" in out
        finally:
            snap.reference.set(original)
    assert main(["sessions", "verify", sid, *dev(stack)]) == 0
    capsys.readouterr()


def test_twenty_concurrent_requests_in_one_session_make_one_chain(
        stack: Stack, record: FirestoreRecorder) -> None:
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
    until("every result event", lambda: (record.head(sid) or audit.SessionHead(sid))
          .counts.get("result", 0) == 20)
    events = record.events(sid)
    head = record.head(sid)
    assert head is not None and head.last_seq == len(events) == 100
    assert [e.seq for e in events] == list(range(1, 101))
    assert audit.verify_chain(events, head=head, now_ms=int(time.time() * 1000)) is None
    for job_id in job_ids:
        assert kinds_of(record, sid, job_id) == [
            "request", "classification", "execution_started", "execution_finished", "result"]
