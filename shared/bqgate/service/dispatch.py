"""The outbox's dispatcher: publish records written with a state change, and reconcile.

Every component that changes a job so that another one must act writes an
:class:`bqgate.outbox.OutboxRecord` in the same commit (see :mod:`bqgate.outbox`),
then calls :meth:`Dispatcher.send`. A failed send is not an error for the caller: the
record stays due, and :meth:`Dispatcher.reconcile` (the sweeper) publishes it again.

Pure: talks to the job store and the queue ports only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bqgate import outbox
from bqgate.approvals import needs_approval
from bqgate.audit.record import EventKind
from bqgate.errors import Unavailable
from bqgate.jobs import PENDING, Job
from bqgate.outbox import OutboxRecord
from bqgate.ports import JobStore, Queue, RecordChange
from bqgate.wire import codec

log = logging.getLogger("bqgate.dispatch")

#: How long a record waits for its first hand-off before the reconciler re-publishes it.
REDISPATCH_AFTER_MS = 20_000


#: One piece of an inline result as the agent gets it: its first row, its row count, and
#: those rows as the JSON text of BigQuery's ``rows`` (``[{"f": [{"v": ...}]}, ...]``).
RestChunk = tuple[int, int, bytes]


@dataclass(frozen=True)
class ExecutorAnswer:
    """The executor's answer to a direct call: what it did, the job as it left it (when
    it finished the job), and, for a result small enough to answer inline
    (``execution.inline_result_bytes``), its masked rows. ``outbox_done``: the executor
    marked the job's ``accepted`` hand-off finished in the commit that ended the job
    (nobody else needs to).

    The rows travel as BigQuery's own JSON text, in the pieces clients ask for
    (``rest``), and are never parsed on the way: the answer is one line of JSON (what
    happened, the job, each piece's first row, row count and length) followed by the
    pieces' bytes. ``size`` is the answer's length.

    >>> a = ExecutorAnswer("done", rest=((0, 1, b'[{"f":[{"v":"1"}]}]'),))
    >>> b = ExecutorAnswer.from_json(a.to_json())
    >>> b.rest, b.size
    (((0, 1, b'[{"f":[{"v":"1"}]}]'),), 104)
    >>> ExecutorAnswer.from_json('{"outcome": 1}') is None
    True
    """

    outcome: str
    job: Job | None = None
    rest: tuple[RestChunk, ...] = ()
    outbox_done: bool = False
    size: int = 0
    accepted: bool = False

    @property
    def rows(self) -> list[list[Any]] | None:
        """The inline rows as compact rows (None: none came inline)."""
        if not self.rest or self.job is None:
            return None
        from bqgate.wire.bigquery import rest_to_compact

        schema = self.job.schema or []
        return [r for _, _, text in self.rest for r in rest_to_compact(codec.loads(text), schema)]

    def to_json(self) -> bytes:
        """The answer as bytes (the executor's HTTP answer to the direct call)."""
        head = codec.dumps_bytes(
            {
                "outcome": self.outcome,
                "job": self.job.to_doc() if self.job is not None else None,
                "outbox_done": self.outbox_done,
                "accepted": self.accepted,
                "rest": [[start, count, len(text)] for start, count, text in self.rest],
            }
        )
        return b"\n".join([head, *(text for _, _, text in self.rest)]) if self.rest else head

    @classmethod
    def from_json(cls, text: str | bytes) -> ExecutorAnswer | None:
        """Read :meth:`to_json` back (None: not an answer)."""
        data = text.encode() if isinstance(text, str) else text
        cut = data.find(b"\n")
        try:
            body = codec.loads(data if cut < 0 else data[:cut])
        except ValueError:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("outcome"), str):
            return None
        doc = body.get("job")
        try:
            job = Job.from_doc(doc) if isinstance(doc, dict) else None
        except (TypeError, ValueError):  # not a job this version knows
            return None
        rest: list[RestChunk] = []
        offset = cut + 1
        for piece in body.get("rest") or ():
            try:
                start, count, length = (int(x) for x in piece)
            except (TypeError, ValueError):
                return None
            chunk = data[offset : offset + length]
            if cut < 0 or len(chunk) != length:
                return None  # cut short: not an answer
            rest.append((start, count, chunk))
            offset += length + 1
        return cls(
            outcome=body["outcome"],
            job=job,
            rest=tuple(rest),
            outbox_done=body.get("outbox_done") is True,
            size=len(data),
            accepted=body.get("accepted") is True,
        )


#: The outcome of a direct call whose uncommitted job the executor did not create.
NOT_CREATED = "not_created"
#: ... because the job store did not answer it (the ingress answers 503 at once).
STORE_DOWN = "store_unavailable"


def directly_acceptable(job: Job) -> bool:
    """Whether the ingress may hand ``job`` to the executor *uncommitted*: an allowed,
    read-only query that runs now (no dry run, no second opinion, no approval).

    The executor then commits the job's creation, its ``accepted`` hand-off and its
    session events (:func:`accepted_events`) together with its claim, in one commit made
    while the read runs: the agent's answer waits for one commit before its rows (the
    one that ends the job, with the result's session events), not three. Nothing else
    changes: the rows are kept only if that commit created the job, and anything that
    is not settled without a round trip (a dry run, an approval, a rewrite or cost
    check that fails) has the executor commit the creation first and go on as usual.
    A write never goes this way: it is claimed before it runs.

    >>> from bqgate.classification import Classification
    >>> read = Classification(decision="allow", statements=("SELECT",))
    >>> job = Job(job_id="j", project="p", location="US", sql="SELECT 1", owner="a",
    ...           classification=read, state=PENDING)
    >>> directly_acceptable(job)
    True
    >>> from dataclasses import replace
    >>> directly_acceptable(replace(job, dry_run=True))
    False
    >>> directly_acceptable(replace(job, classification=Classification(
    ...     decision="allow", statements=("DELETE",))))
    False
    """
    verdict = job.classification
    return (
        job.state == PENDING
        and verdict.decision == "allow"
        and verdict.read_only
        and not verdict.second_opinion
        and not job.dry_run
        and not needs_approval(job)
        and job.executions == 0
        and not job.warehouse_job_id
    )


def accepted_events(job: Job) -> list[tuple[EventKind, Mapping[str, Any]]]:
    """The session events an accepted job is created with (by the ingress, or by the
    executor for a job handed over uncommitted): the request and its classification."""
    return [
        ("request", {"request_kind": job.request_kind}),
        ("classification", job.classification.to_dict()),
    ]


#: The header that makes the executor answer a direct call with :class:`ExecutorAnswer`
#: (a Pub/Sub push delivery does not send it, and gets a plain acknowledgement).
DIRECT_HEADER = "X-Bqgate-Direct"

DirectCall = Callable[[str], "ExecutorAnswer | None"]
"""The fast path to the executor for one job id (raises if it could not hand it over).
It returns the executor's answer, or None when the job went another way (the topic)."""

DirectAccept = Callable[[Job, OutboxRecord], "ExecutorAnswer | None"]
"""The fast path for a job not yet committed (:func:`directly_acceptable`) and its
``accepted`` record: the executor's answer, or None when it could not be asked. Never
falls back to the topic (there is no stored job to deliver): the ingress creates it."""


@dataclass(frozen=True)
class Delivery:
    """One hand-off: whether it happened, and the executor's answer on the fast path."""

    sent: bool
    answer: ExecutorAnswer | None = None


@dataclass
class Reconciled:
    """What one reconciler pass did."""

    published: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)

    def to_body(self) -> dict[str, int]:
        return {
            "published": len(self.published),
            "failed": len(self.failed),
            "given_up": len(self.given_up),
        }


