"""The job store on Firestore.

Layout (every document carries ``expire_at``, the timestamp Firestore's TTL deletes by)::

    jobs/{job_id}                  the job (bqgate.jobs.Job.to_doc)
    jobs/{job_id}/pages/{n:06d}    masked result pages
    outbox/{job_id}~{event}        hand-offs written with the job's state changes
                                   (bqgate.outbox.OutboxRecord)
    approval_quotas/{principal}    the principal's open approval requests (job ids), the
                                   counter behind approvals.max_pending_per_principal

Every call has a deadline (``call_timeout_s``; reads also retry refused connections within
it), so a Firestore outage answers within seconds as :class:`bqgate.errors.Unavailable`
instead of waiting out the client library's 60-300 s defaults. A transition is an
optimistic compare-and-set on the document's ``update_time`` (no Firestore transaction:
their begin/commit calls take no deadline, and on the emulator they wait out lock timeouts
under contention); its outbox records are committed in the same batch.

Writes that count against a quota are optimistic too: read the counter, then commit the job
write and the new counter together, on the condition that the counter did not change
since it was read (its ``update_time``); a loser starts over. Concurrent submissions of
one principal therefore serialise on its counter, and never overshoot the quota.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from bqgate import outbox
from bqgate.adapters.firestore_audit import FirestoreRecorder, HeadState, Staged
from bqgate.adapters.firestore_writes import FastBatch
from bqgate.adapters.google_errors import outage_as_unavailable, retry
from bqgate.approvals import holds_quota_slot
from bqgate.errors import Duplicate, NotFound, Unavailable
from bqgate.jobs import PENDING_APPROVAL, RUNNING, Job, Transition, changed_fields
from bqgate.outbox import OutboxRecord
from bqgate.ports import (
    Change,
    DecisionQuery,
    Dispatches,
    OpenRequestQuota,
    Page,
    PendingCursor,
    QuotaFull,
    RecordChange,
    Recording,
)
from bqgate.wire.bigquery import is_job_id

JOBS = "jobs"
PAGES = "pages"
OUTBOX = "outbox"
QUOTAS = "approval_quotas"
#: The job field a decided approval request is ordered by (see firestore.tf's indexes).
DECIDED_AT = "approval.decided_at_ms"
#: Seconds per Firestore call (with the library's retries of a refused connection).
CALL_TIMEOUT_S = 5.0
#: Seconds a console query over decided requests may take (not on an agent's request path).
HISTORY_TIMEOUT_S = 30.0
#: Longest a transition keeps retrying when other writers keep changing the job.
CONTENTION_DEADLINE_S = 10.0
#: What a lost compare-and-set looks like.
_LOST_RACE = (gexc.FailedPrecondition, gexc.Aborted, gexc.Conflict)
#: What a lost race looks like: the counter (or job) moved, or a create found its slot taken.
CONTENTION = (gexc.FailedPrecondition, gexc.AlreadyExists, gexc.Aborted, gexc.Conflict)
#: Longest a quota-counted write keeps retrying on contention.
QUOTA_DEADLINE_S = 30.0
#: Timeout of each query.
QUERY_TIMEOUT_S = 10.0

_DESC = firestore.Query.DESCENDING
#: Jobs this process remembers as it last read or wrote them (bounded; see ``_transition``).
KNOWN_JOBS = 512


@dataclass(frozen=True)
class _Known:
    """A job document as this process last read (``own`` False) or wrote it, with the
    update time a compare-and-set on it is conditioned on."""

    update_time: Any
    doc: dict[str, Any]
    own: bool


@dataclass(frozen=True)
class _Step:
    """What a transition's ``change`` makes of a stored job: the job as read (``before``),
    as changed (``after``), the fields that differ and the document they leave."""

    before: Job
    after: Job
    fields: dict[str, Any]
    doc: dict[str, Any]

    @classmethod
    def of(cls, known: _Known, change: Change) -> _Step:
        job = Job.from_doc(copy.deepcopy(known.doc))
        after = change(job)
        fields = {} if after is None else changed_fields(job, after)
        if not fields:
            return cls(job, job, {}, known.doc)
        doc = {**known.doc, **fields}
        return cls(job, Job.from_doc(copy.deepcopy(doc)), fields, doc)


class _Batch:
    """A write batch that counts its writes: a commit's results come back in write order,
    so the session head's update time is found by its position."""

    def __init__(self, batch: Any) -> None:
        # Plain writes encoded straight into protobuf (the library's encoding is the
        # slowest part of a commit on the agent's path; see firestore_writes).
        self.batch = FastBatch(batch)
        self.writes = 0
        self.head_index: int | None = None

    def create(self, ref: Any, doc: Mapping[str, Any]) -> None:
        self.batch.create(ref, doc)
        self.writes += 1

    def set(self, ref: Any, doc: Mapping[str, Any], **kwargs: Any) -> None:
        self.batch.set(ref, doc, **kwargs)
        self.writes += 1

    def update(self, ref: Any, fields: Mapping[str, Any], **kwargs: Any) -> None:
        self.batch.update(ref, fields, **kwargs)
        self.writes += 1

    def mark_head(self) -> None:
        """The last write was the session head's."""
        self.head_index = self.writes - 1

    def head_time(self, results: Sequence[Any]) -> Any:
        if self.head_index is None or self.head_index >= len(results):
            return None
        return results[self.head_index].update_time

    def commit(self, **kwargs: Any) -> Any:
        return self.batch.commit(**kwargs)


