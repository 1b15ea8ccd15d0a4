"""The transactional outbox: every hand-off that must follow a state change.

A state change that makes a job someone else's work (the ingress accepted it, an
approver approved it, the executor asked for an approval, a request ended and its
Slack message must say so) writes an :class:`OutboxRecord` in the same Firestore
commit as the change. A dispatcher then publishes it and marks it sent; the sweeper's
reconciler re-publishes every record still due after a short deadline. Consumers are
idempotent (the executor runs a job once, slack_notify posts one message per
request), so publishing twice is harmless and publishing never is impossible.

A record is *finished* when ``due_ms`` is ``None``:

* ``until_done=False`` (execute topic): finished once published;
* ``until_done=True`` (approvals topic): finished only when its consumer says so
  (:func:`completed`), because a published notification can still die (Slack down,
  dead-lettered); until then the reconciler keeps re-publishing it with backoff.

Pure: plain values in, plain values out.

>>> rec = new_record("j1", ACCEPTED, "execute", now_ms=1_000, deadline_ms=20_000)
>>> rec.record_id, rec.due_ms, rec.finished
('j1~accepted', 21000, False)
>>> OutboxRecord.from_doc(rec.to_doc()) == rec
True
>>> sent = published(rec, 2_000, retry_ms=20_000)
>>> sent.finished, sent.sent_ms, sent.attempts
(True, 2000, 1)
>>> changed_fields(rec, sent)
{'due_ms': None, 'attempts': 1, 'sent_ms': 2000}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from bqgate.wire.envelopes import job_message

#: Events, one record each per job (so a record id is derived from the job id).
ACCEPTED = "accepted"  # ingress -> executor: run (or estimate) the job
APPROVED = "approved"  # approvals -> executor: the approved job may run
NOTIFY = "notify"  # executor -> slack_notify: post the approval request
CLOSE = "close"  # anyone -> slack_notify: show the outcome on the request's message
EVENTS = (ACCEPTED, APPROVED, NOTIFY, CLOSE)

#: Longest pause between two re-publishes of a notification (``until_done``) record; a
#: hand-off to the executor is retried every ``retry_ms``, so it goes out within one
#: reconciler pass after Pub/Sub recovers.
MAX_RETRY_MS = 5 * 60 * 1000
#: A record still unfinished this long after it was written is given up (the job is
#: failed with a clear error if it is still waiting for it).
GIVE_UP_MS = 60 * 60 * 1000


def record_id(job_id: str, event: str) -> str:
    """The outbox document id of ``event`` for ``job_id`` (never a reserved Firestore id).

    >>> record_id("__x__", CLOSE)
    '__x__~close'
    """
    return f"{job_id}~{event}"


@dataclass(frozen=True)
class OutboxRecord:
    """One hand-off: publish ``{"job_id": job_id}`` to ``topic``."""

    job_id: str
    event: str
    topic: str
    created_ms: int
    #: When the reconciler may (re-)publish it; None once finished.
    due_ms: int | None
    until_done: bool = False
    attempts: int = 0
    sent_ms: int | None = None
    done_ms: int | None = None
    gave_up_ms: int | None = None
    last_error: str | None = None

    @property
    def record_id(self) -> str:
        return record_id(self.job_id, self.event)

    @property
    def finished(self) -> bool:
        return self.due_ms is None

    @property
    def message(self) -> dict[str, str]:
        return job_message(self.job_id)

    def stalled(self, now_ms: int, grace_ms: int) -> bool:
        """Never sent, and older than ``grace_ms`` (a first hand-off still in flight is
        younger): a retry of the state change may hand it off again."""
        return not self.finished and self.sent_ms is None and now_ms - self.created_ms >= grace_ms

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> OutboxRecord:
        names = {f.name for f in fields(cls)}
        unknown = set(doc) - names - {"expire_at"}
        if unknown:
            raise ValueError(f"unknown outbox record fields: {sorted(unknown)}")
        return cls(**{k: v for k, v in doc.items() if k in names})


def new_record(
    job_id: str,
    event: str,
    topic: str,
    *,
    now_ms: int,
    deadline_ms: int,
    until_done: bool = False,
) -> OutboxRecord:
    """A record written with the state change; due for the reconciler after ``deadline_ms``."""
    if event not in EVENTS:
        raise ValueError(f"unknown outbox event {event!r}")
    return OutboxRecord(job_id, event, topic, now_ms, now_ms + deadline_ms, until_done)


def retry_delay_ms(attempts: int, retry_ms: int, until_done: bool = False) -> int:
    """The pause before the next re-publish: ``retry_ms`` for a hand-off (publishing is
    cheap, and a job waits for it), exponential up to :data:`MAX_RETRY_MS` for a
    notification (each retry asks Slack).

    >>> [retry_delay_ms(n, 20_000) for n in (1, 5)]
    [20000, 20000]
    >>> [retry_delay_ms(n, 20_000, until_done=True) for n in (0, 1, 2, 3, 10)]
    [20000, 20000, 40000, 80000, 300000]
    """
    if not until_done:
        return retry_ms
    return int(min(retry_ms * 2 ** max(attempts - 1, 0), MAX_RETRY_MS))


def changed_fields(before: OutboxRecord, after: OutboxRecord) -> dict[str, Any]:
    """The stored fields ``after`` differs from ``before`` in (what a store writes)."""
    old = before.to_doc()
    return {k: v for k, v in after.to_doc().items() if old.get(k) != v}


def published(rec: OutboxRecord, now_ms: int, *, retry_ms: int) -> OutboxRecord | None:
    """The record after a successful publish (None: the record finished meanwhile)."""
    if rec.finished:
        return None
    attempts = rec.attempts + 1
    due = now_ms + retry_delay_ms(attempts, retry_ms, True) if rec.until_done else None
    return replace(rec, attempts=attempts, sent_ms=now_ms, due_ms=due, last_error=None)


#: The fields :func:`published` sets, all of them written when a publish is marked without
#: reading the record first.
PUBLISHED_FIELDS = ("attempts", "sent_ms", "due_ms", "last_error")


def failed(rec: OutboxRecord, now_ms: int, error: str, *, retry_ms: int) -> OutboxRecord | None:
    """The record after a failed publish: due again after a backoff."""
    if rec.finished:
        return None
    attempts = rec.attempts + 1
    return replace(
        rec,
        attempts=attempts,
        due_ms=now_ms + retry_delay_ms(attempts, retry_ms, rec.until_done),
        last_error=error[:300],
    )


def completed(rec: OutboxRecord, now_ms: int) -> OutboxRecord | None:
    """The record once the consumer has done what it asked (or it is moot)."""
    if rec.finished and rec.done_ms is not None:
        return None
    return replace(rec, due_ms=None, done_ms=now_ms)


def delivered(now_ms: int) -> dict[str, Any]:
    """Fields when the consumer itself finishes a record it was handed directly (the
    executor, in the commit that ends the job the ingress called it for): written
    without reading the record.

    >>> delivered(5)
    {'due_ms': None, 'sent_ms': 5, 'done_ms': 5, 'last_error': None}
    """
    return {"due_ms": None, "sent_ms": now_ms, "done_ms": now_ms, "last_error": None}


def abandoned(rec: OutboxRecord, now_ms: int) -> OutboxRecord | None:
    """The record once the reconciler gives it up (see :data:`GIVE_UP_MS`)."""
    if rec.finished:
        return None
    return replace(rec, due_ms=None, gave_up_ms=now_ms)


def overdue(rec: OutboxRecord, now_ms: int) -> bool:
    """Whether the reconciler should give the record up instead of publishing it again.

    >>> overdue(new_record("j", ACCEPTED, "t", now_ms=0, deadline_ms=1), GIVE_UP_MS)
    True
    """
    return not rec.finished and now_ms - rec.created_ms >= GIVE_UP_MS


__all__ = [
    "ACCEPTED",
    "APPROVED",
    "CLOSE",
    "EVENTS",
    "GIVE_UP_MS",
    "MAX_RETRY_MS",
    "NOTIFY",
    "PUBLISHED_FIELDS",
    "OutboxRecord",
    "abandoned",
    "changed_fields",
    "completed",
    "delivered",
    "failed",
    "new_record",
    "overdue",
    "published",
    "record_id",
    "retry_delay_ms",
]
