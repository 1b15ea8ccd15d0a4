"""Small hand-written fakes of the ports, for unit tests of the pure core."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from bqgate import outbox
from bqgate.approvals import holds_quota_slot, statement_hash_of
from bqgate.errors import Duplicate, NotFound, Unavailable
from bqgate.identity import Principal
from bqgate.jobs import PENDING_APPROVAL, RUNNING, Job, Transition, changed_fields
from bqgate.outbox import OutboxRecord, delivered
from bqgate.ports import (
    Change,
    Dispatches,
    DryRun,
    OpenRequestQuota,
    Page,
    PendingCursor,
    QueryOutcome,
    QuotaFull,
    RecordChange,
    Recording,
)


def caller(
    email: str, *groups: str, subject: str | None = None, expires_at: int = 2**31
) -> Principal:
    """A caller as the dev issuer vouches for it (``subject`` defaults to the email)."""
    return Principal(
        email=email,
        groups=frozenset(groups),
        issuer="dev",
        subject=subject or email,
        expires_at=expires_at,
    )


_COUNT_SCHEMA = [{"name": "touched", "type": "INTEGER"}, {"name": "total", "type": "INTEGER"}]


#: The schema of the demo warehouse's ``sales.customers`` (the columns the tests read).
CUSTOMERS = [
    {"name": "customer_id", "type": "INTEGER"},
    {"name": "email", "type": "STRING"},
    {"name": "ssn", "type": "STRING"},
]


class Events:
    """The session record in memory: (job id, kind, data) in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        #: Event kinds whose write fails, as in a Firestore outage.
        self.fail_on: set[str] = set()

    def record(self, job: Job, kind: str, data: Mapping[str, Any]) -> None:
        if kind in self.fail_on:
            raise Unavailable("Firestore did not answer in time")
        self.events.append((job.job_id, kind, dict(data)))

    def kinds(self, job_id: str) -> list[str]:
        return [k for j, k, _ in self.events if j == job_id]


class MemoryJobStore:
    """Jobs, pages and outbox records in dicts; one lock makes every write atomic."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.pages: dict[tuple[str, int], tuple[int, str]] = {}
        self.outbox: dict[str, dict[str, Any]] = {}
        self.lock = threading.RLock()
        #: Calls that reached the store: reads, creates, writing transitions, page writes.
        self.reads = self.creates = self.transitions = self.page_puts = self.page_reads = 0

    def _check_quota(self, job: Job, quota: OpenRequestQuota | None) -> None:
        if quota is None or not holds_quota_slot(job, quota.now_ms):
            return
        open_ids = [
            k
            for k, d in self.docs.items()
            if k != job.job_id
            and d.get("owner") == quota.principal
            and holds_quota_slot(Job.from_doc(d), quota.now_ms)
        ]
        if len(open_ids) >= quota.limit:
            raise QuotaFull(open_ids)

    def _write_outbox(self, records: Sequence[OutboxRecord]) -> None:
        for rec in records:
            self.outbox[rec.record_id] = rec.to_doc()

    def create(
        self,
        job: Job,
        *,
        dispatch: Sequence[OutboxRecord] = (),
        quota: OpenRequestQuota | None = None,
        record: Recording | None = None,
    ) -> None:
        with self.lock:
            self.creates += 1
            if job.job_id in self.docs:
                raise Duplicate(f"Already Exists: Job {job.job_id}")
            self._check_quota(job, quota)
            if record is not None:  # under the lock, before the write: one atomic change
                record.write(job)
            self.docs[job.job_id] = copy.deepcopy(job.to_doc())
            self._write_outbox(dispatch)

    def get(self, job_id: str) -> Job | None:
        self.reads += 1
        doc = self.docs.get(job_id)
        return Job.from_doc(copy.deepcopy(doc)) if doc else None

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
        with self.lock:
            if job_id not in self.docs:
                raise NotFound(job_id)
            job = Job.from_doc(copy.deepcopy(self.docs[job_id]))
            after = change(job)
            fields = {} if after is None else changed_fields(job, after)
            if not fields:
                return Transition.unchanged(job)
            self.transitions += 1
            new = Job.from_doc({**copy.deepcopy(self.docs[job_id]), **copy.deepcopy(fields)})
            self._check_quota(new, quota)
            if record is not None:  # under the lock, before the write: one atomic change
                record.write(new)
            self.docs[job_id].update(copy.deepcopy(fields))
            for page in pages:
                self.pages[(job_id, page.index)] = (page.start, page.rows_json)
            for rid in complete:
                if rid in self.outbox:
                    self.outbox[rid].update(delivered(0))
            if dispatch is not None:
                self._write_outbox(dispatch(new))
            return Transition(job, Job.from_doc(copy.deepcopy(self.docs[job_id])), True)

    def _jobs(self) -> list[Job]:
        return [Job.from_doc(copy.deepcopy(d)) for d in self.docs.values()]

    def pending_approvals(
        self, *, now_ms: int, limit: int, after: PendingCursor | None = None
    ) -> list[Job]:
        jobs = [
            j
            for j in self._jobs()
            if j.state == PENDING_APPROVAL and (j.expire_at_ms or 0) > now_ms
        ]
        jobs.sort(key=lambda j: (j.created_ms, j.expire_at_ms or 0, j.job_id), reverse=True)
        if after is not None:
            mark = (after.created_ms, after.expire_at_ms, after.job_id)
            jobs = [j for j in jobs if (j.created_ms, j.expire_at_ms or 0, j.job_id) < mark]
        return jobs[:limit]

    def similar_pending(
        self, *, owner: str, statement_hash: str, now_ms: int, limit: int
    ) -> list[Job]:
        return [
            j
            for j in self.pending_approvals(now_ms=now_ms, limit=10**9)
            if j.owner == owner and statement_hash_of(j) == statement_hash
        ][:limit]

    def expired_approvals(self, *, now_ms: int, limit: int) -> list[Job]:
        return [
            j
            for j in self._jobs()
            if j.state == PENDING_APPROVAL
            and j.expire_at_ms is not None
            and j.expire_at_ms <= now_ms
        ][:limit]

    def stale_running(self, *, started_before_ms: int, limit: int) -> list[Job]:
        return [
            j
            for j in self._jobs()
            if j.state == RUNNING and (j.started_ms or 0) <= started_before_ms
        ][:limit]

    def outbox_of(self, job_id: str) -> list[OutboxRecord]:
        return [OutboxRecord.from_doc(d) for d in self.outbox.values() if d["job_id"] == job_id]

    def outbox_due(self, *, now_ms: int, limit: int) -> list[OutboxRecord]:
        due = [
            OutboxRecord.from_doc(d)
            for d in self.outbox.values()
            if d["due_ms"] is not None and d["due_ms"] <= now_ms
        ]
        return sorted(due, key=lambda r: r.due_ms or 0)[:limit]

    def outbox_update(self, record_id: str, fields: Mapping[str, Any]) -> None:
        with self.lock:
            if record_id not in self.outbox:
                raise NotFound(record_id)
            self.outbox[record_id].update(fields)

    def outbox_transition(self, record_id: str, change: RecordChange) -> OutboxRecord | None:
        with self.lock:
            doc = self.outbox.get(record_id)
            if doc is None:
                return None
            rec = OutboxRecord.from_doc(doc)
            after = change(rec)
            if after is not None:
                doc.update(outbox.changed_fields(rec, after))
            return OutboxRecord.from_doc(doc)

    def list_owned(
        self, owner: str, *, limit: int, created_before_ms: int | None = None
    ) -> list[Job]:
        jobs = [
            Job.from_doc(copy.deepcopy(d))
            for d in self.docs.values()
            if d["owner"] == owner
            and (created_before_ms is None or d["created_ms"] < created_before_ms)
        ]
        return sorted(jobs, key=lambda j: -j.created_ms)[:limit]

    def put_page(self, job_id: str, index: int, start: int, rows_json: str) -> None:
        self.page_puts += 1
        self.pages[(job_id, index)] = (start, rows_json)

    def get_pages(self, job_id: str, first: int, last: int) -> list[tuple[int, str]]:
        self.page_reads += 1
        return [self.pages[(job_id, i)] for i in range(first, last + 1)]


class MemoryQueue:
    """Published messages in a list; ``down = True`` makes every publish fail."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.down = False
        self.refused = 0

    def publish(self, topic: str, message: Mapping[str, Any]) -> None:
        if self.down:
            self.refused += 1
            raise ConnectionRefusedError("pubsub is down")
        self.messages.append((topic, dict(message)))


