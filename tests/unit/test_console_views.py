"""The console's pure half: SQL highlighting keeps every character and escapes it; view
models say what approvers need; the chain seam reports breaks."""

from __future__ import annotations

import html
import re

from bqgate.audit.chain import Event, seal
from bqgate.chain import ChainKey, Keyring
from bqgate.classification import Classification
from bqgate.console import sql_html, views
from bqgate.jobs import Job
from hypothesis import given, settings
from hypothesis import strategies as st

KEY = ChainKey(b"console-views-test-chain-key-0123456789")
TAG = re.compile(r'<span class="sql-[a-z]">|</span>')


def plain(markup: str) -> str:
    return html.unescape(TAG.sub("", markup))


PIECES = [
    *"`'\"\\-#/*@?;,.()=<>&\n\t abc123_",
    "--",
    "/*",
    "*/",
    "r'",
    'b"',
    "'''",
    "SELECT ",
    " FROM ",
    "ORDER BY",
    "\u00e9",
    "\U0001f600",
]
SQLISH = st.lists(st.sampled_from(PIECES), max_size=60).map("".join)


@settings(max_examples=400, deadline=None)
@given(SQLISH)
def test_highlighting_keeps_every_character_and_adds_only_spans(sql: str) -> None:
    out = sql_html.highlight(sql)
    assert plain(out) == sql
    stripped = TAG.sub("", out)
    assert "<" not in stripped and ">" not in stripped  # everything else is escaped


def test_highlighting_marks_what_the_tokenizer_saw() -> None:
    out = sql_html.highlight("SELECT `p.d.t`, 'x -- not a comment' -- a comment\nFROM t")
    assert '<span class="sql-i">`p.d.t`</span>' in out
    assert '<span class="sql-s">&#x27;x -- not a comment&#x27;</span>' in out
    assert '<span class="sql-c">-- a comment</span>' in out


def test_script_in_sql_is_shown_not_run() -> None:
    out = sql_html.highlight("SELECT '</code><script>alert(1)</script>'")
    assert "<script>" not in out and "&lt;script&gt;" in out


def test_formatting_gives_up_on_what_it_cannot_parse() -> None:
    assert sql_html.formatted("SELEKT 1") is None
    assert sql_html.formatted("SELECT 1; SELECT 2") == "SELECT\n  1;\n\nSELECT\n  2"


def test_inbox_items_are_newest_first_and_carry_the_rewrite_only_when_it_differs() -> None:
    base = {"owner": "a@x", "sql": "SELECT 1", "tables": [], "approvals": [], "required": 2}
    items = views.inbox_items(
        [
            {**base, "job_id": "old", "created_ms": 1},
            {
                **base,
                "job_id": "new",
                "created_ms": 2,
                "rewritten_sql": "SELECT 1 /* masked */",
                "approvals": [{"approver": "b@x", "at_ms": 3, "via": "slack"}],
            },
            {**base, "job_id": "same", "created_ms": 0, "rewritten_sql": "SELECT 1"},
        ],
        lambda p, d: None,
    )
    assert [i.job_id for i in items] == ["new", "old", "same"]
    assert items[0].to_run == "SELECT 1 /* masked */" and items[2].to_run is None
    assert [(v.approver, v.via) for v in items[0].approvals] == [("b@x", "slack")]
    assert items[0].session_id == "job-new" and items[0].required == 2


def test_history_row_of_an_approved_job_that_ran() -> None:
    job = Job(
        job_id="j",
        project="p",
        location="US",
        sql="SELECT 1",
        owner="agent@x",
        state="DONE",
        total_rows=12,
        session_id="s1",
        classification=Classification(tables=("p.d.t",)),
        approval={
            "status": "approved",
            "decided_at_ms": 9,
            "approvals": [
                {"approver": "a@x", "at_ms": 8, "via": "slack"},
                {"approver": "b@x", "at_ms": 9, "via": "console"},
            ],
        },
    )
    row = views.history_row(job)
    assert row.deciders == ("a@x", "b@x") and row.via == "console"
    assert row.outcome == "ran: 12 rows" and row.tables == ("p.d.t",)
    assert (
        views.history_row(Job(**{**job.__dict__, "state": "PENDING"})).outcome
        == "approved, waiting to run"
    )


def _chain() -> list[Event]:
    events: list[Event] = []
    for seq, kind in enumerate(["request", "classification", "result"], start=1):
        data = (
            {"statement": "SELECT 1"}
            if kind == "request"
            else (
                {
                    "schema": [{"name": "x"}],
                    "rows": [[1], [None]],
                    "total_rows": 2,
                    "masking": [{"column": "x", "strategy": "last4"}],
                }
                if kind == "result"
                else {"decision": "allow", "reasons": []}
            )
        )
        events.append(
            seal(
                session_id="s",
                seq=seq,
                kind=kind,
                at_ms=1000 + seq,
                job_id="j1",
                principal="a@x",
                data=data,
                prev=events[-1] if events else None,
                expire_at_ms=10**15,
                key=KEY,
            )
        )
    return events


def test_timeline_groups_events_by_statement_with_result_tables() -> None:
    events = _chain()
    chain = views.check_chain("s", None, events, keys=Keyring([KEY]), anchors=(), now_ms=5000)
    t = views.timeline(None, events, chain)
    (block,) = t.statements
    assert block.sql == "SELECT 1" and block.decision == "allow"
    result = block.steps[-1].result
    assert result is not None and result.columns == ("x",)
    assert result.rows == (("1",), ("NULL",)) and result.masked == ("x (last4)",)
    assert t.chain == views.ChainCheck(
        True, "chain verified: 3 events, events 1 to 3 not yet checkpointed"
    )


def test_the_chain_seam_names_a_removed_event_and_a_foreign_key() -> None:
    events = _chain()
    ring = Keyring([KEY])
    check = views.check_chain("s", None, [events[0], events[2]], keys=ring, anchors=(), now_ms=5000)
    assert not check.intact
    assert check.text.startswith("chain BROKEN: ") and "00000002" in check.text
    other = Keyring([ChainKey(b"not-the-key-that-sealed-these-events!")])
    assert not views.check_chain("s", None, events, keys=other, anchors=(), now_ms=5000).intact
    lines = views.export_jsonl(events).splitlines()
    assert len(lines) == 3 and '"kind":"result"' in lines[2]
