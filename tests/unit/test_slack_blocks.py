"""Slack Block Kit messages (limits, escaping, truncation) and Slack request signatures."""

from __future__ import annotations

import doctest
import hashlib
import hmac
import json
from typing import Any

import bqgate.dev.slack_standin as standin
import bqgate.slack_blocks as sb
import pytest
from bqgate.classification import Classification
from bqgate.errors import Unauthenticated
from bqgate.jobs import Job
from bqgate.vocabulary import human_bytes
from hypothesis import given, settings
from hypothesis import strategies as st

# Text without lone surrogates (which no UTF-8 JSON request could carry anyway).
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=9000)


def job(sql: str = "SELECT 1", **kw: Any) -> Job:
    base: dict[str, Any] = dict(
        job_id="j1",
        project="p",
        location="US",
        sql=sql,
        owner="agent@x.io",
        groups=["agents"],
        bytes_estimate=5 * 1024**3,
        created_ms=0,
        expire_at_ms=900_000,
        classification=Classification(tables=("p.finance.ledger",), reasons=("restricted: read",)),
    )
    base.update(kw)
    return Job(**base)


def all_texts(blocks: list[dict[str, Any]]) -> list[tuple[str, str]]:
    out = []
    for b in blocks:
        if "text" in b:
            out.append((b["type"], b["text"]["text"]))
        for f in b.get("fields") or []:
            out.append(("field", f["text"]))
        for e in b.get("elements") or []:
            if e.get("type") == "mrkdwn":
                out.append(("context", e["text"]))
    return out


def test_doctests_of_the_slack_modules() -> None:
    for mod in (sb, standin):
        result = doctest.testmod(mod)
        assert result.attempted > 0 and result.failed == 0


def test_request_message_shows_what_an_approver_needs() -> None:
    msg = sb.request_message(job("SELECT * FROM `p.finance.ledger` WHERE amount > 5"))
    text = json.dumps(msg)
    for expected in (
        "agent@x.io",
        "agents",
        "p.finance.ledger",
        "restricted: read",
        "5.0 GiB (5,368,709,120 bytes)",
        "amount &gt; 5",
        "<!date^900^",
    ):
        assert expected in text
    actions = next(b for b in msg["blocks"] if b["type"] == "actions")
    assert [(e["action_id"], e["value"]) for e in actions["elements"]] == [
        ("bqgate_approve", "j1"),
        ("bqgate_deny", "j1"),
    ]
    standin.check_blocks(msg["blocks"])


def test_decided_message_drops_the_buttons_and_says_who_when_why() -> None:
    msg = sb.decided_message(
        job(), outcome="denied", actor="bob@x.io", at_ms=60_000, reason="reads <payroll>"
    )
    assert all(b["type"] != "actions" for b in msg["blocks"])
    last = msg["blocks"][-1]["text"]["text"]
    assert last == ":no_entry: Denied by bob@x.io at 1970-01-01 00:01:00 UTC: reads &lt;payroll&gt;"
    partial = sb.decided_message(job(), outcome="recorded", actor="a@x.io", at_ms=0, note="1 of 2")
    assert any(b["type"] == "actions" for b in partial["blocks"])


def test_deny_modal_carries_the_job_and_message() -> None:
    view = sb.deny_modal("j1", channel="C1", ts="1.5", sql_preview="SELECT 1")
    assert json.loads(view["private_metadata"]) == {"job_id": "j1", "channel": "C1", "ts": "1.5"}
    assert any(b.get("block_id") == sb.REASON_BLOCK for b in view["blocks"])
    assert sb.modal_reason({"state": {}}) is None


@settings(max_examples=200, deadline=None)
@given(sql=TEXT)
def test_sql_block_always_fits_and_is_an_exact_prefix(sql: str) -> None:
    text = sb.sql_block(sql)
    assert sb.slack_len(text) <= sb.SECTION_TEXT_MAX
    text.encode("utf-8")  # never a broken character
    assert text.startswith("```")
    body = text[3:].split("```\n_", 1)[0].removesuffix("```")
    safe = sql.strip().replace("```", "`\u200b``")
    assert sb.escape(safe).startswith(body)
    # Never a dangling piece of an escape at the cut.
    assert not body.endswith(("&", "&a", "&am", "&amp", "&l", "&lt", "&g", "&gt"))
    cut = len(body) < len(sb.escape(safe))
    assert cut == ("SQL truncated" in text)


