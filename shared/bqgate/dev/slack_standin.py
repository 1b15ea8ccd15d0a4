"""Local Slack stand-in: the Web API methods bqgate calls, and a page to click on.

Run as ``python -m bqgate.dev.slack_standin --port P --state-dir D`` (the dev stack
does), with the functions' environment: ``BQGATE_SLACK_BOT_TOKEN`` (checked on every
Web API call), ``BQGATE_SLACK_SIGNING_SECRET`` and ``BQGATE_APPROVALS_URL``.

* ``/api/<method>``: ``chat.postMessage`` (with message ``metadata``), ``chat.update``,
  ``chat.delete``, ``chat.postEphemeral``, ``conversations.history`` (channel ids only,
  newest first, paged by cursor, metadata with ``include_all_metadata``),
  ``conversations.list``, ``users.info``, ``views.open``, ``auth.test``, shaped like
  Slack's answers (and rejecting blocks over Slack's limits, as Slack does).
* ``/``: every approval message, rendered from its blocks, with working buttons per
  user (pick who you are). A click sends the approvals function a correctly signed
  interaction payload, as Slack would; Deny opens the modal and submits it.
* ``/_ui/click`` and ``/_ui/submit``: what the page's forms post (answer JSON when
  asked with ``Accept: application/json``, else redirect back to the page).
* ``/_test/messages``: messages, ephemeral notes, views and interactions as JSON.
* ``/_test/hang`` (POST ``{"seconds": S}``): Slack's API hangs for ``S`` seconds (a fault
  to test against): every Web API call that arrives meanwhile gets no answer until the
  hang ends, and is *then* carried out, in arrival order, as Slack did in the outage this
  reproduces (a client that timed out never learns that its message was posted).
  ``{"seconds": 0}`` ends a hang; GET says how long is left.

Messages are kept in memory and in ``<state-dir>/slack/messages.json``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import html
import itertools
import json
import os
import re
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bqgate.slack_blocks import FIELD_TEXT_MAX, HEADER_TEXT_MAX, SECTION_TEXT_MAX, sign, slack_len

TEAM = {"id": "T_BQGATE", "domain": "bqgate-dev"}
#: Channel name -> id (Slack ids: C + upper-case letters and digits).
CHANNEL_ID = "C0BQGATE01"
CHANNELS = {"#bqgate-approvals": CHANNEL_ID, "bqgate-approvals": CHANNEL_ID}
#: Most messages one conversations.history page returns (Slack: 999).
HISTORY_MAX = 999
#: Slack user id -> (name, email). Mallory is not an approver; the agent owner is a
#: human who owns an agent identity (give it in a policy's approvals.owners).
USERS: dict[str, tuple[str, str]] = {
    "U_ALICE": ("alice", "alice@example.com"),
    "U_BOB": ("bob", "bob@example.com"),
    "U_AGENT_OWNER": ("owner", "owner@example.com"),
    "U_MALLORY": ("mallory", "mallory@example.com"),
}
#: How long a trigger_id may be used for views.open (Slack: 3 seconds).
TRIGGER_TTL_S = 3.0
_MAX_BODY = 1024 * 1024


class Invalid(Exception):
    """A Web API call Slack would reject; the message is Slack's error code."""


def check_blocks(blocks: Any) -> None:
    """Reject blocks Slack would reject (the limits bqgate must respect).

    >>> check_blocks([{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}])
    Traceback (most recent call last):
    bqgate.dev.slack_standin.Invalid: invalid_blocks: section text longer than 3000
    """
    if blocks is None:
        return
    if not isinstance(blocks, list) or len(blocks) > 50:
        raise Invalid("invalid_blocks: at most 50 blocks")
    for b in blocks:
        if not isinstance(b, dict) or "type" not in b:
            raise Invalid("invalid_blocks: a block without a type")
        text = (b.get("text") or {}).get("text")
        if b["type"] == "section":
            if text is not None and slack_len(text) > SECTION_TEXT_MAX:
                raise Invalid(f"invalid_blocks: section text longer than {SECTION_TEXT_MAX}")
            fields = b.get("fields") or []
            too_long = any(slack_len(f.get("text", "")) > FIELD_TEXT_MAX for f in fields)
            if len(fields) > 10 or too_long:
                raise Invalid("invalid_blocks: section fields too many or too long")
        if b["type"] == "header" and text is not None and slack_len(text) > HEADER_TEXT_MAX:
            raise Invalid(f"invalid_blocks: header longer than {HEADER_TEXT_MAX}")
        for el in b.get("elements") or []:
            if el.get("type") == "button" and (
                not el.get("action_id") or len(str(el.get("value", ""))) > 2000
            ):
                raise Invalid("invalid_blocks: bad button")
        if text is not None:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise Invalid("invalid_blocks: text is not valid UTF-8") from None


