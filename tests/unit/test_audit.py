"""The session record's pure core: encoding, MAC chain, recording, rendering, replay,
re-judging, and the ``bqgate sessions`` command over a hand-written in-memory record
(verification against checkpoints: ``test_verification.py``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from bqgate import verification
from bqgate.anchors import AnchorIndex, Checkpoint
from bqgate.audit import chain as audit_chain
from bqgate.audit.chain import Event, SessionHead, canonical_json, event_mac
from bqgate.audit.record import MAX_DATA_BYTES, EventKind, event_data
from bqgate.audit.rejudge import judge_under, rejudge
from bqgate.chain import GENESIS, ChainKey, Keyring
from bqgate.classification import Classification
from bqgate.cli import main
from bqgate.commands import sessions as cmd
from bqgate.commands.session_views import render_rejudge, render_timeline, replay_steps
from bqgate.jobs import Job
from hypothesis import given
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = REPO / "policies" / "default.yaml"
AGENT = "agent@demo-project.iam.gserviceaccount.com"
KEY = ChainKey(b"unit-test-chain-key-0123456789abcdef")
KEYS = Keyring([KEY])


def seal(**kw: Any) -> Event:
    return audit_chain.seal(key=KEY, **kw)


# --------------------------------------------------------------------------- fakes


class MemoryRecord:
    """The session record in memory: the same chain FirestoreRecorder writes, and the
    checkpoint of every head it reaches."""

    def __init__(self, record_rows: int = 100, retention_ms: int = 10**9) -> None:
        self.heads: dict[str, SessionHead] = {}
        self.stored: dict[str, list[Event]] = {}
        self.checkpoints: list[Checkpoint] = []
        self.record_rows = record_rows
        self.retention_ms = retention_ms
        self.now_ms = 1_750_000_000_000

    def record(self, job: Job, kind: EventKind, data: Mapping[str, Any]) -> None:
        sid = job.session_id
        head = self.heads.get(sid, SessionHead(sid))
        self.now_ms += 250
        event = seal(
            session_id=sid,
            seq=head.last_seq + 1,
            kind=kind,
            at_ms=self.now_ms,
            job_id=job.job_id,
            principal=job.owner,
            data=event_data(job, kind, data, record_rows=self.record_rows),
            prev=None,
            prev_mac=head.last_mac,
            prev_expire_at_ms=head.last_expire_at_ms,
            expire_at_ms=self.now_ms + self.retention_ms,
        )
        self.heads[sid] = head.advanced(event, job.issuer)
        self.stored.setdefault(sid, []).append(event)
        self.checkpoints.append(
            Checkpoint(
                sid, event.seq, event.mac, event.at_ms, event.expire_at_ms, job.owner, job.issuer
            )
        )

    def by_label(self, label: str, limit: int = 20) -> list[SessionHead]:
        return [h for h in self.heads.values() if h.label == label][:limit]

    # SessionReader
    def head(self, session_id: str) -> SessionHead | None:
        return self.heads.get(session_id)

    def events(self, session_id: str) -> list[Event]:
        return list(self.stored.get(session_id, []))

    def list_sessions(
        self, *, principal: str | None = None, since_ms: int | None = None, limit: int = 100
    ) -> list[SessionHead]:
        heads = [
            h
            for h in self.heads.values()
            if (principal is None or principal in h.principals)
            and (since_ms is None or h.last_ms >= since_ms)
        ]
        return sorted(heads, key=lambda h: h.last_ms, reverse=True)[:limit]


def job(job_id: str, sql: str, session: str = "s-1", owner: str = AGENT) -> Job:
    return Job.new(
        job_id=job_id,
        project="demo-project",
        location="US",
        sql=sql,
        owner=owner,
        groups=["ai-coding-agents"],
        issuer="dev",
        session_id=session,
        labels={"session_id": session},
        now_ms=0,
    )


ALLOWED = "SELECT event_id, name FROM `demo-project.analytics.events` LIMIT 2"
BLOCKED = "DROP TABLE `demo-project.analytics.events`"
APPROVED = "SELECT name, salary FROM `demo-project.finance.payroll` LIMIT 1"


def sample_session(rec: MemoryRecord, session: str = "s-1") -> None:
    """An allowed query, a blocked one and an approved one, as the services record them."""
    a = job("job-allowed", ALLOWED, session)
    rec.record(a, "request", {"request_kind": "jobs.query"})
    rec.record(
        a,
        "classification",
        {"decision": "allow", "reasons": [], "tables": ["demo-project.analytics.events"]},
    )
    rec.record(a, "execution_started", {"warehouse_job_id": "bqgate_1", "attempt": 1})
    rec.record(
        a,
        "execution_finished",
        {
            "warehouse_job_id": "bqgate_1",
            "total_bytes_processed": 2048,
            "duration_ms": 12.5,
            "error": None,
        },
    )
    rec.record(
        a,
        "result",
        {
            "schema": [{"name": "event_id", "type": "INTEGER"}, {"name": "name", "type": "STRING"}],
            "total_rows": 2,
            "truncated": False,
            "masking": [],
            "detector_hits": {},
            "rows": [[1, "signup"], [2, "login"]],
        },
    )
    b = job("job-blocked", BLOCKED, session)
    rec.record(b, "request", {"request_kind": "jobs.insert"})
    rec.record(b, "classification", {"decision": "block", "reasons": ["DROP is blocked"]})
    rec.record(
        b,
        "blocked",
        {"reason": "accessDenied", "message": "Blocked by bqgate policy: DROP is blocked"},
    )
    c = job("job-approved", APPROVED, session)
    rec.record(c, "request", {"request_kind": "jobs.insert"})
    rec.record(c, "classification", {"decision": "approve", "reasons": ["restricted read"]})
    rec.record(c, "approval_requested", {"reasons": ["restricted read"]})
    rec.record(
        c,
        "approval_decided",
        {
            "outcome": "approved",
            "approver": "alice@example.com",
            "via": "api",
            "message": "approved",
        },
    )
    rec.record(c, "execution_started", {"warehouse_job_id": "bqgate_2", "attempt": 1})
    rec.record(
        c, "execution_finished", {"total_bytes_processed": 10, "duration_ms": 3.0, "error": None}
    )
    rec.record(
        c,
        "result",
        {
            "schema": [{"name": "name"}, {"name": "salary"}],
            "total_rows": 1,
            "truncated": False,
            "rows": [["h:1f2e", None]],
            "masking": [
                {
                    "column": "name",
                    "strategy": "hmac",
                    "reason": "demo-project.finance.payroll.name",
                },
                {
                    "column": "salary",
                    "strategy": "nullify",
                    "reason": "demo-project.finance.payroll.salary",
                },
            ],
        },
    )


def chain(n: int, session: str = "s") -> list[Event]:
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
                expire_at_ms=10_000 + i,
            )
        )
    return out


def head_of(events: Sequence[Event]) -> SessionHead:
    head = SessionHead(events[0].session_id)
    for e in events:
        head = head.advanced(e, "dev")
    return head


# --------------------------------------------------------------------------- encoding

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_canonical_json_is_a_fixed_point_of_parse_and_encode(value: Any) -> None:
    text = canonical_json(value)
    assert canonical_json(json.loads(text)) == text


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=5))
def test_an_event_survives_storage_with_its_mac(data: dict[str, Any]) -> None:
    e = seal(
        session_id="s",
        seq=1,
        kind="result",
        at_ms=1,
        job_id="j",
        principal="p",
        data={"payload": data},
        prev=None,
        expire_at_ms=2,
    )
    doc = json.loads(json.dumps(e.to_doc()))  # any JSON-faithful store
    back = Event.from_doc(e.event_id, doc)
    assert back == e
    assert event_mac(KEY, back) == e.mac


def test_the_mac_needs_the_key() -> None:
    e = seal(
        session_id="s",
        seq=1,
        kind="k",
        at_ms=1,
        job_id="j",
        principal="p",
        data={"x": 1},
        prev=None,
        expire_at_ms=2,
    )
    other = ChainKey(b"another-key-of-at-least-32-bytes!!")
    assert event_mac(other, e) != e.mac
    assert e.key_id == KEY.key_id != other.key_id
    assert KEY.secret.hex() not in json.dumps(e.to_doc()) and "unit-test" not in repr(KEY)


def test_key_order_does_not_change_the_mac() -> None:
    a = seal(
        session_id="s",
        seq=1,
        kind="k",
        at_ms=1,
        job_id="j",
        principal="p",
        data={"x": 1, "y": {"b": 2, "a": 1}},
        prev=None,
        expire_at_ms=2,
    )
    b = seal(
        session_id="s",
        seq=1,
        kind="k",
        at_ms=1,
        job_id="j",
        principal="p",
        data={"y": {"a": 1, "b": 2}, "x": 1},
        prev=None,
        expire_at_ms=2,
    )
    assert a.mac == b.mac


def test_int_and_float_mac_differently() -> None:
    a = seal(
        session_id="s",
        seq=1,
        kind="k",
        at_ms=1,
        job_id="j",
        principal="p",
        data={"n": 1},
        prev=None,
        expire_at_ms=2,
    )
    b = seal(
        session_id="s",
        seq=1,
        kind="k",
        at_ms=1,
        job_id="j",
        principal="p",
        data={"n": 1.0},
        prev=None,
        expire_at_ms=2,
    )
    assert a.mac != b.mac


def test_unrecordable_values_raise_so_the_request_fails_closed() -> None:
    with pytest.raises(TypeError):
        canonical_json({"x": object()})


# --------------------------------------------------------------------------- recording


def test_request_event_records_who_what_and_from_where_but_no_token() -> None:
    j = job("j1", "SELECT 1")
    j.default_dataset = {"projectId": "demo-project", "datasetId": "analytics"}
    data = event_data(j, "request", {"request_kind": "jobs.insert"}, record_rows=5)
    assert data["statement"] == "SELECT 1"
    assert (data["principal"], data["groups"], data["issuer"]) == (
        AGENT,
        ["ai-coding-agents"],
        "dev",
    )
    assert data["client"] == {"request_kind": "jobs.insert", "labels": {"session_id": "s-1"}}
    assert (data["default_project"], data["default_dataset"]) == ("demo-project", "analytics")
    assert "token" not in json.dumps(data).lower()


def test_result_keeps_record_rows_and_none_when_zero() -> None:
    j = job("j1", "SELECT 1")
    rows = [[i, f"v{i}"] for i in range(10)]
    assert event_data(j, "result", {"rows": rows}, record_rows=3)["rows"] == rows[:3]
    zero = event_data(j, "result", {"rows": rows, "total_rows": 10}, record_rows=0)
    assert zero["rows"] == [] and zero["rows_recorded"] == 0 and zero["total_rows"] == 10


def test_oversized_rows_and_statements_are_trimmed_and_say_so() -> None:
    j = job("j1", "SELECT '" + "x" * (MAX_DATA_BYTES + 10) + "'")
    big = [["y" * 10_000] for _ in range(200)]
    result = event_data(j, "result", {"rows": big}, record_rows=200)
    assert result["rows_trimmed"] is True
    assert 0 < result["rows_recorded"] < 200
    assert len(canonical_json(result)) <= MAX_DATA_BYTES
    request = event_data(j, "request", {}, record_rows=0)
    assert request["statement_truncated"] is True and len(request["statement_sha256"]) == 64


def test_the_head_collects_principals_and_counts() -> None:
    rec = MemoryRecord()
    rec.record(job("j1", "SELECT 1", owner="a@x"), "request", {})
    rec.record(job("j2", "SELECT 1", owner="b@x"), "request", {})
    rec.record(job("j2", "SELECT 1", owner="b@x"), "blocked", {})
    head = rec.heads["s-1"]
    assert head.principals == ("a@x", "b@x")
    assert head.counts == {"request": 2, "blocked": 1}
    assert head.started_ms < head.last_ms and head.last_seq == 3
    assert verification.verify_chain(rec.events("s-1"), keys=KEYS, head=head) is None


def test_the_gateway_records_request_classification_and_block() -> None:
    from bqgate.errors import AccessDenied
    from bqgate.identity import Principal
    from bqgate.service.gateway import Gateway, GatewayConfig
    from fakes import MemoryJobStore, MemoryQueue

    rec = MemoryRecord()

    def classify(sql: str, **kw: Any) -> Classification:
        return Classification("block", reasons=("DROP is blocked",))

    gw = Gateway(
        store=MemoryJobStore(),
        queue=MemoryQueue(),
        classify=classify,
        config=GatewayConfig(),
        recorder=rec,
        new_id=lambda: "jid",
    )
    who = Principal(email=AGENT, groups=frozenset(), issuer="dev", subject="x", expires_at=9)
    body = {
        "configuration": {
            "query": {"query": BLOCKED, "useLegacySql": False},
            "labels": {"session_id": "lab-1"},
        }
    }
    with pytest.raises(AccessDenied):
        gw.insert_job(who, "demo-project", body)
    (sid,) = rec.stored
    assert sid.startswith("lab-1.")  # the label's session of this principal
    events = rec.events(sid)
    assert [e.kind for e in events] == ["request", "classification", "blocked"]
    assert events[0].data["statement"] == BLOCKED


# --------------------------------------------------------------------------- rendering


def test_timeline_has_one_line_per_event_in_order() -> None:
    rec = MemoryRecord()
    sample_session(rec)
    lines = render_timeline(rec.head("s-1"), rec.events("s-1"))
    assert lines[0].startswith("session s-1: 15 events, 3 jobs")
    assert len(lines) == 16
    assert "classified allow" in lines[2]
    assert "blocked: Blocked by bqgate policy: DROP is blocked" in lines[8]
    assert "approval approved by alice@example.com via api" in lines[12]
    assert "masked name (hmac), salary (nullify)" in lines[15]


def test_replay_shows_each_statement_and_what_the_agent_saw() -> None:
    rec = MemoryRecord()
    sample_session(rec)
    steps = replay_steps(rec.events("s-1"))
    assert [s.delay_ms for s in steps] == [0] + [250] * 14
    text = "\n".join(line for s in steps for line in s.lines)
    assert text.count("== statement") == 3
    assert "agent saw: 403 accessDenied: Blocked by bqgate policy: DROP is blocked" in text
    assert "agent saw: job PENDING (waiting for approval)" in text
    assert "event_id | name" in text
    assert "1        | signup" in text and "2        | login" in text
    assert "masked salary with nullify: demo-project.finance.payroll.salary" in text
    assert text.index(ALLOWED) < text.index(BLOCKED) < text.index(APPROVED)


def test_rejudge_reports_decisions_that_would_change() -> None:
    from bqgate.policy import load_policy

    rec = MemoryRecord()
    sample_session(rec)
    strict = load_policy(DEFAULT_POLICY)  # the recorded decisions are the default policy's
    results = rejudge(rec.events("s-1"), judge_under(strict))
    assert [r.request.job_id for r in results] == ["job-allowed", "job-blocked", "job-approved"]
    assert [r.changed for r in results] == [False, False, False]
    flipped = rejudge(rec.events("s-1"), lambda req: ("block", ["no"]))
    lines = render_rejudge(flipped, "strict.yaml")
    assert lines[0].startswith("statement 1 (job job-allowed): allow -> block")
    assert lines[-1] == "2 of 3 statements would be judged differently under strict.yaml"


# --------------------------------------------------------------------------- the command


@pytest.fixture()
def record(monkeypatch: pytest.MonkeyPatch) -> MemoryRecord:
    rec = MemoryRecord()
    sample_session(rec)
    rec.now_ms = cmd._now_ms() - 60_000
    rec.record(job("other", "SELECT 1", session="s-2", owner="bob@x"), "request", {})

    def reader(args: argparse.Namespace) -> MemoryRecord:
        return rec

    class Evidence:
        keys = KEYS

        @property
        def anchors(self) -> AnchorIndex:
            return AnchorIndex.build(rec.checkpoints)

    monkeypatch.setattr(cmd, "open_reader", reader)
    monkeypatch.setattr(cmd, "open_evidence", lambda args: Evidence())
    return rec


def test_cli_list_filters(record: MemoryRecord, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sessions", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["SESSION", "LABEL", "PRINCIPALS"]
    assert [line.split()[0] for line in out[1:]] == ["s-2", "s-1"]
    assert main(["sessions", "list", "--principal", AGENT]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["s-1"]
    assert main(["sessions", "list", "--since", "10m"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["s-2"]
    assert main(["sessions", "list", "--since", "soon"]) == 2
    assert "--since" in capsys.readouterr().err


def test_cli_show_replay_export_verify(
    record: MemoryRecord, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["sessions", "show", "s-1"]) == 0
    out = capsys.readouterr().out
    assert "session s-1: 15 events" in out
    assert out.rstrip().endswith(
        "chain: intact (15 events, chain intact, checkpointed through event 15)"
    )
    assert main(["sessions", "replay", "s-1", "--no-wait"]) == 0
    assert capsys.readouterr().out.count("== statement") == 3
    assert main(["sessions", "export", "s-1", "--format", "jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["seq"] for x in lines] == list(range(1, 16))
    assert main(["sessions", "verify", "s-1"]) == 0
    assert capsys.readouterr().out.startswith("ok      session s-1: 15 events, chain intact")
    assert main(["sessions", "verify"]) == 0
    assert "2 of 2 sessions intact" in capsys.readouterr().out
    assert main(["sessions", "show", "nope"]) == 2
    assert "no session 'nope'" in capsys.readouterr().err

    exported = tmp_path / "s-1.jsonl"
    assert main(["sessions", "export", "s-1", "--output", str(exported)]) == 0
    assert main(["sessions", "verify", "--file", str(exported)]) == 0
    capsys.readouterr()
    edited = exported.read_text().replace('"signup"', '"SIGNUP"')
    exported.write_text(edited)
    assert main(["sessions", "verify", "--file", str(exported)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"BROKEN  {exported}: edited: event 00000005: its content does not")


def test_cli_verify_names_the_edited_event(
    record: MemoryRecord, capsys: pytest.CaptureFixture[str]
) -> None:
    events = record.stored["s-1"]
    events[7] = replace(events[7], data={"reason": "accessDenied", "message": "ok then"})
    assert main(["sessions", "verify", "s-1"]) == 1
    out = capsys.readouterr().out
    assert "BROKEN  session s-1: edited: event 00000008: its content does not match its MAC" in out
    assert main(["sessions", "verify"]) == 1
    assert "1 of 2 sessions intact" in capsys.readouterr().out


def test_cli_replay_with_a_stricter_policy(
    record: MemoryRecord, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    strict = tmp_path / "strict.yaml"
    rule = "    tiers: [non-production]\n    read: "
    strict.write_text(DEFAULT_POLICY.read_text().replace(rule + "allow", rule + "block"))
    assert main(["sessions", "replay", "s-1", "--policy", str(strict)]) == 0
    out = capsys.readouterr().out
    assert "statement 1 (job job-allowed): allow -> block" in out
    assert "statement 2 (job job-blocked): block (unchanged)" in out
    assert "1 of 3 statements would be judged differently" in out
    assert main(["sessions", "replay", "s-1", "--policy", str(strict), "--fail-on-change"]) == 1


def test_cli_replay_waits_scaled_by_speed(
    record: MemoryRecord, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    t0 = time.monotonic()
    assert main(["sessions", "replay", "s-1", "--speed", "50"]) == 0
    elapsed = time.monotonic() - t0
    assert 14 * 0.25 / 50 <= elapsed < 2.0  # fourteen 250 ms gaps at 50x
    assert main(["sessions", "replay", "s-1", "--speed", "0"]) == 2
    capsys.readouterr()


def test_cli_without_a_dev_stack_or_project_says_how_to_fix_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sessions", "list", "--dev-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "no dev stack state" in err and "--project" in err


def test_parse_since_forms() -> None:
    assert cmd.parse_since("90m", now_ms=10_000_000) == 10_000_000 - 5_400_000
    assert cmd.parse_since("2025-01-31T01:00:00+01:00", now_ms=0) == 1_738_281_600_000
    assert GENESIS == "0" * 64
