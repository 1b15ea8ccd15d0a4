"""The approval state machine: who may approve what, and what an approval is bound to.

Pure: plain values in, plain values out. A job that needs approval waits in
``PENDING_APPROVAL`` with an :class:`ApprovalRecord` in ``job.approval``:

    pending --N distinct approvals--> approved   (job -> PENDING, run by the executor)
       |----a denial with a reason--> denied     (job -> DONE, accessDenied)
       +----expire_at_ms passed-----> expired    (job -> DONE, accessDenied)

:func:`decide` computes the job one approver's click leaves; the caller runs it
inside a job-store transaction, so two clicks never both count. An approval is bound
(:func:`binding`) to the statement, its owner, its default dataset and the estimate the
approver saw; the executor calls :func:`check_binding` before it runs the job, so a job
whose statement was changed after approval is refused.

>>> from bqgate.classification import Classification
>>> from bqgate.jobs import Job, PENDING_APPROVAL
>>> from bqgate.policy import parse_policy
>>> pol = parse_policy(EXAMPLE_POLICY)
>>> job = Job.new(job_id="j1", project="p", location="US", sql="SELECT 1", owner="agent@x.io",
...               now_ms=0, state=PENDING_APPROVAL, expire_at_ms=60_000, bytes_estimate=10,
...               classification=Classification("approve", statement_hash="ab12"))
>>> d = decide(job, approver="alice@x.io", approver_groups=frozenset({"approvers"}),
...            action="approve", reason=None, now_ms=1_000, policy=pol)
>>> d.outcome, d.job.state, d.message
('approved', 'PENDING', 'Approved by alice@x.io')
>>> check_binding(d.job, "ab12") is None
True
>>> check_binding(d.job, "ffff")
'the approval does not match the job: its statement, owner, default dataset or byte estimate \
changed after it was approved'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from bqgate.errors import AccessDenied, InvalidRequest, stored
from bqgate.jobs import DONE, PENDING, PENDING_APPROVAL, Job
from bqgate.policy import Policy

# Approval record statuses.
REQUESTED = "pending"
APPROVED = "approved"
DENIED = "denied"
EXPIRED = "expired"
STATUSES = (REQUESTED, APPROVED, DENIED, EXPIRED)

#: Longest denial reason accepted (it ends up in the agent's error message).
MAX_REASON_CHARS = 500

#: Version tag of the canonical encoding that :func:`binding` hashes.
BINDING_VERSION = "bqgate-approval-binding-v1"

Action = Literal["approve", "deny"]

EXAMPLE_POLICY = """
version: 1
tiers: [t]
datasets: {p.d: t}
groups:
  agents: {members: [agent@x.io]}
  approvers: {members: [alice@x.io, bob@x.io, carol@x.io]}
rules: [{groups: [agents], tiers: [t], read: approve}]
approvals: {approver_groups: [approvers], required: 1, ttl: 15m, owners: {agent@x.io: carol@x.io}}
"""


@dataclass(frozen=True)
class Vote:
    """One approver's approval."""

    approver: str
    at_ms: int
    via: str = "api"

    def to_doc(self) -> dict[str, Any]:
        return {"approver": self.approver, "at_ms": self.at_ms, "via": self.via}