class Dispatcher:
    """Hands outbox records to their consumers and marks them.

    Args:
        store: the job store holding the outbox.
        queue: Pub/Sub.
        direct: the fast path for ``accepted`` records (the ingress's direct call to the
            executor); None publishes them like any other record.
        redispatch_after_ms: the reconciler's deadline, and the base of its backoff.
    """

    def __init__(
        self,
        *,
        store: JobStore,
        queue: Queue,
        direct: DirectCall | None = None,
        accept: DirectAccept | None = None,
        redispatch_after_ms: int = REDISPATCH_AFTER_MS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.queue = queue
        self.direct = direct
        self.accept = accept
        self.redispatch_after_ms = redispatch_after_ms
        self.clock = clock

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def record(
        self, job_id: str, event: str, topic: str, *, until_done: bool = False
    ) -> OutboxRecord:
        """A new record to write with a state change."""
        return outbox.new_record(
            job_id,
            event,
            topic,
            now_ms=self._now_ms(),
            deadline_ms=self.redispatch_after_ms,
            until_done=until_done,
        )

    def send(self, rec: OutboxRecord, *, fast: bool = True) -> bool:
        """Publish one record (the direct path for ``accepted`` when ``fast``) and mark it.
        Returns whether it was handed over; a failure is logged and left to the reconciler."""
        return self.hand_off(rec, fast=fast).sent

    def hand_off(self, rec: OutboxRecord, *, fast: bool = True) -> Delivery:
        """:meth:`send`, with the executor's answer when the direct path took the record."""
        answer: ExecutorAnswer | None = None
        try:
            if fast and self.direct is not None and rec.event == outbox.ACCEPTED:
                got = self.direct(rec.job_id)
                answer = got if isinstance(got, ExecutorAnswer) else None
            else:
                self.queue.publish(rec.topic, rec.message)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "hand-off %s to %s failed (%s); the reconciler will retry",
                rec.record_id,
                rec.topic,
                error[:200],
            )
            self._mark(
                rec,
                lambda r: outbox.failed(
                    r, self._now_ms(), error, retry_ms=self.redispatch_after_ms
                ),
            )
            return Delivery(False)
        self._handed(rec, answer)
        return Delivery(True, answer)

    def accept_new(self, job: Job, rec: OutboxRecord) -> Delivery | None:
        """Hand the uncommitted ``job`` (with its ``accepted`` record ``rec``) to the
        executor to create and run (:func:`directly_acceptable`). None: the executor did
        not create it (or could not be asked): the caller creates it as usual. Raises
        :class:`bqgate.errors.Unavailable` when the executor found the job store down."""
        if self.accept is None or not directly_acceptable(job):
            return None
        try:
            answer = self.accept(job, rec)
        except Exception as exc:
            log.warning(
                "direct hand-over of %s failed (%s); creating it here",
                job.job_id,
                type(exc).__name__,
            )
            return None
        if answer is not None and answer.outcome == STORE_DOWN and not answer.accepted:
            # Not stored, and the store would not answer this side either: say so now.
            raise Unavailable("The job store did not answer in time; try again shortly")
        if answer is None or not answer.accepted:
            return None
        self._handed(rec, answer)
        return Delivery(True, answer)

    def _handed(self, rec: OutboxRecord, answer: ExecutorAnswer | None) -> None:
        """Mark ``rec`` handed over (unless the executor finished it in its own commit)."""
        if answer is not None and answer.outbox_done:
            return  # finished with the job, in the executor's commit
        if rec.until_done:
            self._mark(
                rec,
                lambda r: outbox.published(r, self._now_ms(), retry_ms=self.redispatch_after_ms),
            )
        else:
            # Finished by this publish: one blind write, not a transaction, on the hot path.
            # (A concurrent failure mark can only make it due once more: one more publish.)
            sent = outbox.published(rec, self._now_ms(), retry_ms=self.redispatch_after_ms)
            fields = {} if sent is None else {f: getattr(sent, f) for f in outbox.PUBLISHED_FIELDS}
            try:
                self.store.outbox_update(rec.record_id, fields)
            except Exception:
                log.exception("marking outbox record %s sent failed", rec.record_id)

    def send_all(self, records: Iterable[OutboxRecord], *, fast: bool = True) -> bool:
        """Send each record; True if every one was handed over."""
        return all([self.send(r, fast=fast) for r in records])

    def complete(self, job_id: str, event: str) -> None:
        """The consumer did what the record asked (or it is moot): finish it."""
        self._mark_id(
            outbox.record_id(job_id, event), lambda r: outbox.completed(r, self._now_ms())
        )

    def give_up(self, rec: OutboxRecord) -> None:
        self._mark(rec, lambda r: outbox.abandoned(r, self._now_ms()))

    def pending(self, job_id: str, event: str) -> OutboxRecord | None:
        """The job's unfinished record for ``event``, if any."""
        wanted = outbox.record_id(job_id, event)
        return next(
            (r for r in self.store.outbox_of(job_id) if r.record_id == wanted and not r.finished),
            None,
        )

    def _mark(self, rec: OutboxRecord, change: RecordChange) -> None:
        self._mark_id(rec.record_id, change)

    def _mark_id(self, record_id: str, change: RecordChange) -> None:
        try:
            self.store.outbox_transition(record_id, change)
        except Exception:  # the hand-off happened; a stale mark only means one more publish
            log.exception("marking outbox record %s failed", record_id)

    def reconcile(
        self, *, limit: int = 200, on_give_up: Callable[[OutboxRecord], None] | None = None
    ) -> Reconciled:
        """Publish every due record again (never by the direct path: the reconciler runs
        apart from the ingress); give up records older than :data:`bqgate.outbox.GIVE_UP_MS`."""
        now = self._now_ms()
        done = Reconciled()
        for rec in self.store.outbox_due(now_ms=now, limit=limit):
            if outbox.overdue(rec, now):
                if on_give_up is not None:
                    on_give_up(rec)
                self.give_up(rec)
                done.given_up.append(rec.record_id)
            elif self.send(rec, fast=False):
                done.published.append(rec.record_id)
            else:
                done.failed.append(rec.record_id)
        return done


__all__ = [
    "DIRECT_HEADER",
    "NOT_CREATED",
    "REDISPATCH_AFTER_MS",
    "STORE_DOWN",
    "Delivery",
    "DirectAccept",
    "DirectCall",
    "Dispatcher",
    "ExecutorAnswer",
    "Reconciled",
    "RestChunk",
    "accepted_events",
    "directly_acceptable",
]
