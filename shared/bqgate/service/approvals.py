"""The approvals core: Slack interactions, the approver API, and posting requests to Slack.

Pure: talks to ports only (job store, queue, :class:`Notifier`, token verifier).
``functions/approvals`` (HTTP) and ``functions/slack_notify`` (Pub/Sub) call into it.

HTTP surface of the approvals function:

* ``POST /slack/interactions``: Slack's interactivity request URL (signed with the
  signing secret). Approve decides at once; Deny opens a modal asking for a reason,
  whose submission denies.
* ``GET /v1/approvals``: pending requests the caller (OIDC bearer token) may approve.
* ``POST /v1/approvals/{job_id}:approve`` and ``:deny`` (body ``{"reason": ...}``).

Slack wants an answer within 3 seconds: a click does one users.info lookup (cached),
one Firestore transaction, at most one publish and one chat.update, nothing slower.

>>> route_api("POST", "/v1/approvals/j-1:deny")
('decide', 'j-1', 'deny')
>>> route_api("GET", "/v1/approvals")
('list', None, None)
>>> route_api("GET", "/v1/approvals/j-1:approve") is None
True
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from bqgate import approvals as core
from bqgate import slack_blocks as blocks
from bqgate.errors import (
    AccessDenied,
    BqgateError,
    InvalidRequest,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from bqgate.identity import TokenVerifier, bearer_token
from bqgate.jobs import PENDING_APPROVAL, Job
from bqgate.policy import Policy
from bqgate.ports import JobStore, Queue
from bqgate.service.gateway import Recorder
from bqgate.service.http import Response, error_response, internal_error
from bqgate.wire import bigquery as wire

log = logging.getLogger("bqgate.approvals")

#: A notification claim older than this is considered abandoned (the poster crashed).
NOTIFY_CLAIM_MS = 60_000
#: How long a Slack user's email is cached (users.info is the slow part of a click).
EMAIL_CACHE_S = 600
#: Most pending requests listed by the approver API.
LIST_LIMIT = 200

_API = re.compile(r"^/v1/approvals/([^/]+):(approve|deny)/?$")
#: What an approver sees when a dependency (Firestore, Pub/Sub, Slack) is down.
UNAVAILABLE_NOTE = "bqgate is briefly unavailable; nothing was decided. Try again in a minute."


class Notifier(Protocol):
    """Port: the chat service approvers work in (Slack)."""

    def post_request(self, channel: str, text: str, blocks: Sequence[Mapping[str, Any]]
                     ) -> tuple[str, str]:
        """Post a message; return where it lives as ``(channel_id, ts)``."""

    def update_message(self, channel: str, ts: str, text: str,
                       blocks: Sequence[Mapping[str, Any]]) -> None: ...

    def post_ephemeral(self, channel: str, user: str, text: str) -> None: ...

    def user_email(self, user_id: str) -> str | None:
        """The user's email (lower-cased), or None if Slack does not say."""

    def open_modal(self, trigger_id: str, view: Mapping[str, Any]) -> None: ...


PendingLister = Callable[[int], Sequence[Job]]
"""``limit -> jobs in PENDING_APPROVAL`` (the job store's query)."""


def route_api(method: str, path: str) -> tuple[str, str | None, str | None] | None:
    """The approver API handler for a request: ``(name, job_id, action)`` or None."""
    if method.upper() == "GET" and path.rstrip("/") == "/v1/approvals":
        return "list", None, None
    m = _API.match(path)
    if m and method.upper() == "POST":
        return "decide", wire.check_job_id(m.group(1), "jobId"), m.group(2)
    return None


def job_id_from_pubsub(envelope: Mapping[str, Any] | None) -> str | None:
    """The ``job_id`` of a Pub/Sub ``messagePublished`` event's data, or None if malformed.

    >>> data = base64.b64encode(b'{"job_id": "j1"}').decode()
    >>> job_id_from_pubsub({"message": {"data": data}})
    'j1'
    >>> job_id_from_pubsub({"message": {}}) is None
    True
    """
    try:
        message = json.loads(base64.b64decode(envelope["message"]["data"]))  # type: ignore[index]
        job_id = message["job_id"]
    except (KeyError, TypeError, ValueError, binascii.Error):
        return None
    return job_id if isinstance(job_id, str) and job_id else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for k, v in headers.items():
            if k.lower() == lowered:
                return v
    return value


