"""Slack messages for approval requests (Block Kit) and Slack request signatures.

Pure: builds plain dicts. Slack's limits are enforced here, not hoped for: a section's
text is at most 3000 characters, a field's 2000, a header's 150, and text is cut only
between characters (never inside a multi-byte character or an ``&amp;`` escape), with
the cut marked.

>>> from bqgate.classification import Classification
>>> from bqgate.jobs import Job
>>> job = Job(job_id="j1", project="p", location="US", sql="SELECT * FROM t WHERE a < 3",
...           owner="agent@x.io", groups=["agents"], bytes_estimate=1536, created_ms=0,
...           expire_at_ms=900_000,
...           classification=Classification(tables=("p.d.t",), reasons=("restricted read",)))
>>> msg = request_message(job)
>>> [b["type"] for b in msg["blocks"]]
['header', 'section', 'section', 'section', 'actions', 'context']
>>> msg["blocks"][2]["text"]["text"]
'```SELECT * FROM t WHERE a &lt; 3```'
>>> [e["action_id"] for e in msg["blocks"][4]["elements"]]
['bqgate_approve', 'bqgate_deny']
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Any

from bqgate.errors import Unauthenticated
from bqgate.jobs import Job
from bqgate.vocabulary import human_bytes

APPROVE_ACTION = "bqgate_approve"
DENY_ACTION = "bqgate_deny"
DENY_CALLBACK = "bqgate_deny_reason"
REASON_BLOCK = "reason_block"
REASON_INPUT = "reason"

SECTION_TEXT_MAX = 3000
FIELD_TEXT_MAX = 2000
HEADER_TEXT_MAX = 150
CONTEXT_TEXT_MAX = 2000
#: Longest age (and clock skew) of a signed Slack request.
SIGNATURE_MAX_AGE_S = 5 * 60

_TRUNCATED = "…"


# --------------------------------------------------------------------------- text helpers


def slack_len(text: str) -> int:
    """Length as Slack may count it: UTF-16 code units (an emoji counts 2).

    Counting this way keeps every text within the limit whichever way Slack counts.

    >>> slack_len("abc"), slack_len("é"), slack_len("😀")
    (3, 1, 2)
    """
    return len(text.encode("utf-16-le")) // 2


def escape(text: str) -> str:
    """Escape Slack's control characters (``&``, ``<``, ``>``) for mrkdwn text.

    >>> escape("a<b & c>d")
    'a&lt;b &amp; c&gt;d'
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_char(ch: str) -> str:
    return {"&": "&amp;", "<": "&lt;", ">": "&gt;"}.get(ch, ch)


def escape_truncated(text: str, limit: int) -> tuple[str, bool]:
    """``escape(text)`` cut to at most ``limit`` (UTF-16 units) between characters.

    Returns the escaped text and whether it was cut. Escapes are never split.

    >>> escape_truncated("a<b", 4)
    ('a', True)
    >>> escape_truncated("a<b", 5)
    ('a&lt;', True)
    >>> escape_truncated("héllo😀", 6)
    ('héllo', True)
    >>> escape_truncated("ok", 2)
    ('ok', False)
    """
    out: list[str] = []
    used = 0
    for ch in text:
        piece = _escape_char(ch)
        cost = slack_len(piece)
        if used + cost > limit:
            return "".join(out), True
        out.append(piece)
        used += cost
    return "".join(out), False


def mrkdwn_line(text: str, limit: int) -> str:
    """Escaped mrkdwn text of at most ``limit`` units, ending in ``…`` if cut.

    >>> mrkdwn_line("x" * 10, 5)
    'xxxx…'
    """
    body, cut = escape_truncated(text, limit)
    if not cut:
        return body
    body, _ = escape_truncated(text, limit - slack_len(_TRUNCATED))
    return body + _TRUNCATED


def plain_line(text: str, limit: int) -> str:
    """Plain text (no escaping) of at most ``limit`` units, ending in ``…`` if cut.

    >>> plain_line("abcdef", 4)
    'abc…'
    """
    if slack_len(text) <= limit:
        return text
    out: list[str] = []
    used = slack_len(_TRUNCATED)
    for ch in text:
        if used + slack_len(ch) > limit:
            break
        out.append(ch)
        used += slack_len(ch)
    return "".join(out) + _TRUNCATED


