"""The approvals core: Slack interactions, the approver API, and posting requests to Slack.

Pure: talks to ports only (job store, queue, :class:`Notifier`, token verifier).
``functions/approvals`` (HTTP) and ``functions/slack_notify`` (Pub/Sub) call into it.

HTTP surface of the approvals function:

* ``POST /slack/interactions``: Slack's interactivity request URL (signed with the
  signing secret). Approve decides at once; Deny opens a modal asking for a reason,
  whose submission denies.
* ``GET /v1/approvals?limit=N&cursor=C``: pending requests the caller (OIDC bearer
  token) may approve, newest first, one page at a time (``next_cursor`` continues);
  near-identical requests of one principal come as one item with their ``group``.
* ``POST /v1/approvals/{job_id}:approve`` and ``:deny`` (body ``{"reason": ...}``;
  ``"group": true`` decides every pending request of the job's group).

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
from typing import Any

from bqgate import approvals as core
from bqgate import outbox
from bqgate import slack_blocks as blocks
from bqgate.audit.record import EventKind
from bqgate.errors import (
    AccessDenied,
    InvalidRequest,
    NotFound,
    Rejected,
    Unauthenticated,
    Unavailable,
)
from bqgate.identity import bearer_token
from bqgate.jobs import PENDING, PENDING_APPROVAL, Job
from bqgate.outbox import OutboxRecord
from bqgate.policy import Policy
from bqgate.ports import JobStore, Notifier, PendingCursor, Queue, Recorder, TokenVerifier
from bqgate.service.dispatch import REDISPATCH_AFTER_MS, Dispatcher
from bqgate.service.http import Response, answered, header, health_check
from bqgate.wire import bigquery as wire

log = logging.getLogger("bqgate.approvals")

#: A notification claim older than this is considered abandoned (the poster crashed).
NOTIFY_CLAIM_MS = 60_000
#: How long a Slack user's email is cached (users.info is the slow part of a click).
EMAIL_CACHE_S = 600
#: Pending requests per page of the approver list (default, and most a caller may ask).
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
#: Most store queries one page may take (pages skip what the approver may not decide).
MAX_SCANS = 5
#: Most members of one group of near-identical requests.
GROUP_LIMIT = 100
#: The Slack message metadata type bqgate tags its approval requests with.
METADATA_TYPE = "bqgate_approval_request"
#: How far before the first post attempt a lookup of the request's message starts (clock skew).
LOOKUP_SKEW_MS = 60_000

_API = re.compile(r"^/v1/approvals/([^/]+):(approve|deny)/?$")
#: What an approver sees when a dependency (Firestore, Pub/Sub, Slack) is down.
UNAVAILABLE_NOTE = "bqgate is briefly unavailable; nothing was decided. Try again in a minute."


def route_api(method: str, path: str) -> tuple[str, str | None, str | None] | None:
    """The approver API handler for a request: ``(name, job_id, action)`` or None."""
    if method.upper() == "GET" and path.rstrip("/") == "/v1/approvals":
        return "list", None, None
    m = _API.match(path)
    if m and method.upper() == "POST":
        return "decide", wire.check_job_id(m.group(1), "jobId"), m.group(2)
    return None


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
class ApproverAct:
    """One approver's action on a request: who (with their groups), approve or deny, why,
    and where they clicked (``slack``, ``console``, ``api``)."""

    approver: str
    groups: frozenset[str]
    action: core.Action
    reason: str | None
    via: str


@dataclass(frozen=True)
class Outcome:
    """What one decision did: the decision and the job as it now stands.

    ``redispatched``: the job was already approved but its hand-off to the executor had
    failed, and this decision handed it off again."""

    decision: core.Decision
    job: Job
    redispatched: bool = False

    def to_body(self) -> dict[str, Any]:
        return {
            "job_id": self.job.job_id,
            "outcome": self.decision.outcome,
            "changed": self.decision.changed,
            "message": self.decision.message,
            "state": self.job.state,
            "approval": self.job.approval,
            "redispatched": self.redispatched,
        }


@dataclass(frozen=True)
class PendingPage:
    """One page of the approver list: ``items`` newest first, ``next_cursor`` (None on
    the last page) to pass back for the next one."""

    items: list[dict[str, Any]]
    next_cursor: str | None

    def to_body(self) -> dict[str, Any]:
        return {"approvals": self.items, "next_cursor": self.next_cursor}


def encode_cursor(at: PendingCursor) -> str:
    """An opaque cursor for the page after ``at``.

    >>> decode_cursor(encode_cursor(PendingCursor(5, 9, "j~1"))) == PendingCursor(5, 9, "j~1")
    True
    """
    raw = json.dumps([at.created_ms, at.expire_at_ms, at.job_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> PendingCursor | None:
    """The position a cursor names; InvalidRequest if it is not one of ours.

    >>> decode_cursor("bm9wZQ")
    Traceback (most recent call last):
    bqgate.errors.InvalidRequest: cursor: not a cursor of this list (start again without one)
    """
    if cursor is None or cursor == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, expire, job_id = json.loads(raw)
        if not (
            isinstance(created, int)
            and isinstance(expire, int)
            and isinstance(job_id, str)
            and job_id
        ):
            raise ValueError(cursor)
    except (ValueError, TypeError, binascii.Error):
        raise InvalidRequest(
            "cursor: not a cursor of this list (start again without one)"
        ) from None
    return PendingCursor(created, expire, job_id)


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
        signing_secret: str,
        slack_channel: str,
        execute_topic: str = "execute",
        approvals_topic: str = "approvals",
        recorder: Recorder | None = None,
        redispatch_after_ms: int = REDISPATCH_AFTER_MS,
        dispatch_grace_ms: int = 5_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.queue = queue
        self.policy = policy
        self._notifier = notifier
        self._verifier = verifier
        self.signing_secret = signing_secret
        self.slack_channel = slack_channel
        self.execute_topic = execute_topic
        self.approvals_topic = approvals_topic
        self.recorder = recorder
        #: A hand-off younger than this may still be in flight (a retry does not repeat it).
        self.dispatch_grace_ms = dispatch_grace_ms
        self.dispatcher = Dispatcher(
            store=store, queue=queue, clock=clock, redispatch_after_ms=redispatch_after_ms
        )
        self.clock = clock
        self._emails: dict[str, tuple[float, str]] = {}

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _close_record(self, job_id: str) -> OutboxRecord:
        return self.dispatcher.record(job_id, outbox.CLOSE, self.approvals_topic, until_done=True)

    # --- deciding ------------------------------------------------------------------

    def decide(self, job_id: str, act: ApproverAct) -> Outcome:
        """Apply one approver action in a transaction, then hand off and tell Slack.

        The transaction also writes the hand-offs the decision calls for (the approved job
        to the executor, the outcome to the request's Slack message), so a failed publish
        is retried by the outbox reconciler, or by the approver clicking again."""
        now = self._now_ms()
        seen: dict[str, core.Decision] = {}
        written: list[OutboxRecord] = []

        def change(job: Job) -> Job | None:
            d = core.decide(
                job,
                approver=act.approver,
                approver_groups=act.groups,
                action=act.action,
                reason=act.reason,
                now_ms=now,
                policy=self.policy,
                via=act.via,
            )
            seen["d"] = d
            return d.job

        def records(job: Job) -> list[OutboxRecord]:
            recs = []
            if seen["d"].execute:
                recs.append(self.dispatcher.record(job_id, outbox.APPROVED, self.execute_topic))
            if job.state != PENDING_APPROVAL:
                recs.append(self._close_record(job_id))
            written[:] = recs
            return recs

        job = self.store.transition(job_id, change, dispatch=records).after
        decision = seen["d"]
        redispatched = False
        if decision.changed:
            # The decision is in the session record before the executor can record its
            # start; then the hand-off (the executor re-reads the job, checks its binding).
            self._record(job, decision, act)
            self.dispatcher.send_all(r for r in written if r.event == outbox.APPROVED)
            shown = self._update_slack(job, decision, act.approver)
            if shown and job.state != PENDING_APPROVAL:
                self.dispatcher.complete(job_id, outbox.CLOSE)
        elif (
            core.record_of(job).status == core.APPROVED
            and job.state == PENDING
            and decision.outcome == "unchanged"
        ):
            decision, redispatched = self._redispatch(job, decision, now)
        log.info(
            "job %s: %s by %s via %s: %s",
            job_id,
            act.action,
            act.approver,
            act.via,
            decision.outcome,
        )
        return Outcome(decision, job, redispatched)

    def _redispatch(
        self, job: Job, decision: core.Decision, now: int
    ) -> tuple[core.Decision, bool]:
        """A second Approve of an approved job whose hand-off never went out: send it now."""
        rec = self.dispatcher.pending(job.job_id, outbox.APPROVED)
        if rec is None or not rec.stalled(now, self.dispatch_grace_ms):
            return decision, False  # handed off (or still being handed off): nothing to do
        said = decision.message.removesuffix("; nothing changed")
        if self.dispatcher.send(rec):
            return core.Decision(
                "redispatched",
                f"{said}; its hand-off to the executor had failed and was sent again now",
            ), True
        return core.Decision(
            "unchanged",
            f"{said}; handing it to the executor failed again and will be retried automatically",
        ), False

    def decide_group(self, job_id: str, act: ApproverAct) -> list[Outcome]:
        """Decide every pending request in ``job_id``'s group (same requester, statement and
        default dataset), each in its own transaction bound to its own approval binding."""
        job = self.store.get(job_id)
        if job is None:
            raise NotFound(f"Not found: Job {job_id}")
        members = [m.job_id for m in self._group_members(job, self._now_ms())]
        if job_id not in members:
            members.insert(0, job_id)  # decide() says why it is no longer decidable
        return [self.decide(m, act) for m in members]

    def _record(self, job: Job, d: core.Decision, act: ApproverAct) -> None:
        if self.recorder is None:
            return
        kinds: dict[str, EventKind] = {"denied": "denied", "expired": "expired"}
        kind = kinds.get(d.outcome, "approval_decided")
        data = {
            "outcome": d.outcome,
            "approver": act.approver,
            "via": act.via,
            "message": d.message,
        }
        if d.outcome == "denied":
            data["reason"] = core.clean_reason(act.reason)
        try:
            self.recorder.record(job, kind, data)
        except Exception:  # the record must never undo a decision
            log.exception("recording %s for job %s failed", kind, job.job_id)

    def _update_slack(self, job: Job, d: core.Decision, actor: str | None) -> bool:
        """Show the decision on the request's Slack message; whether it is shown."""
        rec = core.record_of(job)
        if not rec.slack_channel or not rec.slack_ts:
            return False
        if d.outcome == "expired":
            actor = None
        msg = blocks.decided_message(
            job,
            outcome=d.outcome,
            actor=actor,
            at_ms=rec.decided_at_ms or self._now_ms(),
            reason=rec.reason if d.outcome == "denied" else None,
            note=(f"{len(rec.votes)} of {rec.required}" if d.outcome == "recorded" else None),
            via=rec.decided_via,
        )
        try:
            self._notifier().update_message(
                rec.slack_channel, rec.slack_ts, msg["text"], msg["blocks"]
            )
        except Exception:  # the decision stands; the outbox's close record retries
            log.exception("updating the Slack message of job %s failed", job.job_id)
            return False
        return True

    # --- posting requests (slack_notify) ---------------------------------------------

    def notify(self, job_id: str) -> str:
        """Make the request's Slack message match the job: post it once while the job
        awaits approval, show the outcome once it ended. Returns what happened.

        One message per request, whatever fails: the post is claimed in a transaction,
        every post is tagged with the job id (message metadata), and after an attempt
        whose answer never came (a timeout) the message is looked up, not posted again.
        Raises when Slack fails, so Pub/Sub redelivers; the outbox reconciler retries after
        that, so approvers are notified once Slack is back (meanwhile the request is in
        ``bqgate approvals list``)."""
        job = self.store.get(job_id)
        if job is None:
            log.warning("approval request for unknown job %s: dropped", job_id)
            return "unknown"
        if job.state != PENDING_APPROVAL:
            return self._close(job)
        now = self._now_ms()
        state: dict[str, Any] = {}
        close: list[OutboxRecord] = []

        def claim(j: Job) -> Job | None:
            state.clear()
            if j.state != PENDING_APPROVAL:
                state["what"] = "not-pending"
                return None
            expired = core.expire(j, now)
            if expired is not None:
                state["what"] = "expired"
                return expired
            rec = core.record_of(j, self.policy.approvals.required)
            if rec.slack_ts:
                state["what"] = "already-posted"
                return None
            if rec.notified_at_ms and now - rec.notified_at_ms < NOTIFY_CLAIM_MS:
                state["what"] = "in-progress"  # another delivery is posting it right now
                return None
            state["what"], state["earlier_attempts"] = "post", rec.post_attempts
            # The first attempt posts straight away, so it is counted with the claim; a later
            # one first looks for the message an earlier attempt may have posted.
            claimed = (
                replace(rec, notified_at_ms=now, post_attempts=1, first_post_ms=now)
                if rec.post_attempts == 0
                else replace(rec, notified_at_ms=now)
            )
            return replace(j, approval=claimed.to_doc())

        def records(j: Job) -> list[OutboxRecord]:
            close[:] = [self._close_record(job_id)] if state.get("what") == "expired" else []
            return close

        job = self.store.transition(job_id, claim, dispatch=records).after
        what = str(state.get("what", "not-pending"))
        if what == "expired":
            if self.recorder is not None:
                self.recorder.record(job, "expired", {"message": core.expiry_message(job)})
            self._close(job)
            return "expired"
        if what == "not-pending":
            return self._close(job)
        if what == "already-posted":
            self.dispatcher.complete(job_id, outbox.NOTIFY)
            return what
        if what == "in-progress":
            return what
        earlier = int(state["earlier_attempts"])
        posting = False
        try:
            found = self._find(job) if earlier else []
            if found:
                channel, ts = found[0]
            else:
                if earlier:  # counted before the call: a crash mid-post must not go unseen
                    self.store.transition(
                        job_id,
                        lambda j: replace(
                            j,
                            approval=replace(core.record_of(j), post_attempts=earlier + 1).to_doc(),
                        ),
                    )
                msg = blocks.request_message(job)
                posting = True
                channel, ts = self._notifier().post_request(
                    self.slack_channel, msg["text"], msg["blocks"], self._metadata(job_id)
                )
        except Exception as exc:
            # Release the claim so a redelivery (or the reconciler) tries again. A post whose
            # answer never came stays counted, so the next try looks for it before posting;
            # one Slack refused (ok: false) certainly posted nothing; a failed lookup made
            # no post and counted none.
            refused = posting and isinstance(exc, Rejected)

            def release(j: Job) -> Job:
                rec = core.record_of(j)
                attempts = earlier if refused else rec.post_attempts
                return replace(
                    j,
                    approval=replace(
                        rec,
                        notified_at_ms=None,
                        post_attempts=attempts,
                        first_post_ms=rec.first_post_ms if attempts else None,
                    ).to_doc(),
                )

            self.store.transition(job_id, release)
            raise
        job = self._remember(job_id, channel, ts, found_existing=bool(found))
        self.dispatcher.complete(job_id, outbox.NOTIFY)
        if job.state != PENDING_APPROVAL:
            # Decided (API) while the message was being posted: show the outcome now.
            self._close(job)
        return "found-existing" if found else "posted"

    @staticmethod
    def _metadata(job_id: str) -> dict[str, Any]:
        return {"event_type": METADATA_TYPE, "event_payload": {"job_id": job_id}}

    def _find(self, job: Job) -> list[tuple[str, str]]:
        """The request's messages already in Slack (posted by an attempt whose answer never
        came); keeps the first and deletes any other, so one message remains."""
        rec = core.record_of(job)
        since = (rec.first_post_ms or job.created_ms) - LOOKUP_SKEW_MS
        notifier = self._notifier()
        found = notifier.find_messages(
            rec.slack_channel or self.slack_channel, METADATA_TYPE, "job_id", job.job_id, since
        )
        for channel, ts in found[1:]:
            try:
                notifier.delete_message(channel, ts)
            except Exception:
                log.exception("deleting a duplicate Slack message of job %s failed", job.job_id)
        return found[:1]

    def _remember(self, job_id: str, channel: str, ts: str, *, found_existing: bool) -> Job:
        def remember(j: Job) -> Job:
            rec = replace(
                core.record_of(j), slack_channel=channel, slack_ts=ts, notified_at_ms=None
            )
            return replace(j, approval=rec.to_doc())

        job = self.store.transition(job_id, remember).after
        if self.recorder is not None:
            rec = core.record_of(job)
            try:
                self.recorder.record(
                    job,
                    "notified",
                    {
                        "channel": channel,
                        "ts": ts,
                        "found_existing": found_existing,
                        "post_attempts": rec.post_attempts,
                    },
                )
            except Exception:  # the message is posted and linked; the record is best effort
                log.exception("recording the notification of job %s failed", job_id)
        return job

    def _close(self, job: Job) -> str:
        """Show an ended request's outcome on its Slack message (buttons removed), once."""
        rec = core.record_of(job)
        if rec.slack_closed_ms:
            return self._closed(job.job_id, "already-closed")
        channel, ts = rec.slack_channel, rec.slack_ts
        if not ts:
            found = self._find(job) if rec.post_attempts else []
            if not found:
                return self._closed(job.job_id, "nothing-to-close")
            channel, ts = found[0]
            job = self._remember(job.job_id, channel, ts, found_existing=True)
        assert channel is not None
        outcome, actor, reason = core.final_outcome(job)
        decided = core.record_of(job)
        msg = blocks.decided_message(
            job,
            outcome=outcome,
            actor=actor,
            at_ms=decided.decided_at_ms or job.ended_ms or self._now_ms(),
            reason=reason,
        )
        self._notifier().update_message(channel, ts, msg["text"], msg["blocks"])
        now = self._now_ms()
        self.store.transition(
            job.job_id,
            lambda j: replace(j, approval=replace(core.record_of(j), slack_closed_ms=now).to_doc()),
        )
        return self._closed(job.job_id, "closed")

    def _closed(self, job_id: str, what: str) -> str:
        self.dispatcher.complete(job_id, outbox.CLOSE)
        self.dispatcher.complete(job_id, outbox.NOTIFY)
        return what

    # --- HTTP --------------------------------------------------------------------------

    def handle(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        params: Mapping[str, str] | None = None,
    ) -> Response:
        """Answer one HTTP request to the approvals function (``params``: the query string)."""

        def call() -> Response:
            health = health_check("approvals", method, path)
            if health is not None:
                return health
            if path.rstrip("/") == "/slack/interactions":
                if method.upper() != "POST":
                    raise InvalidRequest("Slack interactions are POSTed")
                return self.slack(headers, body)
            found = route_api(method, path)
            if found is None:
                raise NotFound(f"Not found: {method.upper()} {path}")
            return self.api(found, headers, body, params or {})

        return answered("approvals service", method, path, call)

    # --- approver API ------------------------------------------------------------------

    def api(
        self,
        found: tuple[str, str | None, str | None],
        headers: Mapping[str, str],
        body: bytes,
        params: Mapping[str, str] | None = None,
    ) -> Response:
        principal = self._verifier().verify(bearer_token(header(headers, "Authorization")))
        name, job_id, action = found
        if name == "list":
            args = params or {}
            page = self.pending_for(
                principal.email, principal.groups, cursor=args.get("cursor"), limit=_page_size(args)
            )
            return Response(200, page.to_body())
        assert job_id is not None and action in ("approve", "deny")
        data = wire.parse_json_body(body or b"{}")
        reason = data.get("reason") if action == "deny" else None
        if reason is not None and not isinstance(reason, str):
            raise InvalidRequest("reason must be a string")
        group = data.get("group", False)
        if not isinstance(group, bool):
            raise InvalidRequest("group must be true or false")
        verb: core.Action = "approve" if action == "approve" else "deny"
        act = ApproverAct(principal.email, principal.groups, verb, reason, "api")
        if not group:
            return Response(200, self.decide(job_id, act).to_body())
        return Response(200, group_body(job_id, verb, self.decide_group(job_id, act)))

    def pending_for(
        self,
        approver: str,
        groups: frozenset[str],
        *,
        cursor: str | None = None,
        limit: int = PAGE_SIZE,
    ) -> PendingPage:
        """One page of the pending, unexpired requests ``approver`` may approve, newest
        first by creation time; pass ``next_cursor`` back for the next page.

        The store's query orders the requests and leaves expired ones out; this skips what
        the approver may not decide (their own requests, ones they already voted on, ones
        still being estimated) and folds near-identical requests of one principal into the
        newest of them (its ``group`` lists the others). The approver API, ``bqgate
        approvals list`` and the console all page through this."""
        if not set(self.policy.approvals.approver_groups) & set(groups):
            raise AccessDenied(
                f"{approver} is not a member of an approver group "
                f"({', '.join(self.policy.approvals.approver_groups)})"
            )
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidRequest(f"limit: expected 1 to {MAX_PAGE_SIZE}, got {limit}")
        after = decode_cursor(cursor)
        now = self._now_ms()
        items: list[dict[str, Any]] = []
        members_of: dict[tuple[str, str, str], list[Job]] = {}
        for _ in range(MAX_SCANS):
            batch = self.store.pending_approvals(now_ms=now, limit=limit, after=after)
            for job in batch:
                after = PendingCursor(job.created_ms, job.expire_at_ms or 0, job.job_id)
                item = self._item(job, approver, groups, now, members_of)
                if item is not None:
                    items.append(item)
                    if len(items) == limit:
                        return PendingPage(items, encode_cursor(after))
            if len(batch) < limit:
                return PendingPage(items, None)
        return PendingPage(items, encode_cursor(after) if after is not None else None)

    def _decidable(self, job: Job, approver: str, groups: frozenset[str], now: int) -> bool:
        if (
            job.state != PENDING_APPROVAL
            or core.expire(job, now) is not None
            or job.bytes_estimate is None
        ):
            return False
        try:
            core.authorize(
                job, approver=approver, approver_groups=groups, action="approve", policy=self.policy
            )
        except AccessDenied:
            return False
        return approver.lower() not in core.record_of(job, self.policy.approvals.required).approvers

    def _group_members(self, job: Job, now: int) -> list[Job]:
        """The pending, unexpired, estimated requests in ``job``'s group, newest first."""
        key = core.group_key(job)
        similar = self.store.similar_pending(
            owner=job.owner,
            statement_hash=core.statement_hash_of(job),
            now_ms=now,
            limit=GROUP_LIMIT,
        )
        members = [
            j
            for j in similar
            if core.group_key(j) == key
            and j.bytes_estimate is not None
            and core.expire(j, now) is None
        ]
        return sorted(
            members, key=lambda j: (j.created_ms, j.expire_at_ms or 0, j.job_id), reverse=True
        )

    def _item(
        self,
        job: Job,
        approver: str,
        groups: frozenset[str],
        now: int,
        members_of: dict[tuple[str, str, str], list[Job]],
    ) -> dict[str, Any] | None:
        """The list entry for ``job``, or None if it is not shown on its own."""
        if not self._decidable(job, approver, groups, now):
            return None
        key = core.group_key(job)
        if key not in members_of:
            members_of[key] = [
                m
                for m in self._group_members(job, now)
                if self._decidable(m, approver, groups, now)
            ]
        members = members_of[key] or [job]
        if members[0].job_id != job.job_id and any(m.job_id == job.job_id for m in members):
            return None  # shown inside the newest request of its group (listed before it)
        rec = core.record_of(job, self.policy.approvals.required)
        verdict = job.classification
        estimates = [m.bytes_estimate or 0 for m in members]
        return {
            "job_id": job.job_id,
            "owner": job.owner,
            "groups": job.groups,
            "sql": job.sql,
            "session_id": job.session_id or f"job-{job.job_id}",
            "rewritten_sql": job.rewritten_sql,
            "blast_radius": job.blast_radius,
            "tables": list(verdict.tables),
            "reasons": list(verdict.reasons),
            "statement_hash": verdict.statement_hash or None,
            "bytes_estimate": job.bytes_estimate,
            "created_ms": job.created_ms,
            "expire_at_ms": job.expire_at_ms,
            "approvals": [v.to_doc() for v in rec.votes],
            "required": rec.required,
            "notified": bool(rec.slack_ts),
            "group": {
                "id": core.group_id(job),
                "size": len(members),
                "job_ids": [m.job_id for m in members],
                "bytes_estimate_max": max(estimates),
            },
        }

    # --- Slack -------------------------------------------------------------------------

    def slack(self, headers: Mapping[str, str], body: bytes) -> Response:
        blocks.verify_signature(
            self.signing_secret,
            header(headers, "X-Slack-Request-Timestamp"),
            header(headers, "X-Slack-Signature"),
            body,
            now=self.clock(),
        )
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
        channel = _field(payload.get("container"), "channel_id") or _field(
            payload.get("channel"), "id"
        )
        user = _field(payload.get("user"), "id")
        if isinstance(channel, str) and isinstance(user, str) and channel and user:
            try:
                self._notifier().post_ephemeral(channel, user, text)
            except Exception:
                log.exception("posting an ephemeral note failed")
        return ephemeral(text)

    def _block_actions(self, payload: Mapping[str, Any]) -> Response:
        actions = payload.get("actions")
        action = (
            actions[0]
            if isinstance(actions, list) and actions and isinstance(actions[0], Mapping)
            else {}
        )
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
                outcome = self.decide(
                    job_id, ApproverAct(approver, groups, "approve", None, "slack")
                )
                return self._tell(payload, outcome.decision.message)
            # Deny: check first, so a non-approver or a late click gets a note, not a modal.
            job = self.store.get(job_id)
            if job is None:
                raise NotFound(f"Not found: Job {job_id}")
            core.authorize(
                job, approver=approver, approver_groups=groups, action="deny", policy=self.policy
            )
            rec = core.record_of(job)
            if job.state != PENDING_APPROVAL or core.expire(job, self._now_ms()):
                # Let decide() say why (and expire it if that is the reason).
                late = ApproverAct(approver, groups, "deny", "(late click)", "slack")
                outcome = self.decide(job_id, late)
                return self._tell(payload, outcome.decision.message)
            trigger = payload.get("trigger_id")
            if not isinstance(trigger, str) or not trigger:
                raise InvalidRequest("the Slack payload has no trigger_id")
            self._notifier().open_modal(
                trigger,
                blocks.deny_modal(
                    job_id, channel=rec.slack_channel, ts=rec.slack_ts, sql_preview=job.sql
                ),
            )
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
            groups = self.policy.groups_for(approver)
            denial = ApproverAct(approver, groups, "deny", blocks.modal_reason(view), "slack")
            outcome = self.decide(job_id, denial)
        except (AccessDenied, InvalidRequest, NotFound, Unauthenticated) as err:
            return _view_error(err.message)
        except Unavailable:
            return _view_error(UNAVAILABLE_NOTE)
        if outcome.decision.outcome not in ("denied",):
            return _view_error(outcome.decision.message)
        return Response(200, {"response_action": "clear"})


