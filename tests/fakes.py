"""Small hand-written fakes of the ports, for unit tests of the pure core."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from bqgate.errors import Duplicate, NotFound
from bqgate.jobs import Job
from bqgate.ports import DryRun, QueryOutcome

_COUNT_SCHEMA = [{"name": "touched", "type": "INTEGER"}, {"name": "total", "type": "INTEGER"}]


class MemoryJobStore:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.pages: dict[tuple[str, int], tuple[int, str]] = {}
        self.lock = threading.Lock()

    def create(self, job: Job) -> None:
        with self.lock:
            if job.job_id in self.docs:
                raise Duplicate(f"Already Exists: Job {job.job_id}")
            self.docs[job.job_id] = copy.deepcopy(job.to_doc())

    def get(self, job_id: str) -> Job | None:
        doc = self.docs.get(job_id)
        return Job.from_doc(copy.deepcopy(doc)) if doc else None

    def transition(self, job_id: str, change: Callable[[Job], dict[str, Any] | None]) -> Job:
        with self.lock:
            if job_id not in self.docs:
                raise NotFound(job_id)
            job = Job.from_doc(copy.deepcopy(self.docs[job_id]))
            fields = change(job)
            if fields:
                self.docs[job_id].update(copy.deepcopy(fields))
            return Job.from_doc(copy.deepcopy(self.docs[job_id]))

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
        self.pages[(job_id, index)] = (start, rows_json)

    def get_pages(self, job_id: str, first: int, last: int) -> list[tuple[int, str]]:
        return [self.pages[(job_id, i)] for i in range(first, last + 1)]


class MemoryQueue:
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def publish(self, topic: str, message: Mapping[str, Any]) -> None:
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