def parse_interaction(body: bytes) -> dict[str, Any]:
    """Slack's interaction payload (``payload=<json>``, form-encoded).

    >>> parse_interaction(b"payload=%7B%22type%22%3A%22block_actions%22%7D")
    {'type': 'block_actions'}
    """
    try:
        form = urllib.parse.parse_qs(body.decode("utf-8"), strict_parsing=False)
        payload = wire.loads(form["payload"][0])
    except (KeyError, IndexError, UnicodeDecodeError, ValueError, InvalidRequest):
        raise InvalidRequest("not a Slack interaction payload") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("not a Slack interaction payload")
    return payload


def _field(value: Any, key: str) -> Any:
    """``value[key]`` when ``value`` is an object, else None (Slack payloads are untrusted)."""
    return value.get(key) if isinstance(value, Mapping) else None


@dataclass(frozen=True)
class Outcome:
    """What one decision did: the decision and the job as it now stands."""

    decision: core.Decision
    job: Job

    def to_body(self) -> dict[str, Any]:
        return {"job_id": self.job.job_id, "outcome": self.decision.outcome,
                "changed": self.decision.changed, "message": self.decision.message,
                "state": self.job.state, "approval": self.job.approval}


def ephemeral(text: str) -> Response:
    return Response(200, {"response_type": "ephemeral", "replace_original": False, "text": text})


