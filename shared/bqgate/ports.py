"""The ports the core talks to. One adapter per service implements each.

Unit tests use the small in-memory fakes in ``tests/fakes.py``; every adapter is
also tested against the real emulator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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