@dataclass(frozen=True)
class ApprovalRecord:
    """What ``job.approval`` holds (a plain dict in the job store).

    >>> rec = ApprovalRecord(required=2, votes=(Vote("a@x", 5, "slack"),))
    >>> ApprovalRecord.from_doc(rec.to_doc()) == rec
    True
    >>> ApprovalRecord.from_doc({}).status
    'pending'
    """

    status: str = REQUESTED
    required: int = 1
    votes: tuple[Vote, ...] = ()
    denied_by: str | None = None
    #: Where the denial was given (``slack``, ``api``, ``console``).
    denied_via: str | None = None
    reason: str | None = None
    decided_at_ms: int | None = None
    #: :func:`binding` of what was approved (set when the last required vote lands).
    binding: str | None = None
    #: Where the Slack request message lives (``chat.update`` needs both).
    slack_channel: str | None = None
    slack_ts: str | None = None
    #: When slack_notify claimed the post (a claim older than its window is abandoned).
    notified_at_ms: int | None = None
    #: chat.postMessage calls made so far, and when the first was made: after an attempt
    #: whose answer never came, the message may exist, so it is looked up, not reposted.
    post_attempts: int = 0
    first_post_ms: int | None = None
    #: When the message was updated to show the request's outcome (buttons removed).
    slack_closed_ms: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def approvers(self) -> tuple[str, ...]:
        return tuple(v.approver for v in self.votes)

    @property
    def decided_via(self) -> str | None:
        """Where the deciding action came from (the denial, or the last approval)."""
        if self.status == DENIED:
            return self.denied_via
        return self.votes[-1].via if self.votes else None

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = dict(self.extra)
        doc.update(
            {
                "status": self.status,
                "required": self.required,
                "approvals": [v.to_doc() for v in self.votes],
                "denied_by": self.denied_by,
                "denied_via": self.denied_via,
                "reason": self.reason,
                "decided_at_ms": self.decided_at_ms,
                "binding": self.binding,
                "slack_channel": self.slack_channel,
                "slack_ts": self.slack_ts,
                "notified_at_ms": self.notified_at_ms,
                "post_attempts": self.post_attempts,
                "first_post_ms": self.first_post_ms,
                "slack_closed_ms": self.slack_closed_ms,
                # Derived, for queries ("what did alice decide?"); never read back.
                "deciders": sorted(
                    {*self.approvers, *([self.denied_by] if self.denied_by else [])}
                ),
            }
        )
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None, *, required: int = 1) -> ApprovalRecord:
        """Read a stored record; an empty one is a fresh request needing ``required`` votes."""
        doc = dict(doc or {})
        known = {
            "status",
            "required",
            "approvals",
            "denied_by",
            "denied_via",
            "reason",
            "decided_at_ms",
            "deciders",
            "binding",
            "slack_channel",
            "slack_ts",
            "notified_at_ms",
            "post_attempts",
            "first_post_ms",
            "slack_closed_ms",
        }
        votes = tuple(
            Vote(str(v.get("approver", "")), int(v.get("at_ms", 0)), str(v.get("via", "api")))
            for v in doc.get("approvals") or ()
            if isinstance(v, Mapping)
        )
        status = doc.get("status") if doc.get("status") in STATUSES else REQUESTED
        return cls(
            status=str(status),
            required=int(doc.get("required") or required),
            votes=votes,
            denied_by=doc.get("denied_by"),
            denied_via=doc.get("denied_via"),
            reason=doc.get("reason"),
            decided_at_ms=doc.get("decided_at_ms"),
            binding=doc.get("binding"),
            slack_channel=doc.get("slack_channel"),
            slack_ts=doc.get("slack_ts"),
            notified_at_ms=doc.get("notified_at_ms"),
            post_attempts=int(doc.get("post_attempts") or 0),
            first_post_ms=doc.get("first_post_ms"),
            slack_closed_ms=doc.get("slack_closed_ms"),
            extra={k: v for k, v in doc.items() if k not in known},
        )


def record_of(job: Job, required: int = 1) -> ApprovalRecord:
    """The job's approval record (a fresh one if none was written yet)."""
    return ApprovalRecord.from_doc(job.approval, required=required)


@dataclass(frozen=True)
class Decision:
    """The result of one approver action.

    Attributes:
        outcome: ``approved`` (all votes in: run it), ``recorded`` (a vote, more needed),
            ``denied``, ``expired``, or ``unchanged`` (nothing to do; ``message`` says why).
        message: One line for the approver (Slack ephemeral text, API response).
        job: The job as the decision leaves it (``None``: write nothing).
    """

    outcome: str
    message: str
    job: Job | None = None

    @property
    def changed(self) -> bool:
        return self.job is not None

    @property
    def execute(self) -> bool:
        """True when the job became runnable and must be handed to the executor."""
        return self.outcome == APPROVED


# --------------------------------------------------------------------------- binding