def sql_block(sql: str, limit: int = SECTION_TEXT_MAX) -> str:
    """The SQL as a mrkdwn code block of at most ``limit`` units, cut safely and marked.

    Triple backticks inside the SQL would end the block early; a zero-width space
    keeps them apart.

    >>> sql_block("SELECT 1")
    '```SELECT 1```'
    >>> text = sql_block("SELECT " + "x, " * 2000)
    >>> slack_len(text) <= 3000, text.endswith("characters_")
    (True, True)
    """
    safe = sql.strip().replace("```", "`\u200b``")
    fence = "```"
    full, cut = escape_truncated(safe, limit - 2 * slack_len(fence))
    if not cut:
        return f"{fence}{full}{fence}"
    note_for = f"\n_{_TRUNCATED} SQL truncated: showing {{shown:,}} of {len(safe):,} characters_"
    budget = limit - 2 * slack_len(fence) - slack_len(note_for.format(shown=len(safe)))
    body, _ = escape_truncated(safe, budget)
    shown = len(body.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    note = f"\n_{_TRUNCATED} SQL truncated: showing {shown:,} of {len(safe):,} characters_"
    return f"{fence}{body}{fence}{note}"


def utc_text(ms: int) -> str:
    """``ms`` since the epoch as UTC text.

    >>> utc_text(0)
    '1970-01-01 00:00:00 UTC'
    """
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def slack_date(ms: int) -> str:
    """A Slack date token (shown in the reader's time zone) with a UTC fallback.

    >>> slack_date(0)
    '<!date^0^{date_short_pretty} {time_secs}|1970-01-01 00:00:00 UTC>'
    """
    return f"<!date^{ms // 1000}^{{date_short_pretty}} {{time_secs}}|{utc_text(ms)}>"


def _bullets(items: Sequence[str], limit: int) -> str:
    if not items:
        return "_none_"
    text = "\n".join(f"• {escape(i)}" for i in items)
    if slack_len(text) <= limit:
        return text
    return mrkdwn_line("\n".join(f"• {i}" for i in items), limit)


# --------------------------------------------------------------------------- messages


def _field(label: str, value: str) -> dict[str, str]:
    head = f"*{label}*\n"
    return {"type": "mrkdwn", "text": head + mrkdwn_line(value, FIELD_TEXT_MAX - len(head))}


def _request_blocks(job: Job, *, extra_reasons: Sequence[str] = ()) -> list[dict[str, Any]]:
    reasons = [*job.classification.reasons, *extra_reasons]
    tables = list(job.classification.tables)
    fields = [
        _field("Requested by", job.owner),
        _field("Groups", ", ".join(job.groups) or "none"),
        _field("Estimated bytes", human_bytes(job.bytes_estimate)),
        _field("Job", job.job_id),
    ]
    return [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "emoji": True,
                "text": plain_line("BigQuery request needs approval", HEADER_TEXT_MAX),
            },
        },
        {"type": "section", "fields": fields},
        {"type": "section", "text": {"type": "mrkdwn", "text": sql_block(job.sql)}},
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": (
                    "*Tables*\n"
                    + _bullets(tables, SECTION_TEXT_MAX // 2 - 20)
                    + "\n*Why approval is needed*\n"
                    + _bullets(reasons, SECTION_TEXT_MAX // 2 - 40)
                ),
            },
        },
    ]


def request_message(job: Job, *, extra_reasons: Sequence[str] = ()) -> dict[str, Any]:
    """``chat.postMessage`` arguments (``text`` and ``blocks``) for an approval request."""
    blocks = _request_blocks(job, extra_reasons=extra_reasons)
    blocks.append(
        {
            "type": "actions",
            "block_id": "bqgate_decision",
            "elements": [
                {
                    "type": "button",
                    "action_id": APPROVE_ACTION,
                    "style": "primary",
                    "value": job.job_id,
                    "text": {"type": "plain_text", "text": "Approve"},
                },
                {
                    "type": "button",
                    "action_id": DENY_ACTION,
                    "style": "danger",
                    "value": job.job_id,
                    "text": {"type": "plain_text", "text": "Deny"},
                },
            ],
        }
    )
    expiry = (
        f"Expires {slack_date(job.expire_at_ms)}"
        if job.expire_at_ms is not None
        else "Does not expire"
    )
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": expiry}]})
    return {
        "text": plain_line(
            f"Approval needed: {job.owner} wants to run a query ({job.job_id})", 300
        ),
        "blocks": blocks,
    }


#: How a decision made outside Slack is named in the updated message (``via`` -> words).
VIA_WORDS = {"console": "in the bqgate console", "api": "through the approver API"}


