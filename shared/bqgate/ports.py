"""The ports the core talks to, all of them. One adapter per service implements each
(``bqgate.bootstrap`` wires them, and mypy checks each adapter against its port there).

Unit tests use the small in-memory fakes in ``tests/fakes.py``; every adapter is
also tested against the real emulator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bqgate.anchors import AnchorIndex
from bqgate.audit.chain import Event, SessionHead
from bqgate.audit.record import EventKind
from bqgate.chain import Keyring
from bqgate.classification import Classification
from bqgate.errors import BqgateError
from bqgate.identity import Principal
from bqgate.jobs import Job, Transition
from bqgate.outbox import OutboxRecord

Change = Callable[[Job], Job | None]
"""The job as a transition makes it, from the job as it stands (``dataclasses.replace``;
None: no change). The store writes the fields that differ."""
Dispatches = Callable[[Job], Sequence[OutboxRecord]]
"""The outbox records a transition writes, from the job as it now stands."""
RecordChange = Callable[[OutboxRecord], OutboxRecord | None]
"""The outbox record as a transition makes it, from the record as it stands
(``dataclasses.replace``; None: no change). The store writes the fields that differ."""
EventItems = Sequence[tuple[EventKind, Mapping[str, Any]]]
"""Session-record events: ``(kind, data)`` in order."""


class Recorder(Protocol):
    """The session record (bqgate.audit.record); ``record`` must never raise for a good event."""

    def record(self, job: Job, kind: EventKind, data: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class Recording:
    """Session-record events about ``job`` that a job write commits with it.

    ``events`` is given the job as written (it is only called when something is
    written). A store commits them in the same atomic write as the job when ``journal`` is
    its own kind (the Firestore recorder, on the store's client); with any other journal
    it records them right after the write, before it returns.
    """

    journal: Recorder
    job: Job
    events: Callable[[Job], EventItems]

    @classmethod
    def of(cls, journal: Recorder | None, job: Job, items: EventItems) -> Recording | None:
        """A recording of fixed ``items`` (None when there is no journal)."""
        fixed = list(items)
        return None if journal is None else cls(journal, job, lambda _job: fixed)

    def write(self, job: Job) -> None:
        """Record the events on their own (one commit when the journal can)."""
        items = list(self.events(job))
        many = getattr(self.journal, "record_many", None)
        if many is not None:
            many(self.job, items)
            return
        for kind, data in items:
            self.journal.record(self.job, kind, data)


@dataclass(frozen=True)
class Page:
    """One result page: ``index`` (0-based), its first row, and its rows as JSON text."""

    index: int
    start: int
    rows_json: str


class RowsPart(list[list[Any]]):
    """Compact rows of one part of a result, as :meth:`Warehouse.pages` yields them; with
    ``rest``, the same rows as BigQuery sent them (``{"f": [{"v": ...}]}``, int64
    timestamps), row for row, so a row the masks leave unchanged can be answered in that
    form without being built again. A plain list is a part without it.

    >>> part = RowsPart([["1"]], rest=[{"f": [{"v": "1"}]}])
    >>> part, part.rest
    ([['1']], [{'f': [{'v': '1'}]}])
    """

    def __init__(
        self, rows: Iterable[list[Any]] = (), *, rest: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(rows)
        self.rest = rest if rest is not None and len(rest) == len(self) else None


@dataclass(frozen=True)
class OpenRequestQuota:
    """Cap on a principal's open approval requests (``approvals.max_pending_per_principal``).

    A write given a quota counts the job against it when the job, as written, holds a
    slot (:func:`bqgate.approvals.holds_quota_slot`); the count and the write are one
    atomic commit, so concurrent submissions cannot overshoot the cap.
    """

    principal: str
    limit: int
    now_ms: int


class QuotaFull(Exception):
    """The write would exceed its :class:`OpenRequestQuota`; nothing was written."""

    def __init__(self, open_job_ids: Sequence[str]) -> None:
        super().__init__(f"{len(open_job_ids)} open requests")
        self.open_job_ids = tuple(open_job_ids)


@dataclass(frozen=True)
class PendingCursor:
    """Where a page of pending approval requests ended (newest first)."""

    created_ms: int
    expire_at_ms: int
    job_id: str


class JobStore(Protocol):
    """Jobs, their result pages and their outbox (Firestore ``jobs/{id}``,
    ``jobs/{id}/pages/{n}`` and ``outbox/{job_id}~{event}``)."""

    def create(
        self,
        job: Job,
        *,
        dispatch: Sequence[OutboxRecord] = (),
        quota: OpenRequestQuota | None = None,
        record: Recording | None = None,
    ) -> None:
        """Store a new job, its outbox records and the session events of ``record`` in one
        commit, without reading the job first; raise :class:`bqgate.errors.Duplicate` if
        the id exists (nothing is written), :class:`QuotaFull` if the quota has no room."""

    def get(self, job_id: str) -> Job | None: ...

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
        """Atomically read the job, let ``change`` make the job it should become
        (``None``: no change), write the fields that differ, and say what happened.

        When fields are written, the same commit also writes: the outbox records
        ``dispatch`` names (given the job as it now stands), the session events of
        ``record``, the result ``pages``, and marks the outbox records ``complete``
        (ids) finished if they exist. With ``quota``, raise :class:`QuotaFull` (writing
        nothing) if the changed job would exceed it."""

    def put_page(self, job_id: str, index: int, start: int, rows_json: str) -> None:
        """Write result page ``index`` (idempotent: same index, same content)."""

    def get_pages(self, job_id: str, first: int, last: int) -> list[tuple[int, str]]:
        """Pages ``first..last`` inclusive as ``(start_row, rows_json)``."""

    # --- queries ------------------------------------------------------------------

    def pending_approvals(
        self, *, now_ms: int, limit: int, after: PendingCursor | None = None
    ) -> list[Job]:
        """Unexpired jobs awaiting approval, newest first by creation time, after ``after``.
        Expired requests are excluded by the query itself."""

    def similar_pending(
        self, *, owner: str, statement_hash: str, now_ms: int, limit: int
    ) -> list[Job]:
        """Unexpired jobs awaiting approval of ``owner`` with the same statement hash."""

    def expired_approvals(self, *, now_ms: int, limit: int) -> list[Job]:
        """Jobs still awaiting approval whose ``expire_at_ms`` has passed."""

    def stale_running(self, *, started_before_ms: int, limit: int) -> list[Job]:
        """RUNNING jobs that started before ``started_before_ms``."""

    # --- outbox -------------------------------------------------------------------

    def outbox_of(self, job_id: str) -> list[OutboxRecord]:
        """Every outbox record of the job."""

    def outbox_due(self, *, now_ms: int, limit: int) -> list[OutboxRecord]:
        """Unfinished records due at ``now_ms``, most overdue first."""

    def outbox_transition(self, record_id: str, change: RecordChange) -> OutboxRecord | None:
        """Atomically read one record, let ``change`` make the record it should become
        (``None``: no change) and write the fields that differ; the record as it now
        stands (None if there is no such record)."""

    def outbox_update(self, record_id: str, fields: Mapping[str, Any]) -> None:
        """Write ``fields`` to one record without reading it (one round trip: the caller
        names every field it sets, as it cannot know what is stored)."""


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
    #: Why the job failed, as :func:`bqgate.errors.from_warehouse` clamped BigQuery's word.
    error: BqgateError | None = None


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
        """The finished job's rows as compact rows, one list per page (a
        :class:`RowsPart` when the warehouse also hands over BigQuery's own form)."""

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


# --- the classifier, the session record, identity, chat and the checkpoints -------------


class Classifier(Protocol):
    def __call__(
        self,
        sql: str,
        *,
        principal: str,
        groups: frozenset[str],
        default_project: str,
        default_dataset: str | None,
        claims: Mapping[str, Any],
    ) -> Classification:
        """Judge ``sql`` for the principal under the policy (:func:`bqgate.sql.classify.classify`).

        ``default_project`` is the job's project; ``default_dataset`` is ``project.dataset``.
        May raise :class:`~bqgate.errors.InvalidQuery` (statement over the size limits).
        """


class TokenVerifier(Protocol):
    """Port: turns a bearer token into a :class:`Principal` or raises ``Unauthenticated``."""

    def verify(self, token: str) -> Principal: ...


class Notifier(Protocol):
    """Port: the chat service approvers work in (Slack).

    Calls raise :class:`bqgate.errors.Rejected` when Slack answered that it did nothing,
    anything else (a timeout) when the outcome is unknown."""

    def post_request(
        self,
        channel: str,
        text: str,
        blocks: Sequence[Mapping[str, Any]],
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[str, str]:
        """Post a message (tagged with ``metadata``); return ``(channel_id, ts)``."""

    def find_messages(
        self, channel: str, event_type: str, key: str, value: str, oldest_ms: int
    ) -> list[tuple[str, str]]:
        """``(channel_id, ts)`` of the bot's messages since ``oldest_ms`` whose metadata
        has ``event_type`` and ``event_payload[key] == value``, oldest first."""

    def delete_message(self, channel: str, ts: str) -> None: ...

    def update_message(
        self, channel: str, ts: str, text: str, blocks: Sequence[Mapping[str, Any]]
    ) -> None: ...

    def post_ephemeral(self, channel: str, user: str, text: str) -> None: ...

    def user_email(self, user_id: str) -> str | None:
        """The user's email (lower-cased), or None if Slack does not say."""

    def open_modal(self, trigger_id: str, view: Mapping[str, Any]) -> None: ...


class CheckpointSink(Protocol):
    """Where session checkpoints are kept outside Firestore (a bucket, a folder, the log)."""

    def write(self, lines: Sequence[str]) -> None:
        """Append ``lines`` (JSON, no newlines) as one batch; raise if they were not kept."""


class Evidence(Protocol):
    """What verification reads besides the record: the keys and the checkpoints."""

    keys: Keyring | None
    anchors: AnchorIndex