def binding(
    statement_hash: str,
    owner: str,
    default_dataset: Mapping[str, str] | str | None,
    bytes_estimate: int | None,
) -> str:
    """SHA-256 over a canonical encoding of what an approval covers.

    The encoding is a JSON array (sorted, no whitespace) of a version tag, the statement
    hash, the lower-cased owner, the default dataset as ``project.dataset`` (or ``""``)
    and the byte estimate (or ``null``), so no two different inputs encode alike.

    >>> b = binding("ab12", "Agent@x.io", {"projectId": "p", "datasetId": "d"}, 1024)
    >>> b == binding("ab12", "agent@x.io", "p.d", 1024)
    True
    >>> b == binding("ab12", "agent@x.io", "p.d", 1025)
    False
    >>> len(b)
    64
    """
    if isinstance(default_dataset, Mapping):
        ds = ".".join(
            p
            for p in (default_dataset.get("projectId", ""), default_dataset.get("datasetId", ""))
            if p
        )
    else:
        ds = default_dataset or ""
    canonical = json.dumps(
        [
            BINDING_VERSION,
            statement_hash,
            owner.strip().lower(),
            ds,
            None if bytes_estimate is None else int(bytes_estimate),
        ],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def job_binding(job: Job, statement_hash: str | None = None) -> str:
    """:func:`binding` of ``job`` (with the classification's statement hash by default)."""
    digest = statement_hash if statement_hash is not None else statement_hash_of(job)
    return binding(digest, job.owner, job.default_dataset, job.bytes_estimate)


def statement_hash_of(job: Job) -> str:
    """The statement hash recorded when the job was classified (``""`` if none)."""
    return job.classification.statement_hash


def needs_approval(job: Job) -> bool:
    """Whether the job may only run with an approval (policy or cost guard said so, or an
    approval was requested).

    >>> from bqgate.classification import Classification
    >>> needs_approval(Job(job_id="j", project="p", location="US", sql="", owner="a",
    ...                    classification=Classification("allow")))
    False
    """
    return (
        bool(job.needs_approval) or bool(job.approval) or job.classification.decision == "approve"
    )


def check_binding(job: Job, statement_hash: str) -> str | None:
    """Whether the executor may run ``job``: ``None`` if so, else the reason it may not.

    ``statement_hash`` is the hash the executor computed from the statement it is about
    to run. A job that never needed approval passes.
    """
    if not needs_approval(job):
        return None
    rec = ApprovalRecord.from_doc(job.approval)
    if rec.status != APPROVED:
        return f"the job has not been approved (approval status: {rec.status})"
    if len(set(rec.approvers)) < rec.required:
        return f"the job has {len(set(rec.approvers))} of the {rec.required} approvals it needs"
    if rec.binding is None or rec.binding != job_binding(job, statement_hash):
        return (
            "the approval does not match the job: its statement, owner, default dataset "
            "or byte estimate changed after it was approved"
        )
    if statement_hash != statement_hash_of(job):
        return "the statement to run differs from the statement that was classified"
    return None


# --------------------------------------------------------------------------- expiry


def describe_duration(ms: int) -> str:
    """A duration in words.

    >>> describe_duration(900_000), describe_duration(3_000), describe_duration(7_200_000)
    ('15 minutes', '3 seconds', '2 hours')
    >>> describe_duration(60_000), describe_duration(90_000)
    ('1 minute', '90 seconds')
    """
    seconds = max(0, round(ms / 1000))
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def expiry_message(job: Job) -> str:
    """The agent's error message for an expired request."""
    ttl = (job.expire_at_ms or job.created_ms) - job.created_ms
    return f"Approval request expired after {describe_duration(ttl)}"


def expire(job: Job, now_ms: int) -> Job | None:
    """The job as its expiry ends it, or None if it is not an expired approval request.

    Shared by the approvals function and the gateway (which expires requests lazily
    when the agent polls). Run it inside a job-store transaction.

    >>> job = Job(job_id="j", project="p", location="US", sql="", owner="a",
    ...           state=PENDING_APPROVAL, created_ms=0, expire_at_ms=900_000)
    >>> expire(job, 899_999) is None
    True
    >>> j = expire(job, 900_000)
    >>> j.state, j.error["message"], j.approval["status"]
    ('DONE', 'Approval request expired after 15 minutes', 'expired')
    """
    if job.state != PENDING_APPROVAL or job.expire_at_ms is None or now_ms < job.expire_at_ms:
        return None
    rec = replace(ApprovalRecord.from_doc(job.approval), status=EXPIRED, decided_at_ms=now_ms)
    return replace(
        job,
        state=DONE,
        ended_ms=now_ms,
        error=stored(AccessDenied(expiry_message(job))),
        approval=rec.to_doc(),
    )


def holds_quota_slot(job: Job, now_ms: int) -> bool:
    """Whether ``job`` counts against its owner's ``approvals.max_pending_per_principal``:
    it awaits a decision and has not expired (expired requests never hold a slot).

    >>> job = Job(job_id="j", project="p", location="US", sql="", owner="a",
    ...           state=PENDING_APPROVAL, expire_at_ms=10)
    >>> holds_quota_slot(job, 9), holds_quota_slot(job, 10)
    (True, False)
    """
    if job.state != PENDING_APPROVAL:
        return False
    return job.expire_at_ms is None or now_ms < job.expire_at_ms


def quota_message(owner: str, open_count: int, limit: int) -> str:
    """Why an approval-needing statement is refused past the quota.

    >>> quota_message("a@x", 10, 10)[:60]
    'Too many open approval requests: a@x already has 10 requests'
    """
    return (
        f"Too many open approval requests: {owner} already has {open_count} requests "
        f"awaiting approval, the most the policy allows (approvals.max_pending_per_principal "
        f"= {limit}). Wait for a decision on them, or cancel one, before sending another "
        "statement that needs approval."
    )


def group_key(job: Job) -> tuple[str, str, str]:
    """Requests an approver may decide together: one owner, one statement (its hash),
    one default dataset.

    >>> from bqgate.classification import Classification
    >>> job = Job(job_id="j", project="p", location="US", sql="", owner="A@x",
    ...           classification=Classification(statement_hash="h"))
    >>> group_key(job)
    ('a@x', 'h', '')
    """
    default = job.default_dataset or {}
    ds = ".".join(p for p in (default.get("projectId", ""), default.get("datasetId", "")) if p)
    return job.owner.strip().lower(), statement_hash_of(job), ds


def group_id(job: Job) -> str:
    """A short stable id of :func:`group_key`.

    >>> len(group_id(Job(job_id="j", project="p", location="US", sql="", owner="a")))
    16
    """
    return hashlib.sha256(json.dumps(group_key(job)).encode()).hexdigest()[:16]


def final_outcome(job: Job) -> tuple[str, str | None, str | None]:
    """How an ended request's Slack message should read: ``(outcome, actor, reason)``.

    >>> job = Job(job_id="j", project="p", location="US", sql="", owner="a", state=DONE,
    ...           error={"reason": "stopped", "message": "Job cancelled by its owner"})
    >>> final_outcome(job)
    ('ended', None, 'Job cancelled by its owner')
    """
    rec = ApprovalRecord.from_doc(job.approval)
    if rec.status == APPROVED:
        return APPROVED, ", ".join(rec.approvers) or None, None
    if rec.status == DENIED:
        return DENIED, rec.denied_by, rec.reason
    if rec.status == EXPIRED:
        return EXPIRED, None, None
    message = (job.error or {}).get("message") if job.error else None
    return "ended", None, message or f"the request is no longer pending (state {job.state})"


# --------------------------------------------------------------------------- decisions


def require_approver(
    approver: str, approver_groups: frozenset[str], policy: Policy, *, action: str = "decide"
) -> str:
    """The approver's identity (lower-cased); :class:`AccessDenied` unless they are in one
    of the policy's approver groups.

    >>> from bqgate.policy import parse_policy
    >>> require_approver("Alice@x.io", frozenset({"approvers"}), parse_policy(EXAMPLE_POLICY))
    'alice@x.io'
    >>> require_approver("agent@x.io", frozenset({"agents"}), parse_policy(EXAMPLE_POLICY))
    Traceback (most recent call last):
    bqgate.errors.AccessDenied: agent@x.io may not decide requests: not a member of an approver \
group (approvers)
    """
    who = approver.strip().lower()
    allowed = policy.approvals.approver_groups
    if not who:
        raise AccessDenied("Cannot tell who you are: no approver identity")
    if not set(allowed) & set(approver_groups):
        raise AccessDenied(
            f"{who} may not {action} requests: not a member of an approver group "
            f"({', '.join(allowed) or 'none configured'})"
        )
    return who


def authorize(
    job: Job, *, approver: str, approver_groups: frozenset[str], action: Action, policy: Policy
) -> None:
    """Raise :class:`AccessDenied` unless ``approver`` may ``action`` this job.

    Approvers must be in one of the policy's approver groups; nobody approves their own
    request, nor a request of an agent identity they own (``approvals.owners``).
    """
    who = require_approver(approver, approver_groups, policy, action=action)
    if action == "deny":
        return
    owner = job.owner.strip().lower()
    if who == owner:
        raise AccessDenied(f"{who} may not approve their own request")
    human = policy.approvals.owners.get(owner)
    if human is not None and human.strip().lower() == who:
        raise AccessDenied(f"{who} may not approve a request of {owner}, an identity they own")


def _after_the_fact(job: Job, rec: ApprovalRecord) -> str:
    """Why a click on a request that is no longer pending changes nothing."""
    if rec.status == APPROVED:
        return f"Already approved by {', '.join(rec.approvers)}; nothing changed"
    if rec.status == DENIED:
        return f"Already denied by {rec.denied_by}; nothing changed"
    if rec.status == EXPIRED:
        return "The request already expired; nothing changed"
    if job.state == DONE and job.error:
        return f"The request already ended ({job.error.get('message', 'failed')}); nothing changed"
    return f"The request is no longer awaiting approval (state {job.state}); nothing changed"


def clean_reason(reason: str | None) -> str:
    """A denial reason, validated: non-blank, printable, at most MAX_REASON_CHARS.

    >>> clean_reason("  touches   payroll\\n")
    'touches payroll'
    >>> clean_reason(" ")
    Traceback (most recent call last):
    bqgate.errors.InvalidRequest: A reason is required to deny a request
    """
    text = " ".join((reason or "").split())
    if not text:
        raise InvalidRequest("A reason is required to deny a request")
    if len(text) > MAX_REASON_CHARS:
        raise InvalidRequest(
            f"The reason is too long ({len(text)} characters; at most {MAX_REASON_CHARS})"
        )
    return "".join(c if c.isprintable() else " " for c in text)


def decide(
    job: Job,
    *,
    approver: str,
    approver_groups: frozenset[str],
    action: Action,
    reason: str | None,
    now_ms: int,
    policy: Policy,
    via: str = "api",
) -> Decision:
    """One approver's approve or deny on ``job``: the job it leaves and what to say.

    Raises:
        AccessDenied: the approver may not decide this request (see :func:`authorize`).
        InvalidRequest: unknown action, or a denial without a usable reason.
    """
    if action not in ("approve", "deny"):
        raise InvalidRequest(f"Unknown approval action {action!r}: expected approve or deny")
    who = approver.strip().lower()
    authorize(job, approver=who, approver_groups=approver_groups, action=action, policy=policy)
    rec = record_of(job, policy.approvals.required)
    if job.state != PENDING_APPROVAL or rec.status != REQUESTED:
        return Decision("unchanged", _after_the_fact(job, rec))
    expired = expire(job, now_ms)
    if expired is not None:
        return Decision(EXPIRED, f"{expiry_message(job)}; it can no longer be decided", expired)
    if action == "approve" and job.bytes_estimate is None:
        # The executor dry-runs every request before it is sent for approval; an
        # approval covers the estimate the approver saw, so none is given before it.
        raise InvalidRequest("The request is still being estimated; try again in a few seconds")
    if action == "deny":
        text = clean_reason(reason)
        denied = replace(
            rec, status=DENIED, denied_by=who, denied_via=via, reason=text, decided_at_ms=now_ms
        )
        message = f"Denied by {who}: {text}"
        return Decision(
            DENIED,
            message,
            replace(
                job,
                state=DONE,
                ended_ms=now_ms,
                approval=denied.to_doc(),
                error=stored(AccessDenied(message)),
            ),
        )
    if who in rec.approvers:
        left = rec.required - len(rec.approvers)
        return Decision(
            "unchanged",
            f"You already approved this request; it still needs "
            f"{left} more approval{'s' if left != 1 else ''}",
        )
    votes = (*rec.votes, Vote(who, now_ms, via))
    if len(votes) < rec.required:
        left = rec.required - len(votes)
        partial = replace(rec, votes=votes)
        return Decision(
            "recorded",
            f"Approval {len(votes)} of {rec.required} recorded by {who}; waiting for {left} more",
            replace(job, approval=partial.to_doc()),
        )
    approved = replace(
        rec, status=APPROVED, votes=votes, decided_at_ms=now_ms, binding=job_binding(job)
    )
    return Decision(
        APPROVED,
        f"Approved by {', '.join(v.approver for v in votes)}",
        replace(job, state=PENDING, approval=approved.to_doc()),
    )


__all__ = [
    "APPROVED",
    "DENIED",
    "EXPIRED",
    "REQUESTED",
    "ApprovalRecord",
    "Decision",
    "Vote",
    "authorize",
    "binding",
    "check_binding",
    "clean_reason",
    "decide",
    "expire",
    "expiry_message",
    "final_outcome",
    "group_id",
    "group_key",
    "holds_quota_slot",
    "job_binding",
    "needs_approval",
    "quota_message",
    "record_of",
    "require_approver",
    "statement_hash_of",
]