def page_id(index: int) -> str:
    return f"{index:06d}"


def quota_doc_id(principal: str) -> str:
    """The counter document of a principal (hashed: emails are not reserved-id safe)."""
    return hashlib.sha256(principal.strip().lower().encode()).hexdigest()[:40]


class FirestoreJobStore:
    """Jobs and result pages. Every document carries ``expire_at`` (a timestamp), the field
    Firestore's TTL policy deletes by (see infra/terraform/firestore.tf): retention comes from
    the policy's ``sessions.retention``."""

    def __init__(
        self,
        client: firestore.Client,
        collection: str = JOBS,
        retention_seconds: int = 30 * 86400,
        call_timeout_s: float = CALL_TIMEOUT_S,
        contention_deadline_s: float = CONTENTION_DEADLINE_S,
        *,
        outbox_collection: str = OUTBOX,
        quota_collection: str = QUOTAS,
    ) -> None:
        self.client = client
        self.jobs = client.collection(collection)
        self.outbox = client.collection(outbox_collection)
        self.quotas = client.collection(quota_collection)
        self.retention_seconds = retention_seconds
        self.timeout = call_timeout_s
        self.retry = retry(call_timeout_s)
        self.contention_deadline_s = contention_deadline_s
        self._rng = random.Random()
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._known_lock = threading.Lock()
        #: Jobs handed over by the process that last wrote them (:meth:`adopt`).
        self._handed: OrderedDict[str, _Known] = OrderedDict()

    def _expire_at(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.retention_seconds)

    def _write_outbox(self, writer: Any, records: Sequence[OutboxRecord]) -> None:
        """Add the records to a batch (``set``: a rewrite is harmless)."""
        for rec in records:
            writer.set(
                self.outbox.document(rec.record_id),
                {**rec.to_doc(), "expire_at": self._expire_at()},
            )

    def _commit(self, batch: Any) -> list[Any]:
        # No retry: a retried commit that had succeeded would look like a lost race.
        with outage_as_unavailable("Firestore"):
            results: list[Any] = batch.commit(timeout=self.timeout)
        return results

    # --- what this process last read or wrote -------------------------------------

    def _remember(self, job_id: str, update_time: Any, doc: Mapping[str, Any], own: bool) -> None:
        if update_time is None:
            return
        with self._known_lock:
            self._known[job_id] = _Known(update_time, copy.deepcopy(dict(doc)), own)
            self._known.move_to_end(job_id)
            while len(self._known) > KNOWN_JOBS:
                self._known.popitem(last=False)

    def _recall(self, job_id: str) -> _Known | None:
        with self._known_lock:
            return self._known.get(job_id)

    def _forget(self, job_id: str) -> None:
        with self._known_lock:
            self._known.pop(job_id, None)
            self._handed.pop(job_id, None)

    def handover(self, job_id: str) -> dict[str, Any] | None:
        """The job as this process last wrote it, for the process it hands the job to (the
        direct call to the executor): ``{"update_time", "doc"}``, JSON-safe; None if this
        process did not write it last."""
        hit = self._recall(job_id)
        if hit is None or not hit.own or not hasattr(hit.update_time, "rfc3339"):
            return None
        return {"update_time": hit.update_time.rfc3339(), "doc": Job.from_doc(hit.doc).to_doc()}

    def adopt(self, job_id: str, state: Any) -> bool:
        """Take a job as the process that handed it over last wrote it (:meth:`handover`):
        the next :meth:`get` of it answers from that, once, without a read. Safe because
        only a write trusts it: a write holds only if the stored job has not changed since
        (compare-and-set on its update time), else it reads and starts again. False (and
        nothing taken) for anything that is not a handover of this job."""
        try:
            update_time = DatetimeWithNanoseconds.from_rfc3339(state["update_time"])
            doc = state["doc"]
            if not isinstance(doc, dict) or Job.from_doc(copy.deepcopy(doc)).job_id != job_id:
                return False
        except (KeyError, TypeError, ValueError):
            return False
        with self._known_lock:
            self._handed[job_id] = _Known(update_time, doc, False)
            while len(self._handed) > KNOWN_JOBS:
                self._handed.popitem(last=False)
        return True

    def _journal(self, record: Recording | None) -> FirestoreRecorder | None:
        """The recorder whose events this store can commit with its own writes."""
        from bqgate.adapters.firestore_audit import FirestoreRecorder

        journal = record.journal if record is not None else None
        if isinstance(journal, FirestoreRecorder) and journal.client is self.client:
            return journal
        return None

    def _write_pages(self, batch: Any, job_id: str, pages: Sequence[Page]) -> None:
        coll = self.jobs.document(job_id).collection(PAGES)
        for page in pages:
            batch.set(coll.document(page_id(page.index)), self._page_doc(page))

    def _page_doc(self, page: Page) -> dict[str, Any]:
        return {
            "index": page.index,
            "start": page.start,
            "rows": page.rows_json,
            "expire_at": self._expire_at(),
        }

    def _write_completions(self, batch: Any, record_ids: Sequence[str]) -> None:
        """Mark outbox records finished (an update: the commit fails if one is gone)."""
        fields = outbox.delivered(int(time.time() * 1000))
        for rid in record_ids:
            batch.update(self.outbox.document(rid), fields)

    # --- writing -------------------------------------------------------------------

    def create(
        self,
        job: Job,
        *,
        dispatch: Sequence[OutboxRecord] = (),
        quota: OpenRequestQuota | None = None,
        record: Recording | None = None,
    ) -> None:
        journal = self._journal(record)
        self._create(job, dispatch, quota, record if journal is not None else None, journal)
        if record is not None and journal is None:
            record.write(job)  # another kind of journal: right after the write

    def _create(
        self,
        job: Job,
        dispatch: Sequence[OutboxRecord],
        quota: OpenRequestQuota | None,
        record: Recording | None,
        journal: FirestoreRecorder | None,
    ) -> None:
        ref = self.jobs.document(job.job_id)
        doc = {**job.to_doc(), "expire_at": self._expire_at()}
        append = (
            journal.prepare(record.job, record.events(job))
            if journal is not None and record is not None
            else None
        )
        staged: list[Staged] = []

        def write(batch: _Batch, head: HeadState | None) -> None:
            batch.create(ref, doc)  # the job's own write is the batch's first
            self._write_outbox(batch, dispatch)
            staged.clear()
            if append is not None and journal is not None and head is not None:
                staged.append(journal.stage(batch, append, head))
                batch.mark_head()

        duplicate = Duplicate(f"Already Exists: Job {job.project}:{job.job_id}")

        def read_head() -> HeadState | None:
            if append is None or journal is None:
                return None
            if tried["known"] is False:  # the first attempt: the head this process knows
                tried["known"] = True
                known = journal.known_head(append.session_id)
                if known is not None:
                    return known
            tried["read"] = True
            with outage_as_unavailable("Firestore"):
                return journal.read_head(append.session_id)

        tried = {"known": False, "read": False}

        def done(batch: _Batch, results: list[Any]) -> None:
            self._remember(job.job_id, results[0].update_time if results else None, doc, True)
            if staged and journal is not None:
                journal.committed(staged[0], batch.head_time(results))

        lock = journal.lock(append.session_id) if journal and append else contextlib.nullcontext()
        with lock:
            if quota is None or not holds_quota_slot(job, quota.now_ms):
                if append is None:
                    batch = _Batch(self.client.batch())
                    write(batch, None)
                    try:
                        results = self._commit(batch)
                    except gexc.AlreadyExists:
                        raise duplicate from None
                    done(batch, results)
                    return

                def attempt() -> None:
                    batch = _Batch(self.client.batch())
                    write(batch, read_head())
                    results = self._commit(batch)
                    done(batch, results)

            else:
                quota_ = quota

                def attempt() -> None:
                    head = read_head()
                    holder: dict[str, _Batch] = {}

                    def counted(batch: Any) -> None:
                        holder["batch"] = wrapped = _Batch(batch)
                        write(wrapped, head)

                    results = self._counted_commit(quota_, job.job_id, counted)
                    done(holder["batch"], results)

            def lost(exc: Exception) -> bool:
                # A create fails on the job's own id (a duplicate) or on the session's
                # head or event slots (a concurrent append, or a head known from before
                # that moved: start over, reading it).
                stale = tried["known"] and not tried.get("read")
                if append is not None and journal is not None:
                    journal.forget_head(append.session_id)
                if isinstance(exc, gexc.AlreadyExists) and self._snapshot(job.job_id).exists:
                    raise duplicate
                return bool(stale)

            self._retry(attempt, lost)

    def _snapshot(self, job_id: str) -> Any:
        with outage_as_unavailable("Firestore"):
            return self.jobs.document(job_id).get(retry=self.retry, timeout=self.timeout)

    def known(self, job_id: str) -> Job | None:
        """The job as this process last read or wrote it (no round trip; None: unknown)."""
        hit = self._recall(job_id)
        return None if hit is None else Job.from_doc(copy.deepcopy(hit.doc))

    def get(self, job_id: str) -> Job | None:
        if not is_job_id(job_id):
            return None  # not an id this store can hold
        with self._known_lock:
            handed = self._handed.pop(job_id, None)
        if handed is not None:
            self._remember(job_id, handed.update_time, handed.doc, False)
            return Job.from_doc(copy.deepcopy(handed.doc))
        snap = self._snapshot(job_id)
        if not snap.exists:
            return None
        doc = snap.to_dict() or {}
        self._remember(job_id, snap.update_time, doc, False)
        return Job.from_doc(doc)

    def transition(
        self,
        job_id: str,
        change: Change,
        *,
        dispatch: Dispatches | None = None,
        quota: OpenRequestQuota | None = None,
        record: Recording | None = None,
        pages: Sequence[Page] = (),
        complete: Sequence[str] = (),
    ) -> Transition:
        if not is_job_id(job_id):
            raise NotFound(f"Not found: Job {job_id[:100]}")
        journal = self._journal(record)
        staged_record = record if journal is not None else None
        if quota is not None:
            done = self._counted_transition(
                job_id, change, dispatch, quota, staged_record, journal, pages, complete
            )
        else:
            done = self._transition(
                job_id, change, dispatch, staged_record, journal, pages, complete
            )
        if done.changed and record is not None and journal is None:
            record.write(done.after)  # another kind of journal: right after the write
        return done

    def _fresh(
        self, job_id: str, journal: FirestoreRecorder | None, session: str | None
    ) -> tuple[_Known | None, HeadState | None]:
        """The stored job (None: there is none), and the session's head when events are
        recorded (read with the job: one round trip)."""
        if journal is not None and session is not None:
            return self._read_with_head(job_id, journal, session)
        snap = self._snapshot(job_id)
        if not snap.exists:
            return None, None
        return _Known(snap.update_time, snap.to_dict() or {}, False), None

    def _write_change(
        self,
        batch: _Batch,
        job_id: str,
        known: _Known,
        step: _Step,
        dispatch: Dispatches | None,
        pages: Sequence[Page],
        completions: Sequence[str],
        record: Recording | None,
        journal: FirestoreRecorder | None,
        head: HeadState | None,
    ) -> Staged | None:
        """Stage a transition's writes: the job's changed fields (only if nobody wrote the
        job since ``known`` was read), its outbox records, pages and completions, and its
        session events (the staged append, when they are recorded in this commit)."""
        option = self.client.write_option(last_update_time=known.update_time)
        batch.update(self.jobs.document(job_id), step.fields, option=option)
        if dispatch is not None:
            self._write_outbox(batch, dispatch(step.after))
        self._write_pages(batch, job_id, pages)
        self._write_completions(batch, completions)
        if journal is None or record is None or head is None:
            return None
        staged = journal.stage(batch, journal.prepare(record.job, record.events(step.after)), head)
        batch.mark_head()
        return staged

    def _committed(
        self,
        job_id: str,
        step: _Step,
        batch: _Batch,
        results: list[Any],
        staged: Staged | None,
        journal: FirestoreRecorder | None,
    ) -> Transition:
        """Remember the job as written and tell the journal its append committed."""
        update_time = results[0].update_time if results else None
        self._remember(job_id, update_time, step.doc, True)
        if staged is not None and journal is not None:
            journal.committed(staged, batch.head_time(results))
        return Transition(step.before, step.after, True)

    def _transition(
        self,
        job_id: str,
        change: Change,
        dispatch: Dispatches | None,
        record: Recording | None,
        journal: FirestoreRecorder | None,
        pages: Sequence[Page],
        complete: Sequence[str],
    ) -> Transition:
        """One optimistic compare-and-set of the job (and of its session's head when
        events are recorded). The first attempt starts from what this process last read
        or wrote, when it knows: a stale start fails its commit and the next attempt
        reads. Only a write is trusted to a remembered job; a remembered job that
        ``change`` leaves alone is read again before the answer."""
        session = journal.session_of(record.job) if journal and record else None
        deadline = time.monotonic() + self.contention_deadline_s
        tries = 0
        trust = True
        completions = list(complete)
        lock = journal.lock(session) if journal and session else contextlib.nullcontext()
        with lock:
            while True:
                known = self._recall(job_id) if trust else None
                head: HeadState | None = None
                remembered = known is not None
                if known is not None and journal is not None and session is not None:
                    head = journal.known_head(session)
                    remembered = head is not None  # else read the job and the head together
                if not remembered:
                    known, head = self._fresh(job_id, journal, session)
                if known is None:
                    raise NotFound(f"Not found: Job {job_id}")
                step = _Step.of(known, change)
                if not step.fields:
                    if remembered:
                        trust = False  # confirm against the stored job
                        continue
                    return Transition.unchanged(step.before)
                batch = _Batch(self.client.batch())
                staged = self._write_change(
                    batch, job_id, known, step, dispatch, pages, completions, record, journal, head
                )
                try:
                    results = self._commit(batch)
                except (*_LOST_RACE, gexc.AlreadyExists):
                    self._forget(job_id)
                    if session is not None and journal is not None:
                        journal.forget_head(session)
                    tries += 1
                    trust = False
                    if time.monotonic() >= deadline:
                        raise Unavailable(
                            "Firestore: the job kept changing under concurrent writers; try again"
                        ) from None
                    if not remembered:  # a remembered start that was stale is no contention
                        time.sleep(self._rng.uniform(0, min(0.01 * 2**tries, 0.5)))
                    continue
                except gexc.NotFound:
                    if not completions:
                        raise NotFound(f"Not found: Job {job_id}") from None
                    completions = []  # a record to finish is gone: nothing to finish
                    continue
                return self._committed(job_id, step, batch, results, staged, journal)

    def _read_with_head(
        self, job_id: str, journal: FirestoreRecorder, session: str
    ) -> tuple[_Known | None, HeadState]:
        ref = self.jobs.document(job_id)
        head_ref = journal.head_ref(session)
        with outage_as_unavailable("Firestore"):
            snaps = {
                s.reference.path: s
                for s in self.client.get_all(
                    [ref, head_ref], retry=self.retry, timeout=self.timeout
                )
            }
        job_snap, head_snap = snaps.get(ref.path), snaps.get(head_ref.path)
        known = None
        if job_snap is not None and job_snap.exists:
            known = _Known(job_snap.update_time, job_snap.to_dict() or {}, False)
        if head_snap is None:
            return known, HeadState(journal.empty_head(session), None)
        return known, journal.head_state(session, head_snap)

    def _counted_transition(
        self,
        job_id: str,
        change: Change,
        dispatch: Dispatches | None,
        quota: OpenRequestQuota,
        record: Recording | None,
        journal: FirestoreRecorder | None,
        pages: Sequence[Page],
        complete: Sequence[str],
    ) -> Transition:
        """A transition that counts the job against ``quota`` if it then holds a slot:
        optimistic on the job (its update_time), the principal's counter and the
        session's head."""
        result: dict[str, Transition] = {}
        session = journal.session_of(record.job) if journal and record else None

        def attempt() -> None:
            known, head = self._fresh(job_id, journal, session)
            if known is None:
                raise NotFound(f"Not found: Job {job_id}")
            step = _Step.of(known, change)
            if not step.fields:
                result["done"] = Transition.unchanged(step.before)
                return
            staged: list[Staged | None] = [None]
            holder: list[_Batch] = []

            def write(raw: Any) -> None:
                batch = raw if isinstance(raw, _Batch) else _Batch(raw)
                holder[:] = [batch]
                staged[0] = self._write_change(
                    batch, job_id, known, step, dispatch, pages, complete, record, journal, head
                )

            if holds_quota_slot(step.after, quota.now_ms):
                results = self._counted_commit(quota, job_id, write)
            else:
                write(_Batch(self.client.batch()))
                results = self._commit(holder[0])
            result["done"] = self._committed(job_id, step, holder[0], results, staged[0], journal)

        lock = journal.lock(session) if journal and session else contextlib.nullcontext()
        with lock:
            self._retry(attempt, lambda exc: None)
        return result["done"]

    def _counted_commit(
        self, quota: OpenRequestQuota, job_id: str, write: Callable[[Any], None]
    ) -> list[Any]:
        """Commit ``write`` with ``job_id`` added to the principal's open requests, if the
        principal has room; raise QuotaFull otherwise. Raises CONTENTION on a lost race."""
        counter = self.quotas.document(quota_doc_id(quota.principal))
        with outage_as_unavailable("Firestore"):
            snap = counter.get(retry=self.retry, timeout=self.timeout)
        listed = [str(i) for i in ((snap.to_dict() or {}).get("open") or [])] if snap.exists else []
        others = [i for i in listed if i != job_id]
        live: dict[str, Job] = {}
        if others:
            refs = [self.jobs.document(i) for i in others]
            with outage_as_unavailable("Firestore"):
                snaps = list(self.client.get_all(refs, retry=self.retry, timeout=self.timeout))
            live = {s.id: Job.from_doc(s.to_dict() or {}) for s in snaps if s.exists}
        # Requests that ended (decided, expired, cancelled) give their slot back here: a
        # job never returns to awaiting approval, so a stale read can only be conservative.
        still = [i for i in others if i in live and holds_quota_slot(live[i], quota.now_ms)]
        if len(still) >= quota.limit:
            raise QuotaFull(still)
        batch = self.client.batch()
        write(batch)
        body = {
            "principal": quota.principal,
            "open": [*still, job_id],
            "updated_ms": quota.now_ms,
            "expire_at": self._expire_at(),
        }
        if snap.exists:
            batch.update(
                counter, body, option=self.client.write_option(last_update_time=snap.update_time)
            )
        else:
            batch.create(counter, body)
        return self._commit(batch)

    def _retry(self, attempt: Callable[[], None], lost: Callable[[Exception], bool | None]) -> None:
        """Run ``attempt`` until it commits; after each lost race call ``lost`` (which may
        raise the real error, and returns True when the loss was no contention, so the
        next attempt needs no backoff), then back off with jitter."""
        deadline = time.monotonic() + QUOTA_DEADLINE_S
        tries = 0
        while True:
            try:
                attempt()
                return
            except CONTENTION as exc:
                at_once = lost(exc)
                if time.monotonic() >= deadline:
                    raise
            tries += 1
            if not at_once:
                time.sleep(self._rng.uniform(0, min(0.01 * 2**tries, 0.5)))

    def list_owned(
        self, owner: str, *, limit: int, created_before_ms: int | None = None
    ) -> list[Job]:
        """The owner's jobs, newest first (index ``jobs_by_owner`` in firestore.tf)."""
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self.jobs.where(filter=FieldFilter("owner", "==", owner))
        if created_before_ms is not None:
            query = query.where(filter=FieldFilter("created_ms", "<", created_before_ms))
        query = query.order_by("created_ms", direction=firestore.Query.DESCENDING).limit(limit)
        with outage_as_unavailable("Firestore"):
            snaps = list(query.stream(retry=self.retry, timeout=self.timeout))
        return [Job.from_doc(snap.to_dict() or {}) for snap in snaps]

    def put_page(self, job_id: str, index: int, start: int, rows_json: str) -> None:
        with outage_as_unavailable("Firestore"):
            self.jobs.document(job_id).collection(PAGES).document(page_id(index)).set(
                self._page_doc(Page(index, start, rows_json)),
                retry=self.retry,
                timeout=self.timeout,
            )

    def get_pages(self, job_id: str, first: int, last: int) -> list[tuple[int, str]]:
        pages = self.jobs.document(job_id).collection(PAGES)
        refs = [pages.document(page_id(i)) for i in range(first, last + 1)]
        with outage_as_unavailable("Firestore"):
            docs = {
                s.id: s.to_dict() or {}
                for s in self.client.get_all(refs, retry=self.retry, timeout=self.timeout)
                if s.exists
            }
        out = []
        for i in range(first, last + 1):
            doc = docs.get(page_id(i))
            if doc is None:
                raise NotFound(f"Not found: result page {i} of job {job_id}")
            out.append((int(doc["start"]), str(doc["rows"])))
        return out

    # --- queries -------------------------------------------------------------------

    def _docs(self, query: Any) -> list[dict[str, Any]]:
        with outage_as_unavailable("Firestore"):
            snaps = list(query.stream(retry=retry(QUERY_TIMEOUT_S), timeout=QUERY_TIMEOUT_S))
        return [s.to_dict() or {} for s in snaps]

    def _stream(self, query: Any) -> list[Job]:
        return [Job.from_doc(d) for d in self._docs(query)]

    def pending_approvals(
        self, *, now_ms: int, limit: int, after: PendingCursor | None = None
    ) -> list[Job]:
        """Newest first; expired requests excluded by the query (composite index
        ``state, created_ms desc, expire_at_ms desc, __name__ desc``: firestore.tf)."""
        query = (
            self.jobs.where(filter=FieldFilter("state", "==", PENDING_APPROVAL))
            .where(filter=FieldFilter("expire_at_ms", ">", now_ms))
            .order_by("created_ms", direction=_DESC)
            .order_by("expire_at_ms", direction=_DESC)
            .order_by("__name__", direction=_DESC)
            .limit(limit)
        )
        if after is not None:
            query = query.start_after(
                {
                    "created_ms": after.created_ms,
                    "expire_at_ms": after.expire_at_ms,
                    "__name__": after.job_id,
                }
            )
        return self._stream(query)

    def _matching(self, *filters: tuple[str, str, Any], limit: int) -> list[Job]:
        """Jobs whose fields satisfy every ``(field, op, value)`` (an index each: firestore.tf)."""
        query: Any = self.jobs
        for name, op, value in filters:
            query = query.where(filter=FieldFilter(name, op, value))
        return self._stream(query.limit(limit))

    def similar_pending(
        self, *, owner: str, statement_hash: str, now_ms: int, limit: int
    ) -> list[Job]:
        return self._matching(
            ("owner", "==", owner),
            ("classification.statement_hash", "==", statement_hash),
            ("state", "==", PENDING_APPROVAL),
            ("expire_at_ms", ">", now_ms),
            limit=limit,
        )

    def expired_approvals(self, *, now_ms: int, limit: int) -> list[Job]:
        return self._matching(
            ("state", "==", PENDING_APPROVAL), ("expire_at_ms", "<=", now_ms), limit=limit
        )

    def stale_running(self, *, started_before_ms: int, limit: int) -> list[Job]:
        return self._matching(
            ("state", "==", RUNNING), ("started_ms", "<=", started_before_ms), limit=limit
        )

    # --- outbox --------------------------------------------------------------------

    def outbox_of(self, job_id: str) -> list[OutboxRecord]:
        query = self.outbox.where(filter=FieldFilter("job_id", "==", job_id))
        return [OutboxRecord.from_doc(d) for d in self._docs(query)]

    def outbox_due(self, *, now_ms: int, limit: int) -> list[OutboxRecord]:
        """Unfinished records (a finished one has ``due_ms`` null, which a range never
        matches) due by now, most overdue first: a single-field index."""
        query = (
            self.outbox.where(filter=FieldFilter("due_ms", "<=", now_ms))
            .order_by("due_ms")
            .limit(limit)
        )
        return [OutboxRecord.from_doc(d) for d in self._docs(query)]

    def outbox_update(self, record_id: str, fields: Mapping[str, Any]) -> None:
        with outage_as_unavailable("Firestore"):
            self.outbox.document(record_id).update(dict(fields), timeout=self.timeout)

    def outbox_transition(self, record_id: str, change: RecordChange) -> OutboxRecord | None:
        ref = self.outbox.document(record_id)

        @firestore.transactional
        def run(txn: firestore.Transaction) -> OutboxRecord | None:
            snap = ref.get(transaction=txn)
            if not snap.exists:
                return None
            rec = OutboxRecord.from_doc(snap.to_dict() or {})
            after = change(rec)
            fields = {} if after is None else outbox.changed_fields(rec, after)
            if not fields:
                return rec
            txn.update(ref, fields)
            return OutboxRecord.from_doc({**rec.to_doc(), **fields})

        with outage_as_unavailable("Firestore"):
            result: OutboxRecord | None = run(self.client.transaction())
        return result

    def decided(self, query: DecisionQuery) -> list[Job]:
        """Decided approval requests, latest decision first (``DecisionHistory``).

        Every filter runs in Firestore beside the range on the decision time (served by
        the composite indexes in firestore.tf). A principal is matched as requester and
        as decider by two queries, merged here; Firestore allows one ``array_contains``
        per query, so the decider query checks the table here.
        """
        Filter = tuple[str, str, Any]

        def run(filters: list[Filter]) -> list[Job]:
            q: Any = self.jobs.where(filter=FieldFilter(DECIDED_AT, ">=", query.since_ms or 0))
            if query.before_ms is not None:
                q = q.where(filter=FieldFilter(DECIDED_AT, "<", query.before_ms))
            if query.status:
                q = q.where(filter=FieldFilter("approval.status", "==", query.status))
            for path, op, value in filters:
                q = q.where(filter=FieldFilter(path, op, value))
            q = q.order_by(DECIDED_AT, direction=firestore.Query.DESCENDING).limit(query.limit)
            with outage_as_unavailable("Firestore"):
                snaps = list(q.stream(retry=retry(HISTORY_TIMEOUT_S), timeout=HISTORY_TIMEOUT_S))
            return [Job.from_doc(snap.to_dict() or {}) for snap in snaps]

        table: list[Filter] = (
            [("classification.tables", "array_contains", query.table)] if query.table else []
        )
        if query.principal:
            jobs = run([("owner", "==", query.principal), *table])
            jobs += run([("approval.deciders", "array_contains", query.principal)])
        else:
            jobs = run(table)
        found = {
            j.job_id: j for j in jobs if not query.table or query.table in j.classification.tables
        }
        ordered = sorted(
            found.values(),
            key=lambda j: (-int((j.approval or {}).get("decided_at_ms") or 0), j.job_id),
        )
        return ordered[: query.limit]
