"""The ports the core talks to. One adapter per service implements each.

Unit tests use the small in-memory fakes in ``tests/fakes.py``; every adapter is
also tested against the real emulator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bqgate.audit import Event, SessionHead
from bqgate.jobs import Job


class JobStore(Protocol):
    """Jobs and their result pages (Firestore ``jobs/{id}`` and ``jobs/{id}/pages/{n}``)."""

    def create(self, job: Job) -> None:
        """Store a new job; raise :class:`bqgate.errors.Duplicate` if the id exists."""

    def get(self, job_id: str) -> Job | None: ...

    def transition(self, job_id: str, change: Callable[[Job], dict[str, Any] | None]) -> Job:
        """Atomically read the job, let ``change`` compute the fields to update
        (``None``: no change), write them, and return the job as it now stands."""

    def put_page(self, job_id: str, index: int, start: int, rows_json: str) -> None:
        """Write result page ``index`` (idempotent: same index, same content)."""

    def get_pages(self, job_id: str, first: int, last: int) -> list[tuple[int, str]]:
        """Pages ``first..last`` inclusive as ``(start_row, rows_json)``."""


class Queue(Protocol):
    def publish(self, topic: str, message: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class QueryOutcome:
    """What the warehouse reports for a finished query job."""

    schema: list[dict[str, Any]]
    total_rows: int
    statement_type: str | None
    num_dml_affected_rows: int | None
    total_bytes_processed: int | None
    error: dict[str, str] | None = None


@dataclass(frozen=True)
class DryRun:
    """What BigQuery's dry run says about a statement (the classifier's second opinion).

    ``referenced_tables`` is ``None`` when the warehouse did not say.
    """

    total_bytes_processed: int
    statement_type: str | None = None
    referenced_tables: tuple[str, ...] | None = None
    schema: tuple[Mapping[str, Any], ...] = ()


class Warehouse(Protocol):
    """BigQuery, run with the gateway's own credentials."""

    def dry_run_info(
        self,
        sql: str,
        *,
        default_dataset: Mapping[str, str] | None,
        query_parameters: Sequence[Mapping[str, Any]] = (),
    ) -> DryRun:
        """Dry-run the statement: bytes, statement type, referenced tables."""

    def dry_run(
        self,
        sql: str,
        *,
        default_dataset: Mapping[str, str] | None,
        query_parameters: Sequence[Mapping[str, Any]] = (),
    ) -> int:
        """Bytes the query would process."""

    def run(
        self,
        job_id: str,
        sql: str,
        *,
        default_dataset: Mapping[str, str] | None,
        labels: Mapping[str, str],
        maximum_bytes_billed: int | None,
        query_parameters: Sequence[Mapping[str, Any]] = (),
        priority: str | None = None,
    ) -> QueryOutcome:
        """Start (or attach to, if ``job_id`` exists) a query job and wait for it."""

    def pages(
        self, job_id: str, *, page_size: int, max_rows: int | None
    ) -> Iterator[list[list[Any]]]:
        """The finished job's rows as compact rows, one list per page."""

    def table_schema(self, table_fqn: str) -> list[dict[str, Any]]:
        """REST schema fields of ``project.dataset.table``; KeyError if unknown."""

    def table_size(self, table_fqn: str) -> int | None:
        """Stored bytes of a plain table; None for views, external tables and anything
        whose scan size the table's own size does not bound."""


class Catalog(Protocol):
    """Warehouse metadata as REST resources (read with the executor's rights)."""

    def get_dataset(self, project: str, dataset: str) -> dict[str, Any] | None:
        """The Dataset resource, or None if it does not exist."""

    def list_tables(self, project: str, dataset: str) -> list[dict[str, Any]] | None:
        """The dataset's tables.list items, or None if the dataset does not exist."""

    def get_table(self, project: str, dataset: str, table: str) -> dict[str, Any] | None:
        """The Table resource, or None if it does not exist."""


class JobLister(Protocol):
    """A principal's own jobs, newest first (``jobs.list``)."""

    def list_owned(
        self, owner: str, *, limit: int, created_before_ms: int | None = None
    ) -> list[Job]: ...


@dataclass(frozen=True)
class DecisionQuery:
    """Which decided approval requests to list (every filter is optional).

    ``principal`` matches the requester or anyone who decided; ``status`` is
    ``approved``, ``denied`` or ``expired``; times are epoch ms of the decision
    (``since_ms`` inclusive, ``before_ms`` exclusive).
    """

    principal: str | None = None
    table: str | None = None
    status: str | None = None
    since_ms: int | None = None
    before_ms: int | None = None
    limit: int = 50


class DecisionHistory(Protocol):
    """Decided approval requests, latest decision first (the approver console's history)."""

    def decided(self, query: DecisionQuery) -> list[Job]: ...


class SessionReader(Protocol):
    """The session record, read back (``FirestoreRecorder`` implements it)."""

    def head(self, session_id: str) -> SessionHead | None: ...

    def events(self, session_id: str) -> list[Event]: ...

    def list_sessions(
        self, *, principal: str | None = None, since_ms: int | None = None, limit: int = 100
    ) -> list[SessionHead]: ...

    def by_label(self, label: str, limit: int = 20) -> list[SessionHead]: ...