# --------------------------------------------------------------------------- rendering

_TOKEN = re.compile(r"<(![^>|]*|[^>|]*)(?:\|([^>]*))?>")


def _slack_unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def render_mrkdwn(text: str) -> str:
    """HTML for a (small subset of) Slack mrkdwn.

    >>> render_mrkdwn("*Hi* a &lt; b\\n```x &amp; y```")
    '<b>Hi</b> a &lt; b<br><pre>x &amp; y</pre>'
    >>> render_mrkdwn("Expires <!date^0^{time}|1970-01-01 00:00:00 UTC>")
    'Expires 1970-01-01 00:00:00 UTC'
    """
    out = []
    for i, part in enumerate(text.split("```")):
        if i % 2 == 1:
            out.append("<pre>" + html.escape(_slack_unescape(part)) + "</pre>")
            continue
        part = _TOKEN.sub(lambda m: m.group(2) or m.group(1), part)
        s = html.escape(_slack_unescape(part))
        s = re.sub(r"\*([^*\n]+)\*", r"<b>\1</b>", s)
        s = re.sub(r"(?<![A-Za-z0-9])_([^_\n]+)_(?![A-Za-z0-9])", r"<i>\1</i>", s)
        s = re.sub(r"`([^`\n]+)`", r"<code>\1</code>", s)
        out.append(s.replace("\n", "<br>"))
    return "".join(out)


def _text(obj: Any) -> str:
    if not isinstance(obj, dict):
        return ""
    if obj.get("type") == "mrkdwn":
        return render_mrkdwn(str(obj.get("text", "")))
    return html.escape(str(obj.get("text", "")))


def render_blocks(message: dict[str, Any], user: str) -> str:
    """One message as HTML; buttons are forms posting to ``/_ui/click`` as ``user``."""
    parts = []
    for b in message.get("blocks") or []:
        kind = b.get("type")
        if kind == "header":
            parts.append(f"<h3>{_text(b.get('text'))}</h3>")
        elif kind == "section":
            if b.get("text"):
                parts.append(f"<div class='section'>{_text(b['text'])}</div>")
            if b.get("fields"):
                cells = "".join(f"<div class='field'>{_text(f)}</div>" for f in b["fields"])
                parts.append(f"<div class='fields'>{cells}</div>")
        elif kind == "context":
            items = " ".join(_text(e) for e in b.get("elements") or [])
            parts.append(f"<div class='context'>{items}</div>")
        elif kind == "actions":
            buttons = []
            for el in b.get("elements") or []:
                if el.get("type") != "button":
                    continue
                fields = {
                    "user": user,
                    "channel": message["channel"],
                    "ts": message["ts"],
                    "action_id": el.get("action_id", ""),
                    "value": el.get("value", ""),
                    "block_id": b.get("block_id", ""),
                }
                hidden = "".join(
                    f"<input type='hidden' name='{k}' value='{html.escape(str(v))}'>"
                    for k, v in fields.items()
                )
                style = html.escape(str(el.get("style", "")))
                buttons.append(
                    f"<form class='action' method='post' action='/_ui/click'>{hidden}"
                    f"<button type='submit' class='{style}' "
                    f"data-action-id='{html.escape(str(el.get('action_id', '')))}' "
                    f"data-value='{html.escape(str(el.get('value', '')))}'>"
                    f"{_text(el.get('text'))}</button></form>"
                )
            parts.append(f"<div class='actions'>{''.join(buttons)}</div>")
    return "".join(parts)