def decided_message(
    job: Job,
    *,
    outcome: str,
    actor: str | None,
    at_ms: int,
    reason: str | None = None,
    note: str | None = None,
    via: str | None = None,
) -> dict[str, Any]:
    """``chat.update`` arguments after a decision: the request, minus the buttons, plus
    who decided, where (``via``, when not Slack itself), when and why. ``outcome`` is
    approved, denied, expired or recorded (a vote, more needed: the buttons stay).

    >>> msg = decided_message(Job(job_id="j", project="p", location="US", sql="SELECT 1",
    ...                           owner="a@x"), outcome="approved", actor="bob@x", at_ms=0,
    ...                       via="console")
    >>> msg["blocks"][-1]["text"]["text"]
    ':white_check_mark: Approved by bob@x in the bqgate console at 1970-01-01 00:00:00 UTC'
    """
    blocks = _request_blocks(job)
    icons = {
        "approved": ":white_check_mark: Approved",
        "denied": ":no_entry: Denied",
        "expired": ":hourglass: Expired",
        "ended": ":stop_sign: Ended",
        "recorded": ":ballot_box_with_check: Approval recorded",
    }
    head = icons.get(outcome, outcome)
    line = f"{head} by {actor}" if actor else head
    if actor and via in VIA_WORDS:
        line += f" {VIA_WORDS[via]}"
    line += f" at {utc_text(at_ms)}"
    if reason:
        line += f": {reason}"
    if note:
        line += f" ({note})"
    if outcome == "recorded":
        blocks.append(request_message(job)["blocks"][-2])  # keep the buttons
    blocks.append(
        {
            "type": "section",
            "block_id": "bqgate_outcome",
            "text": {"type": "mrkdwn", "text": mrkdwn_line(line, SECTION_TEXT_MAX)},
        }
    )
    return {"text": plain_line(f"{line} ({job.job_id})", 300), "blocks": blocks}


def deny_modal(
    job_id: str, *, channel: str | None = None, ts: str | None = None, sql_preview: str = ""
) -> dict[str, Any]:
    """The ``views.open`` view asking for a denial reason.

    >>> v = deny_modal("j1", channel="C1", ts="1.2")
    >>> v["callback_id"], json.loads(v["private_metadata"])["job_id"]
    ('bqgate_deny_reason', 'j1')
    """
    meta = json.dumps({"job_id": job_id, "channel": channel, "ts": ts}, separators=(",", ":"))
    blocks: list[dict[str, Any]] = [
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": mrkdwn_line(
                    f"Deny job {job_id}? The agent will see your reason.", SECTION_TEXT_MAX
                ),
            },
        },
    ]
    if sql_preview:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": sql_block(sql_preview, 1000)}}
        )
    blocks.append(
        {
            "type": "input",
            "block_id": REASON_BLOCK,
            "label": {"type": "plain_text", "text": "Reason"},
            "element": {
                "type": "plain_text_input",
                "action_id": REASON_INPUT,
                "multiline": True,
                "max_length": 500,
                "placeholder": {"type": "plain_text", "text": "Why is this denied?"},
            },
        }
    )
    return {
        "type": "modal",
        "callback_id": DENY_CALLBACK,
        "private_metadata": meta,
        "title": {"type": "plain_text", "text": "Deny request"},
        "submit": {"type": "plain_text", "text": "Deny"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": blocks,
    }


def modal_reason(view: Mapping[str, Any]) -> str | None:
    """The reason typed into a submitted :func:`deny_modal`.

    >>> modal_reason({"state": {"values": {"reason_block": {"reason": {"value": "no"}}}}})
    'no'
    """
    try:
        value = view["state"]["values"][REASON_BLOCK][REASON_INPUT]["value"]
    except (KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


# --------------------------------------------------------------------------- signatures


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's request signature: ``v0=`` + HMAC-SHA256 of ``v0:{timestamp}:{body}``.

    >>> sign("s", "1", b"x")
    'v0=a665c97a02f3cd4004634f2d4dd3fe0d7e202001d77e68ee2be92423b8d2ea10'
    """
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    now: float,
    max_age_s: int = SIGNATURE_MAX_AGE_S,
) -> None:
    """Check a Slack request's signature; raise :class:`Unauthenticated` if it is not good.

    The timestamp must be within ``max_age_s`` of ``now`` (either way), and the
    signature is compared in constant time.

    >>> body = b"payload=%7B%7D"
    >>> verify_signature("s", "1000", sign("s", "1000", body), body, now=1010)
    >>> verify_signature("s", "1000", sign("s", "1000", body), body, now=1400)
    Traceback (most recent call last):
    bqgate.errors.Unauthenticated: stale Slack request: timestamp is 400s away from now
    >>> verify_signature("s", "1000", sign("t", "1000", body), body, now=1010)
    Traceback (most recent call last):
    bqgate.errors.Unauthenticated: bad Slack signature
    """
    if not secret:
        raise Unauthenticated("Slack signing secret is not configured")
    if not timestamp or not signature:
        raise Unauthenticated("missing Slack signature headers")
    try:
        ts = int(timestamp) if len(timestamp) <= 20 else None
    except ValueError:
        ts = None
    if ts is None:
        raise Unauthenticated("bad Slack request timestamp")
    if abs(now - ts) > max_age_s:
        raise Unauthenticated(
            f"stale Slack request: timestamp is {abs(int(now) - ts)}s away from now"
        )
    expected = sign(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        raise Unauthenticated("bad Slack signature")


__all__ = [
    "APPROVE_ACTION",
    "DENY_ACTION",
    "DENY_CALLBACK",
    "REASON_BLOCK",
    "REASON_INPUT",
    "decided_message",
    "deny_modal",
    "escape",
    "modal_reason",
    "request_message",
    "sign",
    "sql_block",
    "verify_signature",
]