class ApprovalService:
    """Decides approval requests from Slack and the approver API, and posts them to Slack."""

    def __init__(
        self,
        *,
        store: JobStore,
        queue: Queue,
        policy: Policy,
        notifier: Callable[[], Notifier],
        verifier: Callable[[], TokenVerifier],
        list_pending: PendingLister,
        signing_secret: str,
        slack_channel: str,
        execute_topic: str = "execute",
        recorder: Recorder | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.queue = queue
        self.policy = policy
        self._notifier = notifier
        self._verifier = verifier
        self.list_pending = list_pending
        self.signing_secret = signing_secret
        self.slack_channel = slack_channel
        self.execute_topic = execute_topic
        self.recorder = recorder
        self.clock = clock
        self._emails: dict[str, tuple[float, str]] = {}

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # --- deciding ------------------------------------------------------------------

    def decide(self, job_id: str, *, approver: str, groups: frozenset[str], action: core.Action,
               reason: str | None, via: str) -> Outcome:
        """Apply one approver action in a transaction, then hand off and tell Slack."""
        now = self._now_ms()
        seen: dict[str, core.Decision] = {}

        def change(job: Job) -> dict[str, Any] | None:
            d = core.decide(job, approver=approver, approver_groups=groups, action=action,
                            reason=reason, now_ms=now, policy=self.policy, via=via)
            seen["d"] = d
            return d.fields

        job = self.store.transition(job_id, change)
        decision = seen["d"]
        if decision.execute:
            # After the commit: the executor re-reads the job and checks its binding.
            self.queue.publish(self.execute_topic, {"job_id": job_id})
        if decision.changed:
            self._record(job, decision, approver, via, reason)
            self._update_slack(job, decision, approver)
        log.info("job %s: %s by %s via %s: %s", job_id, action, approver, via, decision.outcome)
        return Outcome(decision, job)

    def _record(self, job: Job, d: core.Decision, approver: str, via: str,
                reason: str | None) -> None:
        if self.recorder is None:
            return
        kind = {"denied": "denied", "expired": "expired"}.get(d.outcome, "approval_decided")
        data = {"outcome": d.outcome, "approver": approver, "via": via, "message": d.message}
        if d.outcome == "denied":
            data["reason"] = core.clean_reason(reason)
        try:
            self.recorder.record(job, kind, data)
        except Exception:  # the record must never undo a decision
            log.exception("recording %s for job %s failed", kind, job.job_id)

    def _update_slack(self, job: Job, d: core.Decision, actor: str | None) -> None:
        rec = core.record_of(job)
        if not rec.slack_channel or not rec.slack_ts:
            return
        if d.outcome == "expired":
            actor = None
        msg = blocks.decided_message(
            job, outcome=d.outcome, actor=actor, at_ms=rec.decided_at_ms or self._now_ms(),
            reason=rec.reason if d.outcome == "denied" else None,
            note=(f"{len(rec.votes)} of {rec.required}" if d.outcome == "recorded" else None),
            via=rec.decided_via)
        try:
            self._notifier().update_message(rec.slack_channel, rec.slack_ts, msg["text"],
                                            msg["blocks"])
        except Exception:  # the decision stands; only the message is stale
            log.exception("updating the Slack message of job %s failed", job.job_id)

    # --- posting requests (slack_notify) ---------------------------------------------

    def notify(self, job_id: str) -> str:
        """Post the approval request for ``job_id`` to Slack, once. Returns what happened.

        Redelivered messages do not post twice: the post is claimed in a transaction,
        and the message's channel and ts are stored on the approval record.
        """
        now = self._now_ms()
        state: dict[str, str] = {}

        def claim(job: Job) -> dict[str, Any] | None:
            state.clear()
            if job.state != PENDING_APPROVAL:
                state["what"] = "not-pending"
                return None
            expired = core.expire_fields(job, now)
            if expired is not None:
                state["what"] = "expired"
                return expired
            rec = core.record_of(job, self.policy.approvals.required)
            if rec.slack_ts or (rec.notified_at_ms and now - rec.notified_at_ms < NOTIFY_CLAIM_MS):
                state["what"] = "already-posted"
                return None
            state["what"] = "post"
            return {"approval": replace(rec, notified_at_ms=now).to_doc()}

        if self.store.get(job_id) is None:
            log.warning("approval request for unknown job %s: dropped", job_id)
            return "unknown"
        job = self.store.transition(job_id, claim)
        what = state.get("what", "not-pending")
        if what == "expired" and self.recorder is not None:
            self.recorder.record(job, "expired", {"message": core.expiry_message(job)})
        if what != "post":
            return what
        msg = blocks.request_message(job)
        try:
            channel, ts = self._notifier().post_request(self.slack_channel, msg["text"],
                                                        msg["blocks"])
        except Exception:
            # Release the claim so the redelivery posts, then let Pub/Sub redeliver.
            self.store.transition(job_id, lambda j: {"approval": replace(
                core.record_of(j), notified_at_ms=None).to_doc()})
            raise

        def remember(j: Job) -> dict[str, Any]:
            rec = replace(core.record_of(j), slack_channel=channel, slack_ts=ts)
            return {"approval": rec.to_doc()}

        job = self.store.transition(job_id, remember)
        if job.state != PENDING_APPROVAL:
            # Decided (API) while the message was being posted: show the outcome now.
            rec = core.record_of(job)
            outcome = rec.status if rec.status != core.REQUESTED else "unchanged"
            self._update_slack(job, core.Decision(outcome, ""), rec.denied_by or (
                ", ".join(rec.approvers) or None))
        return "posted"

    # --- HTTP --------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Answer one HTTP request to the approvals function."""
        try:
            if method.upper() == "GET" and path in ("/", "/healthz"):
                return Response(200, {"status": "ok", "service": "bqgate-approvals"})
            if path.rstrip("/") == "/slack/interactions":
                if method.upper() != "POST":
                    raise InvalidRequest("Slack interactions are POSTed")
                return self.slack(headers, body)
            found = route_api(method, path)
            if found is None:
                raise NotFound(f"Not found: {method.upper()} {path}")
            return self.api(found, headers, body)
        except BqgateError as err:
            return error_response(err)
        except Exception:  # the one place an unexpected failure becomes an answer
            return internal_error("approvals service", method, path)

    # --- approver API ------------------------------------------------------------------

    def api(self, found: tuple[str, str | None, str | None], headers: Mapping[str, str],
            body: bytes) -> Response:
        principal = self._verifier().verify(bearer_token(_header(headers, "Authorization")))
        name, job_id, action = found
        if name == "list":
            return Response(200, {"approvals": self.pending_for(principal.email, principal.groups)})
        assert job_id is not None and action in ("approve", "deny")
        reason = None
        if action == "deny":
            data = wire.parse_json_body(body or b"{}")
            reason = data.get("reason")
            if reason is not None and not isinstance(reason, str):
                raise InvalidRequest("reason must be a string")
        outcome = self.decide(job_id, approver=principal.email, groups=principal.groups,
                              action="approve" if action == "approve" else "deny",
                              reason=reason, via="api")
        return Response(200, outcome.to_body())

    def pending_for(self, approver: str, groups: frozenset[str]) -> list[dict[str, Any]]:
        """Pending, unexpired requests ``approver`` may approve (oldest first)."""
        if not set(self.policy.approvals.approver_groups) & set(groups):
            raise AccessDenied(f"{approver} is not a member of an approver group "
                               f"({', '.join(self.policy.approvals.approver_groups)})")
        now = self._now_ms()
        out = []
        for job in sorted(self.list_pending(LIST_LIMIT), key=lambda j: j.created_ms):
            if (job.state != PENDING_APPROVAL or core.expire_fields(job, now) is not None
                    or job.bytes_estimate is None):
                continue
            try:
                core.authorize(job, approver=approver, approver_groups=groups, action="approve",
                               policy=self.policy)
            except AccessDenied:
                continue
            rec = core.record_of(job, self.policy.approvals.required)
            if approver.lower() in rec.approvers:
                continue
            cls = job.classification or {}
            out.append({
                "job_id": job.job_id, "owner": job.owner, "groups": job.groups, "sql": job.sql,
                "session_id": job.session_id or f"job-{job.job_id}",
                "rewritten_sql": job.rewritten_sql, "blast_radius": job.blast_radius,
                "tables": cls.get("tables") or [], "reasons": cls.get("reasons") or [],
                "statement_hash": cls.get("statement_hash"), "bytes_estimate": job.bytes_estimate,
                "created_ms": job.created_ms, "expire_at_ms": job.expire_at_ms,
                "approvals": [v.to_doc() for v in rec.votes], "required": rec.required,
            })
        return out

    # --- Slack -------------------------------------------------------------------------

    def slack(self, headers: Mapping[str, str], body: bytes) -> Response:
        blocks.verify_signature(
            self.signing_secret, _header(headers, "X-Slack-Request-Timestamp"),
            _header(headers, "X-Slack-Signature"), body, now=self.clock())
        payload = parse_interaction(body)
        kind = payload.get("type")
        if kind == "block_actions":
            return self._block_actions(payload)
        if kind == "view_submission":
            return self._view_submission(payload)
        return Response(200, {})

    def _email(self, user_id: str) -> str | None:
        cached = self._emails.get(user_id)
        if cached and self.clock() - cached[0] < EMAIL_CACHE_S:
            return cached[1]
        email = self._notifier().user_email(user_id)
        if email:
            self._emails[user_id] = (self.clock(), email.strip().lower())
            return email.strip().lower()
        return None

    def _approver(self, payload: Mapping[str, Any]) -> str:
        user = payload.get("user") or {}
        user_id = user.get("id") if isinstance(user, Mapping) else None
        if not isinstance(user_id, str) or not user_id:
            raise AccessDenied("Cannot tell who you are: the Slack payload names no user")
        email = self._email(user_id)
        if not email:
            raise AccessDenied(f"Cannot tell who you are: Slack has no email for {user_id}")
        return email

    def _tell(self, payload: Mapping[str, Any], text: str) -> Response:
        """An ephemeral note to the clicking user (posted, and as the HTTP answer)."""
        channel = (_field(payload.get("container"), "channel_id")
                   or _field(payload.get("channel"), "id"))
        user = _field(payload.get("user"), "id")
        if isinstance(channel, str) and isinstance(user, str) and channel and user:
            try:
                self._notifier().post_ephemeral(channel, user, text)
            except Exception:
                log.exception("posting an ephemeral note failed")
        return ephemeral(text)

    def _block_actions(self, payload: Mapping[str, Any]) -> Response:
        actions = payload.get("actions")
        action = (actions[0] if isinstance(actions, list) and actions
                  and isinstance(actions[0], Mapping) else {})
        action_id, job_id = action.get("action_id"), action.get("value")
        known = (blocks.APPROVE_ACTION, blocks.DENY_ACTION)
        if action_id not in known:
            return Response(200, {})
        if not wire.is_job_id(job_id):
            return self._tell(payload, "This button does not name an approval request")
        try:
            approver = self._approver(payload)
            groups = self.policy.groups_for(approver)
            if action_id == blocks.APPROVE_ACTION:
                outcome = self.decide(job_id, approver=approver, groups=groups, action="approve",
                                      reason=None, via="slack")
                return self._tell(payload, outcome.decision.message)
            # Deny: check first, so a non-approver or a late click gets a note, not a modal.
            job = self.store.get(job_id)
            if job is None:
                raise NotFound(f"Not found: Job {job_id}")
            core.authorize(job, approver=approver, approver_groups=groups, action="deny",
                           policy=self.policy)
            rec = core.record_of(job)
            if job.state != PENDING_APPROVAL or core.expire_fields(job, self._now_ms()):
                # Let decide() say why (and expire it if that is the reason).
                outcome = self.decide(job_id, approver=approver, groups=groups, action="deny",
                                      reason="(late click)", via="slack")
                return self._tell(payload, outcome.decision.message)
            trigger = payload.get("trigger_id")
            if not isinstance(trigger, str) or not trigger:
                raise InvalidRequest("the Slack payload has no trigger_id")
            self._notifier().open_modal(trigger, blocks.deny_modal(
                job_id, channel=rec.slack_channel, ts=rec.slack_ts, sql_preview=job.sql))
            return Response(200, {})
        except (AccessDenied, InvalidRequest, NotFound, Unauthenticated) as err:
            return self._tell(payload, err.message)
        except Unavailable:
            return self._tell(payload, UNAVAILABLE_NOTE)

    def _view_submission(self, payload: Mapping[str, Any]) -> Response:
        view = payload.get("view") or {}
        if not isinstance(view, Mapping) or view.get("callback_id") != blocks.DENY_CALLBACK:
            return Response(200, {})
        raw_meta = view.get("private_metadata")
        try:
            meta = wire.loads(raw_meta) if isinstance(raw_meta, str) and raw_meta else {}
            job_id = meta["job_id"]
        except (ValueError, KeyError, TypeError, InvalidRequest):
            job_id = None
        if not wire.is_job_id(job_id):
            return _view_error("This form is damaged; close it and click Deny again")
        try:
            approver = self._approver(payload)
            outcome = self.decide(job_id, approver=approver,
                                  groups=self.policy.groups_for(approver), action="deny",
                                  reason=blocks.modal_reason(view), via="slack")
        except (AccessDenied, InvalidRequest, NotFound, Unauthenticated) as err:
            return _view_error(err.message)
        except Unavailable:
            return _view_error(UNAVAILABLE_NOTE)
        if outcome.decision.outcome not in ("denied",):
            return _view_error(outcome.decision.message)
        return Response(200, {"response_action": "clear"})


class ApprovalsApp:
    """The approvals function's HTTP entry: answers health checks without building any
    client, and builds the service (``factory``) on the first real request."""

    def __init__(self, factory: Callable[[], ApprovalService]) -> None:
        self._factory = factory

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        if method.upper() == "GET" and path in ("/", "/healthz"):
            return Response(200, {"status": "ok", "service": "bqgate-approvals"})
        try:
            service = self._factory()
        except BqgateError as err:
            return error_response(err)
        except Exception:
            return internal_error("approvals service", method, path)
        return service.handle(method, path, headers, body)


def _view_error(text: str) -> Response:
    return Response(200, {"response_action": "errors",
                          "errors": {blocks.REASON_BLOCK: blocks.plain_line(text, 150)}})


__all__ = ["ApprovalService", "ApprovalsApp", "Notifier", "Outcome", "job_id_from_pubsub",
           "parse_interaction", "route_api"]