class FakeWarehouse:
    """Runs nothing: returns canned rows, and counts distinct warehouse job ids."""

    def __init__(
        self,
        schema: list[dict[str, Any]],
        rows: list[list[Any]],
        schemas: Mapping[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        self.schema = schema
        self.rows = rows
        self.schemas = dict(schemas or {})
        self.jobs: dict[str, int] = {}
        self.sizes: dict[str, int] = {}
        self.dry_runs = 0
        self.estimate = 1000
        #: What the fake dry run reports: statement type and referenced tables (None: unsaid).
        self.statement_type: str | None = None
        self.referenced: tuple[str, ...] | None = None
        #: Rows a blast-radius count query returns, as (touched, total).
        self.counts: tuple[int, int] = (0, 0)
        self.sqls: list[str] = []
        self.params: list[list[Mapping[str, Any]]] = []
        self.last_run: dict[str, Any] = {}

    def dry_run(
        self,
        sql: str,
        *,
        default_dataset: Mapping[str, str] | None,
        query_parameters: Sequence[Mapping[str, Any]] = (),
    ) -> int:
        self.dry_runs += 1
        return self.estimate

    def dry_run_info(
        self,
        sql: str,
        *,
        default_dataset: Mapping[str, str] | None,
        query_parameters: Sequence[Mapping[str, Any]] = (),
    ) -> DryRun:
        self.dry_runs += 1
        self.sqls.append(sql)
        return DryRun(
            self.estimate, self.statement_type, self.referenced, schema=tuple(self.schema)
        )

    def run(self, job_id: str, sql: str, **kwargs: Any) -> QueryOutcome:
        self.jobs[job_id] = self.jobs.get(job_id, 0) + 1
        self.last_run = dict(kwargs)
        self.sqls.append(sql)
        self.params.append(list(kwargs.get("query_parameters") or ()))
        if "AS touched" in sql:
            return QueryOutcome(_COUNT_SCHEMA, 1, "SELECT", None, 0)
        return QueryOutcome(self.schema, len(self.rows), "SELECT", None, 123)

    def pages(
        self, job_id: str, *, page_size: int, max_rows: int | None
    ) -> Iterator[list[list[Any]]]:
        if job_id.endswith(tuple(f"_m{i}" for i in range(1, 10))):
            yield [[str(self.counts[0]), str(self.counts[1])]]
            return
        rows = self.rows if max_rows is None else self.rows[:max_rows]
        for i in range(0, len(rows), page_size):
            yield [list(r) for r in rows[i : i + page_size]]

    def table_schema(self, table_fqn: str) -> list[dict[str, Any]]:
        return self.schemas[table_fqn]

    def table_size(self, table_fqn: str) -> int | None:
        return self.sizes.get(table_fqn)