def test_long_sql_with_wide_characters_is_cut_between_characters() -> None:
    sql = "SELECT '" + "😀é<&" * 2000 + "'"
    text = sb.sql_block(sql)
    assert sb.slack_len(text) <= 3000 and "SQL truncated" in text
    assert "\ud83d" not in text.encode("utf-16", "surrogatepass").decode("utf-16")[-5:]


@settings(max_examples=100, deadline=None)
@given(
    sql=TEXT,
    owner=st.text(min_size=1, max_size=500),
    reasons=st.lists(TEXT, max_size=5),
    tables=st.lists(st.text(max_size=300), max_size=30),
)
def test_every_message_respects_slack_limits(
    sql: str, owner: str, reasons: list[str], tables: list[str]
) -> None:
    j = job(
        sql,
        owner=owner,
        classification=Classification(tables=tuple(tables), reasons=tuple(reasons)),
    )
    for msg in (
        sb.request_message(j),
        sb.decided_message(j, outcome="denied", actor=owner, at_ms=0, reason=sql[:500]),
    ):
        standin.check_blocks(msg["blocks"])
        for kind, text in all_texts(msg["blocks"]):
            limit = {"header": 150, "field": 2000, "context": 2000}.get(kind, 3000)
            assert sb.slack_len(text) <= limit, kind


@pytest.mark.parametrize(
    "n,expected",
    [
        (None, "unknown (not estimated yet)"),
        (1023, "1023 B"),
        (1024, "1.0 KiB (1,024 bytes)"),
        (3 * 1024**2, "3.0 MiB (3,145,728 bytes)"),
    ],
)
def test_human_bytes(n: int | None, expected: str) -> None:
    assert human_bytes(n) == expected


# --------------------------------------------------------------------------- signatures


def slack_reference_signature(secret: str, ts: str, body: bytes) -> str:
    """Slack's documented algorithm, written out independently."""
    basestring = f"v0:{ts}:".encode() + body
    return "v0=" + hmac.new(secret.encode(), basestring, hashlib.sha256).hexdigest()


def test_signature_matches_slacks_documented_example() -> None:
    # The example from Slack's "Verifying requests from Slack" page.
    secret = "8f742231b10e8888abcd99yyyzzz85a5"
    ts = "1531420618"
    body = (
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
        b"channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
        b"command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2F"
        b"commands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
        b"trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    )
    expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    assert sb.sign(secret, ts, body) == expected == slack_reference_signature(secret, ts, body)
    sb.verify_signature(secret, ts, expected, body, now=1531420618 + 299)


@pytest.mark.parametrize(
    "ts,sig,now,message",
    [
        ("1000", None, 1000, "missing Slack signature headers"),
        (None, "v0=x", 1000, "missing Slack signature headers"),
        ("abc", "v0=x", 1000, "bad Slack request timestamp"),
        ("1000", "GOOD", 1301, "stale Slack request"),
        ("1000", "GOOD", 699, "stale Slack request"),
        ("1000", "v0=" + "0" * 64, 1000, "bad Slack signature"),
        ("1000", "v0=ünïcode", 1000, "bad Slack signature"),
    ],
)
def test_signature_rejections(ts: str | None, sig: str | None, now: float, message: str) -> None:
    body = b"payload=%7B%7D"
    if sig == "GOOD":
        sig = sb.sign("s", "1000", body)
    with pytest.raises(Unauthenticated, match=message):
        sb.verify_signature("s", ts, sig, body, now=now)


def test_signature_covers_the_body_and_needs_a_secret() -> None:
    sig = sb.sign("s", "1000", b"payload=a")
    with pytest.raises(Unauthenticated, match="bad Slack signature"):
        sb.verify_signature("s", "1000", sig, b"payload=b", now=1000)
    with pytest.raises(Unauthenticated, match="not configured"):
        sb.verify_signature("", "1000", sig, b"payload=a", now=1000)


def test_standin_renders_blocks_with_buttons_for_the_user() -> None:
    msg = {"channel": "C1", "ts": "1.1", **sb.request_message(job("SELECT '<b>'"))}
    page = standin.render_blocks(msg, "U_BOB")
    assert "&lt;b&gt;" in page and "<b>'" not in page
    assert "data-action-id='bqgate_approve'" in page and "value='U_BOB'" in page