PAGE_STYLE = """
body{font-family:sans-serif;max-width:60rem;margin:1rem auto;color:#1d1c1d}
.message{border:1px solid #ddd;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}
.fields{display:grid;grid-template-columns:1fr 1fr;gap:.5rem}
pre{background:#f6f6f6;padding:.5rem;white-space:pre-wrap;word-break:break-all}
.context{color:#616061;font-size:.85rem}.actions form{display:inline}
button{margin-right:.5rem;padding:.3rem 1rem}.primary{background:#007a5a;color:#fff}
.danger{background:#e01e5a;color:#fff}.ephemeral{background:#fff8e1;padding:.5rem;margin:.3rem 0}
.modal{border:2px solid #1264a3;padding:1rem;margin:1rem 0}.error{color:#e01e5a}
"""


# --------------------------------------------------------------------------- state


class SlackState:
    """Messages, ephemeral notes, open views and interactions; persisted as JSON."""

    def __init__(
        self, state_dir: Path, *, token: str, signing_secret: str, approvals_url: str
    ) -> None:
        self.path = state_dir / "slack" / "messages.json"
        self.token = token
        self.signing_secret = signing_secret
        self.approvals_url = approvals_url.rstrip("/")
        self.lock = threading.RLock()
        self.messages: list[dict[str, Any]] = []
        self.ephemerals: list[dict[str, Any]] = []
        self.views: dict[str, dict[str, Any]] = {}
        self.interactions: list[dict[str, Any]] = []
        self.triggers: dict[str, tuple[str, float]] = {}
        self.deleted: list[dict[str, Any]] = []
        self._seq = itertools.count(1)
        # Faults: calls arriving before hang_until wait for it; all calls run in arrival order.
        self.hang_until = 0.0
        self.held = 0
        self._turn = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        self.messages = list(data.get("messages") or [])
        self.ephemerals = list(data.get("ephemerals") or [])
        self.views = dict(data.get("views") or {})
        self._seq = itertools.count(len(self.messages) + len(self.ephemerals) + 1)

    def save(self) -> None:
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(
                json.dumps(
                    {"messages": self.messages, "ephemerals": self.ephemerals, "views": self.views},
                    indent=1,
                )
            )
            tmp.replace(self.path)

    def _ts(self) -> str:
        return f"{int(time.time())}.{next(self._seq):06d}"

    # --- Web API -------------------------------------------------------------------

    def hang(self, seconds: float) -> dict[str, Any]:
        """Make every Web API call of the next ``seconds`` wait until then (0 ends a hang)."""
        with self._turn:
            self.hang_until = time.monotonic() + max(0.0, seconds) if seconds > 0 else 0.0
            self._turn.notify_all()
        return self.hang_status()

    def hang_status(self) -> dict[str, Any]:
        with self._turn:
            left = max(0.0, self.hang_until - time.monotonic())
            return {"hanging": left > 0, "seconds_left": round(left, 3), "held": self.held}

    def call(self, method: str, args: dict[str, Any], auth: str | None) -> dict[str, Any]:
        """One Web API call, in arrival order; during a hang, answered when it ends."""
        with self._turn:
            ticket = self._next_ticket
            self._next_ticket += 1
            held = time.monotonic() < self.hang_until
            self.held += held
            while time.monotonic() < self.hang_until or self._serving != ticket:
                left = self.hang_until - time.monotonic()
                self._turn.wait(timeout=left if left > 0 else 1.0)
        try:
            return self._call(method, args, auth)
        finally:
            with self._turn:
                self._serving += 1
                self.held -= held
                self._turn.notify_all()

    def _call(self, method: str, args: dict[str, Any], auth: str | None) -> dict[str, Any]:
        if self.token and auth != f"Bearer {self.token}":
            return {"ok": False, "error": "invalid_auth"}
        handler = getattr(self, "api_" + method.replace(".", "_"), None)
        if handler is None:
            return {"ok": False, "error": "unknown_method"}
        try:
            result: dict[str, Any] = handler(args)
        except Invalid as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, **result}

    def api_auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "http://bqgate-dev.slack.invalid/",
            "team": "bqgate-dev",
            "user": "bqgate",
            "team_id": TEAM["id"],
            "user_id": "U_BQGATE_BOT",
            "bot_id": "B_BQGATE",
        }

    @staticmethod
    def _blocks(args: dict[str, Any]) -> list[dict[str, Any]] | None:
        blocks = args.get("blocks")
        if isinstance(blocks, str):
            try:
                blocks = json.loads(blocks)
            except ValueError:
                raise Invalid("invalid_blocks_format") from None
        check_blocks(blocks)
        return blocks

    def _channel(self, name: Any) -> str:
        if not isinstance(name, str) or not name:
            raise Invalid("channel_not_found")
        return CHANNELS.get(name, name)

    @staticmethod
    def _metadata(args: dict[str, Any]) -> dict[str, Any] | None:
        meta = args.get("metadata")
        if meta is None or meta == "":
            return None
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except ValueError:
                raise Invalid("invalid_metadata_format") from None
        if (
            not isinstance(meta, dict)
            or not isinstance(meta.get("event_type"), str)
            or not isinstance(meta.get("event_payload"), dict)
        ):
            raise Invalid("invalid_metadata_format")
        return {"event_type": meta["event_type"], "event_payload": meta["event_payload"]}

    def api_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args.get("channel"))
        blocks = self._blocks(args)
        metadata = self._metadata(args)
        if not args.get("text") and not blocks:
            raise Invalid("no_text")
        with self.lock:
            msg = {
                "channel": channel,
                "ts": self._ts(),
                "text": args.get("text", ""),
                "blocks": blocks or [],
                "updates": 0,
                "bot_id": "B_BQGATE",
                "app_id": "A_BQGATE",
            }
            if metadata is not None:
                msg["metadata"] = metadata
            self.messages.append(msg)
            self.save()
        return {"channel": channel, "ts": msg["ts"], "message": self._as_slack(msg, True)}

    @staticmethod
    def _as_slack(msg: dict[str, Any], with_metadata: bool) -> dict[str, Any]:
        """A stored message as Slack's API returns one."""
        out = {
            "type": "message",
            "subtype": "bot_message",
            "text": msg["text"],
            "ts": msg["ts"],
            "bot_id": msg.get("bot_id", "B_BQGATE"),
            "app_id": msg.get("app_id", "A_BQGATE"),
            "blocks": msg["blocks"],
        }
        if msg.get("updates"):
            out["edited"] = {"user": "U_BQGATE_BOT", "ts": msg["ts"]}
        if with_metadata and msg.get("metadata"):
            out["metadata"] = msg["metadata"]
        return out

    def api_chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel"), args.get("ts")
        with self.lock:
            for i, msg in enumerate(self.messages):
                if msg["channel"] == channel and msg["ts"] == ts:
                    self.deleted.append(self.messages.pop(i))
                    self.save()
                    return {"channel": channel, "ts": ts}
        raise Invalid("message_not_found")

    def api_conversations_list(self, args: dict[str, Any]) -> dict[str, Any]:
        ids = sorted(set(CHANNELS.values()))
        names = {
            cid: next(n for n, c in CHANNELS.items() if c == cid and not n.startswith("#"))
            for cid in ids
        }
        channels = [
            {
                "id": cid,
                "name": names[cid],
                "is_channel": True,
                "is_private": False,
                "is_archived": False,
                "is_member": True,
            }
            for cid in ids
        ]
        return {"channels": channels, "response_metadata": {"next_cursor": ""}}

    def api_conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if channel not in set(CHANNELS.values()):
            raise Invalid("channel_not_found")  # Slack wants the id, never a #name
        try:
            oldest = float(args.get("oldest") or 0)
            latest = float(args.get("latest") or time.time() + 1)
            limit = min(max(int(args.get("limit") or 100), 1), HISTORY_MAX)
            start = (
                int(base64.urlsafe_b64decode(str(args["cursor"])).decode().split(":")[1])
                if args.get("cursor")
                else 0
            )
        except (ValueError, IndexError, binascii.Error):
            raise Invalid("invalid_arguments") from None
        inclusive = str(args.get("inclusive", "")).lower() in ("1", "true")
        metadata = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        with self.lock:
            chosen = [
                m
                for m in self.messages
                if m["channel"] == channel
                and (
                    oldest <= float(m["ts"]) <= latest
                    if inclusive
                    else oldest < float(m["ts"]) < latest
                )
            ]
        chosen.sort(key=lambda m: float(m["ts"]), reverse=True)  # newest first, as Slack
        page = chosen[start : start + limit]
        more = start + limit < len(chosen)
        cursor = base64.urlsafe_b64encode(f"next:{start + limit}".encode()).decode() if more else ""
        return {
            "messages": [self._as_slack(m, metadata) for m in page],
            "has_more": more,
            "pin_count": 0,
            "response_metadata": {"next_cursor": cursor},
        }

    def api_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel"), args.get("ts")
        blocks = self._blocks(args)
        with self.lock:
            for msg in self.messages:
                if msg["channel"] == channel and msg["ts"] == ts:
                    msg["text"] = args.get("text", msg["text"])
                    if blocks is not None:
                        msg["blocks"] = blocks
                    msg["updates"] = msg.get("updates", 0) + 1
                    self.save()
                    return {"channel": channel, "ts": ts, "text": msg["text"]}
        raise Invalid("message_not_found")

    def api_chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args.get("channel"))
        if args.get("user") not in USERS:
            raise Invalid("user_not_in_channel")
        with self.lock:
            note = {
                "channel": channel,
                "user": args["user"],
                "text": args.get("text", ""),
                "ts": self._ts(),
            }
            self.ephemerals.append(note)
            self.save()
        return {"message_ts": note["ts"]}

    def api_users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        uid = args.get("user")
        if uid not in USERS:
            raise Invalid("user_not_found")
        name, email = USERS[uid]
        return {
            "user": {
                "id": uid,
                "team_id": TEAM["id"],
                "name": name,
                "deleted": False,
                "is_bot": False,
                "real_name": name.title(),
                "profile": {"email": email, "real_name": name.title()},
            }
        }

    def api_views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        view = args.get("view")
        if isinstance(view, str):
            view = json.loads(view)
        if not isinstance(view, dict) or view.get("type") != "modal":
            raise Invalid("invalid_arguments")
        with self.lock:
            trigger = self.triggers.pop(str(args.get("trigger_id")), None)
            if trigger is None:
                raise Invalid("invalid_trigger_id")
            user, issued = trigger
            if time.monotonic() - issued > TRIGGER_TTL_S:
                raise Invalid("expired_trigger_id")
            view_id = "V" + secrets.token_hex(5).upper()
            self.views[view_id] = {
                "id": view_id,
                "user": user,
                "view": view,
                "open": True,
                "errors": {},
            }
            self.save()
        return {"view": {"id": view_id, **view}}

    # --- interactions (what Slack sends the approvals function) ------------------------

    def _user_obj(self, user: str) -> dict[str, Any]:
        name, _ = USERS[user]
        return {"id": user, "username": name, "name": name, "team_id": TEAM["id"]}

    def _forward(self, payload: dict[str, Any]) -> tuple[int, Any, float]:
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        ts = str(int(time.time()))
        req = urllib.request.Request(
            self.approvals_url + "/slack/interactions",
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Slack-Request-Timestamp": ts,
                "X-Slack-Signature": sign(self.signing_secret, ts, body),
                "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
            },
        )
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except OSError as exc:
            return 0, {"error": f"approvals function unreachable: {exc}"}, time.monotonic() - t0
        try:
            answer: Any = json.loads(raw) if raw else {}
        except ValueError:
            answer = raw.decode("utf-8", "replace")
        return status, answer, time.monotonic() - t0

    def _log(
        self, kind: str, user: str, status: int, answer: Any, elapsed: float
    ) -> dict[str, Any]:
        entry = {
            "type": kind,
            "user": user,
            "status": status,
            "response": answer,
            "elapsed_ms": round(elapsed * 1000, 1),
            # Slack gives up on an interaction after 3 seconds.
            "within_deadline": elapsed < 3.0,
        }
        with self.lock:
            self.interactions.append(entry)
        return entry

    def click(
        self, user: str, channel: str, ts: str, action_id: str, value: str, block_id: str = ""
    ) -> dict[str, Any]:
        """A user clicks a button on a message: send block_actions, as Slack would."""
        if user not in USERS:
            raise Invalid("unknown user")
        with self.lock:
            msg = next(
                (m for m in self.messages if m["channel"] == channel and m["ts"] == ts), None
            )
            if msg is None:
                raise Invalid("message_not_found")
            trigger = f"{int(time.time())}.{secrets.token_hex(6)}"
            self.triggers[trigger] = (user, time.monotonic())
            views_before = set(self.views)
        payload = {
            "type": "block_actions",
            "user": self._user_obj(user),
            "api_app_id": "A_BQGATE",
            "token": "deprecated-verification-token",
            "team": TEAM,
            "trigger_id": trigger,
            "container": {
                "type": "message",
                "message_ts": ts,
                "channel_id": channel,
                "is_ephemeral": False,
            },
            "channel": {"id": channel, "name": "bqgate-approvals"},
            "message": {"type": "message", "ts": ts, "text": msg["text"], "blocks": msg["blocks"]},
            "actions": [
                {
                    "type": "button",
                    "action_id": action_id,
                    "block_id": block_id,
                    "value": value,
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        status, answer, elapsed = self._forward(payload)
        entry = self._log("block_actions", user, status, answer, elapsed)
        with self.lock:
            opened = [v for k, v in self.views.items() if k not in views_before]
        return {**entry, "views": opened}

    def submit(self, user: str, view_id: str, reason: str) -> dict[str, Any]:
        """A user submits an open modal: send view_submission, as Slack would."""
        with self.lock:
            entry = self.views.get(view_id)
            if entry is None or not entry["open"] or entry["user"] != user:
                raise Invalid("view_not_found")
            view = entry["view"]
        state: dict[str, Any] = {}
        for b in view.get("blocks") or []:
            if b.get("type") == "input":
                el = b.get("element") or {}
                state[b.get("block_id", "")] = {
                    el.get("action_id", ""): {
                        "type": el.get("type", "plain_text_input"),
                        "value": reason,
                    }
                }
        payload = {
            "type": "view_submission",
            "user": self._user_obj(user),
            "team": TEAM,
            "api_app_id": "A_BQGATE",
            "token": "deprecated-verification-token",
            "trigger_id": f"{int(time.time())}.{secrets.token_hex(6)}",
            "view": {
                "id": view_id,
                "team_id": TEAM["id"],
                "type": "modal",
                "callback_id": view.get("callback_id"),
                "private_metadata": view.get("private_metadata", ""),
                "blocks": view.get("blocks"),
                "state": {"values": state},
                "hash": secrets.token_hex(8),
            },
        }
        status, answer, elapsed = self._forward(payload)
        result = self._log("view_submission", user, status, answer, elapsed)
        with self.lock:
            rejected = isinstance(answer, dict) and answer.get("response_action") == "errors"
            if status == 200 and rejected:
                entry["errors"] = answer.get("errors") or {}
            elif status == 200:
                entry["open"] = False
                entry["errors"] = {}
            self.save()
        return result

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            snap: dict[str, Any] = json.loads(
                json.dumps(
                    {
                        "messages": self.messages,
                        "ephemerals": self.ephemerals,
                        "views": list(self.views.values()),
                        "interactions": self.interactions,
                        "deleted": self.deleted,
                    }
                )
            )
            return snap

    # --- page ----------------------------------------------------------------------

    def page(self, user: str) -> str:
        user = user if user in USERS else "U_ALICE"
        snap = self.snapshot()
        options = "".join(
            f"<option value='{uid}'{' selected' if uid == user else ''}>"
            f"{html.escape(name)} ({html.escape(email)})</option>"
            for uid, (name, email) in USERS.items()
        )
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>bqgate Slack stand-in</title><style>{PAGE_STYLE}</style></head><body>",
            "<h1>#bqgate-approvals <small>(bqgate Slack stand-in)</small></h1>",
            "<form id='who' method='get' action='/'>You are: "
            f"<select name='user' id='user' onchange='this.form.submit()'>{options}</select> "
            "<button type='submit'>Switch</button> <a href=''>Refresh</a></form>",
        ]
        for v in snap["views"]:
            if not v["open"] or v["user"] != user:
                continue
            view = v["view"]
            title = html.escape(str((view.get("title") or {}).get("text", "")))
            intro = "".join(
                f"<div class='section'>{_text(b.get('text'))}</div>"
                for b in view.get("blocks") or []
                if b.get("type") == "section"
            )
            errors = "".join(
                f"<p class='error'>{html.escape(str(e))}</p>"
                for e in (v.get("errors") or {}).values()
            )
            parts.append(
                f"<div class='modal' id='view-{v['id']}'><h2>{title}</h2>{intro}{errors}"
                "<form method='post' action='/_ui/submit'>"
                f"<input type='hidden' name='user' value='{user}'>"
                f"<input type='hidden' name='view_id' value='{v['id']}'>"
                "<label>Reason<br>"
                "<textarea name='reason' rows='3' cols='60'></textarea></label><br>"
                "<button type='submit' class='danger' name='submit_view'>"
                f"{html.escape(str((view.get('submit') or {}).get('text', 'Submit')))}"
                "</button></form></div>"
            )
        for note in snap["ephemerals"]:
            if note["user"] == user:
                parts.append(
                    f"<div class='ephemeral'><i>Only visible to you:</i> "
                    f"{render_mrkdwn(note['text'])}</div>"
                )
        if not snap["messages"]:
            parts.append("<p>No approval messages yet.</p>")
        for msg in reversed(snap["messages"]):
            parts.append(
                f"<div class='message' id='msg-{html.escape(msg['ts'])}'>"
                f"{render_blocks(msg, user)}</div>"
            )
        parts.append("</body></html>")
        return "".join(parts)


# --------------------------------------------------------------------------- HTTP


class Handler(BaseHTTPRequestHandler):
    server: StandinServer

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout during a hang): Slack does not care either

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8")

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(min(n, _MAX_BODY)) if n > 0 else b""

    def _args(self, query: str, body: bytes) -> dict[str, Any]:
        args: dict[str, Any] = {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype == "application/json" and body:
            data = json.loads(body)
            if isinstance(data, dict):
                args.update(data)
        elif body:
            args.update({k: v[-1] for k, v in urllib.parse.parse_qs(body.decode()).items()})
        return args

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        state = self.server.state
        if url.path.startswith("/api/"):
            self._json(
                200,
                state.call(
                    url.path[5:], self._args(url.query, b""), self.headers.get("Authorization")
                ),
            )
        elif url.path == "/_test/messages":
            self._json(200, state.snapshot())
        elif url.path == "/_test/hang":
            self._json(200, state.hang_status())
        elif url.path == "/":
            user = urllib.parse.parse_qs(url.query).get("user", ["U_ALICE"])[-1]
            self._send(200, state.page(user).encode(), "text/html; charset=utf-8")
        else:
            self._json(404, {"ok": False, "error": "not_found"})

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        state = self.server.state
        body = self._body()
        try:
            args = self._args(url.query, body)
        except ValueError:
            self._json(200, {"ok": False, "error": "invalid_json"})
            return
        if url.path.startswith("/api/"):
            self._json(200, state.call(url.path[5:], args, self.headers.get("Authorization")))
            return
        if url.path == "/_test/hang":
            try:
                seconds = float(args.get("seconds", 0))
            except (TypeError, ValueError):
                self._json(400, {"ok": False, "error": "invalid_arguments"})
                return
            self._json(200, state.hang(seconds))
            return
        try:
            if url.path == "/_ui/click":
                result = state.click(
                    str(args.get("user")),
                    str(args.get("channel")),
                    str(args.get("ts")),
                    str(args.get("action_id")),
                    str(args.get("value")),
                    str(args.get("block_id", "")),
                )
            elif url.path == "/_ui/submit":
                result = state.submit(
                    str(args.get("user")), str(args.get("view_id")), str(args.get("reason", ""))
                )
            else:
                self._json(404, {"ok": False, "error": "not_found"})
                return
        except Invalid as exc:
            self._json(400, {"ok": False, "error": str(exc)})
            return
        if "application/json" in (self.headers.get("Accept") or ""):
            self._json(200, result)
        else:
            user = urllib.parse.quote(str(args.get("user")))
            self._send(303, b"", "text/plain", {"Location": f"/?user={user}"})

    def log_message(self, format: str, *args: object) -> None:
        return


class StandinServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, state: SlackState) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.state = state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="bqgate's local Slack stand-in")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", default=".bqgate-dev")
    args = parser.parse_args(argv)
    state = SlackState(
        Path(args.state_dir),
        token=os.environ.get("BQGATE_SLACK_BOT_TOKEN", ""),
        signing_secret=os.environ.get("BQGATE_SLACK_SIGNING_SECRET", ""),
        approvals_url=os.environ.get("BQGATE_APPROVALS_URL", ""),
    )
    StandinServer(args.port, state).serve_forever()


if __name__ == "__main__":
    main()