def _page_size(params: Mapping[str, str]) -> int:
    raw = params.get("limit")
    if raw is None or raw == "":
        return PAGE_SIZE
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest(f"limit: expected a number, got {raw[:20]!r}") from None


def group_body(job_id: str, action: core.Action, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The approver API's answer to a group decision."""
    done = [o for o in outcomes if o.decision.changed or o.redispatched]
    verb = "Approved" if action == "approve" else "Denied"
    message = f"{verb} {len(done)} of the {len(outcomes)} requests of the group"
    if not done and outcomes:
        message += f": {outcomes[0].decision.message}"
    return {
        "job_id": job_id,
        "group_size": len(outcomes),
        "decided": len(done),
        "message": message,
        "outcomes": [o.to_body() for o in outcomes],
    }


class ApprovalsApp:
    """The approvals function's HTTP entry: answers health checks without building any
    client, and builds the service (``factory``) on the first real request."""

    def __init__(self, factory: Callable[[], ApprovalService]) -> None:
        self._factory = factory

    def handle(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        params: Mapping[str, str] | None = None,
    ) -> Response:
        return health_check("approvals", method, path) or answered(
            "approvals service",
            method,
            path,
            lambda: self._factory().handle(method, path, headers, body, params),
        )


def _view_error(text: str) -> Response:
    return Response(
        200,
        {
            "response_action": "errors",
            "errors": {blocks.REASON_BLOCK: blocks.plain_line(text, 150)},
        },
    )


__all__ = [
    "ApprovalService",
    "ApprovalsApp",
    "ApproverAct",
    "Outcome",
    "PendingPage",
    "decode_cursor",
    "encode_cursor",
    "group_body",
    "parse_interaction",
    "route_api",
]
