"""The ingress core: BigQuery's jobs API, judged by policy, backed by the job store.

Pure: talks to ports only. ``bqgate.service.ingress`` maps HTTP requests onto it.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NoReturn, overload

from bqgate import outbox
from bqgate.approvals import expire, quota_message
from bqgate.audit.record import EventKind
from bqgate.classification import Classification
from bqgate.errors import (
    AccessDenied,
    BqgateError,
    Duplicate,
    InvalidQuery,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    Stopped,
    Unavailable,
    for_job,
    stored,
)
from bqgate.identity import Principal
from bqgate.jobs import DONE, PENDING, PENDING_APPROVAL, Job
from bqgate.outbox import OutboxRecord
from bqgate.ports import (
    Classifier,
    JobStore,
    OpenRequestQuota,
    Queue,
    QuotaFull,
    Recorder,
    Recording,
)
from bqgate.service.dispatch import (
    REDISPATCH_AFTER_MS,
    DirectAccept,
    DirectCall,
    Dispatcher,
    ExecutorAnswer,
    RestChunk,
    accepted_events,
    directly_acceptable,
)
from bqgate.sql import RESERVED_PARAMETER_PREFIX
from bqgate.wire import bigquery as wire
from bqgate.wire import codec
from bqgate.wire.bigquery import DEFAULT_PAGE_ROWS

#: Most rows served per call whatever the client asks (keeps responses small).
MAX_PAGE_ROWS = 50_000
#: Finished jobs (and their inline rows) an ingress instance keeps to answer from memory.
DONE_JOBS = 1024
DONE_ROWS_BYTES = 64 * 1024 * 1024


class DoneJobs:
    """Finished jobs this process has seen, with the masked rows of those the executor
    answered inline (as BigQuery's JSON text, in pieces: :data:`RestChunk`): a DONE job
    never changes, so a later ``jobs.get``, ``getQueryResults`` or ``tabledata.list`` of
    it needs no store round trip.

    Bounded by count and by the rows' encoded size (least recently used first out). A
    miss is only slower: every job and page is also in the store.

    >>> done = DoneJobs(max_jobs=1, max_bytes=100)
    >>> j = Job.new(job_id="a", project="p", location="US", sql="S", owner="o", now_ms=1)
    >>> done.put(j)  # not DONE: not kept
    >>> done.get("a") is None
    True
    >>> j.state = DONE
    >>> done.put(j, ((0, 1, b'[{"f":[{"v":"1"}]}]'),), 20); done.get("a").job_id, done.rest("a")
    ('a', ((0, 1, b'[{"f":[{"v":"1"}]}]'),))
    >>> done.put(Job.new(job_id="b", project="p", location="US", sql="S", owner="o",
    ...                  now_ms=1, state=DONE))
    >>> done.get("a") is None, done.rest("a") is None  # evicted by count
    (True, True)
    """

    def __init__(self, max_jobs: int = DONE_JOBS, max_bytes: int = DONE_ROWS_BYTES) -> None:
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self._jobs: OrderedDict[str, tuple[Job, tuple[RestChunk, ...] | None, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, job: Job, rest: tuple[RestChunk, ...] | None = None, size: int = 0) -> None:
        if not job.done:
            return
        if size > self.max_bytes:  # the job, not its rows
            rest, size = None, 0
        kept = copy.deepcopy(job)
        with self._lock:
            old = self._jobs.pop(job.job_id, None)
            if old is not None:
                self._bytes -= old[2]
                if rest is None and old[1] is not None:  # keep rows already known
                    rest, size = old[1], old[2]
            self._jobs[job.job_id] = (kept, rest, size if rest is not None else 0)
            self._bytes += size if rest is not None else 0
            while self._jobs and (len(self._jobs) > self.max_jobs or self._bytes > self.max_bytes):
                _, (_, _, gone) = self._jobs.popitem(last=False)
                self._bytes -= gone

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            hit = self._jobs.get(job_id)
            if hit is None:
                return None
            self._jobs.move_to_end(job_id)
        return copy.deepcopy(hit[0])

    def rest(self, job_id: str) -> tuple[RestChunk, ...] | None:
        """The inline rows of a finished job (BigQuery's JSON, in pieces), or None."""
        with self._lock:
            hit = self._jobs.get(job_id)
        return hit[1] if hit is not None else None


def inline_page(
    chunks: Sequence[RestChunk],
    start: int,
    end: int,
    schema: Sequence[Mapping[str, Any]],
    *,
    int64_timestamps: bool = True,
    raw: bool = False,
) -> list[dict[str, Any]] | codec.RawJson:
    """Rows ``start`` to ``end`` of an inline result: with ``raw``, the pieces' own text
    when the rows are whole pieces (the usual case: they are cut as clients ask), else
    the rows parsed from the pieces they are in.

    >>> chunks = [(0, 1, b'[{"f":[{"v":"a"}]}]'), (1, 2, b'[{"f":[{"v":"b"}]},{"f":[{"v":"c"}]}]')]
    >>> s = [{"name": "x", "type": "STRING"}]
    >>> inline_page(chunks, 0, 3, s, raw=True).text
    b'[{"f":[{"v":"a"}]},{"f":[{"v":"b"}]},{"f":[{"v":"c"}]}]'
    >>> inline_page(chunks, 1, 2, s, raw=True)
    [{'f': [{'v': 'b'}]}]
    """
    as_sent = int64_timestamps or not _has_timestamp(schema)  # the pieces' timestamps are int64
    if raw and as_sent:
        texts: list[bytes] = []
        at = start
        for first, count, text in chunks:
            if first + count <= start or first >= end:
                continue
            if first != at or first + count > end:
                break  # a piece only partly wanted
            texts.append(text)
            at = first + count
        if at == end:
            if len(texts) == 1:
                return codec.RawJson(texts[0])
            return codec.RawJson(b"[" + b",".join(t[1:-1] for t in texts if t != b"[]") + b"]")
    rows: list[dict[str, Any]] = []
    for first, count, text in chunks:
        if first + count <= start or first >= end:
            continue
        rows.extend(codec.loads(text)[max(start - first, 0) : end - first])
    if not as_sent:
        return wire.rows_to_rest(wire.rest_to_compact(rows, schema), schema, False)
    return rows


def _has_timestamp(schema: Sequence[Mapping[str, Any]]) -> bool:
    return any(
        f.get("type") == "TIMESTAMP" or _has_timestamp(f.get("fields") or ()) for f in schema
    )


class NullRecorder:
    def record(self, job: Job, kind: EventKind, data: Mapping[str, Any]) -> None:
        return None


@dataclass
class GatewayConfig:
    execute_topic: str = "execute"
    approvals_topic: str = "approvals"
    location: str = "US"
    max_wait_ms: int = 10_000
    approval_ttl_ms: int = 15 * 60 * 1000
    #: ``approvals.max_pending_per_principal`` of the policy.
    max_pending_per_principal: int = 10
    #: The outbox reconciler's deadline (see bqgate.service.dispatch).
    redispatch_after_ms: int = REDISPATCH_AFTER_MS


def job_error(job: Job) -> BqgateError:
    """The exception that a finished, failed job raises on getQueryResults: always a client
    error with a reason no client retries (:func:`bqgate.errors.for_job` clamps)."""
    assert job.error is not None
    return for_job(job.error.get("reason"), job.error.get("message"))


_DENIAL_WORDS = ("policy", "blocked", "deny by default", "not allowed")


def _unresolved_only(reasons: Sequence[str]) -> bool:
    """True when a blocked statement's reasons name unresolved names and no denial."""
    parts = [p.strip() for r in reasons for p in r.split("; ")]
    return any(p.endswith("(unresolved)") for p in parts) and not any(
        w in p for p in parts for w in _DENIAL_WORDS
    )


def block_error(verdict: Classification) -> BqgateError:
    """Why a blocked statement does not run: ``invalidQuery`` when every blocked statement
    only names something that does not resolve (BigQuery would reject it too), else the
    policy's ``accessDenied``. (SQL sqlglot cannot parse goes to the executor's dry run,
    which answers BigQuery's own syntax error, unless it names what the policy denies.)

    >>> from bqgate.classification import StatementVerdict
    >>> block_error(Classification(reasons=("r",), per_statement=(StatementVerdict(
    ...     "SELECT", "block", ("table t has no dataset (unresolved)",), ()),))).reason
    'invalidQuery'
    >>> block_error(Classification(reasons=("DROP is blocked",), per_statement=(
    ...     StatementVerdict("DROP_TABLE", "block", ("DROP is blocked",), ()),))).reason
    'accessDenied'
    """
    reasons = "; ".join(verdict.reasons) or "no reason given"
    blocked = [s for s in verdict.per_statement if s.decision == "block"]
    if blocked and all(_unresolved_only(s.reasons) for s in blocked):
        return InvalidQuery(f"Invalid query: {reasons}")
    return AccessDenied(f"Blocked by bqgate policy: {reasons}")


class Gateway:
    def __init__(
        self,
        *,
        store: JobStore,
        queue: Queue,
        classify: Classifier,
        config: GatewayConfig,
        recorder: Recorder | None = None,
        dispatch: DirectCall | None = None,
        accept: DirectAccept | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.store = store
        self.queue = queue
        self.classify = classify
        self.config = config
        self.recorder = recorder or NullRecorder()
        self._direct = dispatch
        self.dispatcher = Dispatcher(
            store=store,
            queue=queue,
            direct=dispatch,
            accept=accept,
            redispatch_after_ms=config.redispatch_after_ms,
            clock=clock,
        )
        self.clock = clock
        self.sleep = sleep
        self.new_id = new_id
        self.done_jobs = DoneJobs()

    # --- submission --------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def submit(
        self,
        principal: Principal,
        project: str,
        req: wire.QueryRequest,
        job_id: str,
        request_kind: str,
    ) -> Job:
        """Classify, record and route one query. Returns the stored job."""
        default_project = (req.default_dataset or {}).get("projectId") or project
        default_dataset = (req.default_dataset or {}).get("datasetId")
        for param in req.query_parameters:
            name = str(param.get("name") or "")
            if name.lower().startswith(RESERVED_PARAMETER_PREFIX):
                raise InvalidRequest(
                    f"Query parameter name {name!r} is reserved by the gateway "
                    f"(names starting with {RESERVED_PARAMETER_PREFIX!r})"
                )
        t0 = time.perf_counter()
        verdict = self.classify(
            req.sql,
            principal=principal.email,
            groups=principal.groups,
            # BigQuery resolves `dataset.table` in the job's project and a bare `table`
            # in the default dataset (which may live in another project).
            default_project=project,
            default_dataset=f"{default_project}.{default_dataset}" if default_dataset else None,
            claims=principal.claims,
        )
        classify_ms = (time.perf_counter() - t0) * 1000
        decision = verdict.decision
        job = Job.new(
            job_id=job_id,
            project=project,
            location=req.location or self.config.location,
            sql=req.sql,
            owner=principal.email,
            groups=sorted(principal.groups),
            claims=dict(principal.claims),
            issuer=principal.issuer,
            default_dataset=(
                {"projectId": default_project, "datasetId": default_dataset}
                if default_dataset
                else None
            ),
            labels=dict(req.labels),
            query_parameters=list(req.query_parameters),
            parameter_mode=req.parameter_mode,
            session_id=session_id_for(principal, req.labels),
            request_kind=request_kind,
            dry_run=req.dry_run,
            maximum_bytes_billed=req.maximum_bytes_billed,
            priority=req.priority,
            write_disposition=req.write_disposition,
            use_query_cache=req.use_query_cache,
            first_page_rows=req.max_results or None,
            classification=verdict,
            now_ms=self._now_ms(),
        )
        job.timings["classify_ms"] = round(classify_ms, 3)
        if (
            decision == "allow"
            or (decision == "block" and verdict.second_opinion)
            or (req.dry_run and decision == "approve")
        ):
            # A statement sqlglot cannot parse may still be a plain query over readable,
            # non-sensitive tables: the executor's dry run is the second opinion. A dry run
            # runs nothing, so a statement that needs approval is dry-run at once.
            job.state = PENDING
        elif decision == "approve":
            job.state = PENDING_APPROVAL
            job.needs_approval = True
            job.expire_at_ms = job.created_ms + self.config.approval_ttl_ms
        else:
            blocked = block_error(verdict)
            job.state = DONE
            job.ended_ms = job.created_ms
            job.error = stored(blocked)
        handoff = self.dispatcher.record(job.job_id, outbox.ACCEPTED, self.config.execute_topic)
        quota = (
            OpenRequestQuota(principal.email, self.config.max_pending_per_principal, job.created_ms)
            if job.state == PENDING_APPROVAL
            else None
        )
        events: list[tuple[EventKind, Mapping[str, Any]]] = accepted_events(job)
        if job.state == DONE:
            events.append(("blocked", job.error or {}))
        # An allowed read goes to the executor uncommitted: it creates the job with its
        # claim, in one commit made while the read runs (dispatch.directly_acceptable).
        handed = directly_acceptable(job) and self.dispatcher.accept is not None
        delivery = self.dispatcher.accept_new(job, handoff) if handed else None
        if delivery is None:
            try:
                # The job, its hand-off to the executor and its session events in one
                # commit: an accepted job is never left without someone due to act on it
                # (the outbox reconciler re-sends), nor unrecorded. No read first: a
                # duplicate id fails it.
                self.store.create(
                    job,
                    dispatch=[] if job.done else [handoff],
                    quota=quota,
                    record=Recording.of(self.recorder, job, events),
                )
            except QuotaFull as full:
                self._refuse_over_quota(job, len(full.open_job_ids))
            except Duplicate:
                created = self._created_by_executor(job) if handed else None
                if created is None:
                    raise
                # The executor created it, but its answer was lost (a timeout, say): the
                # job stands as it left it. Unfinished, it is delivered again by the topic
                # (the executor is idempotent: a run still going is attached to).
                if not created.done:
                    self.dispatcher.send(handoff, fast=False)
                return created
            if job.state == DONE:
                self.done_jobs.put(job)
                raise job_error(job)
            # Both allowed and approval-bound jobs go to the executor first: it alone holds
            # BigQuery rights, so it dry-runs the statement (cost guard, byte estimate) and
            # sends approval-bound jobs on to the approvals topic with their estimate.
            delivery = self.dispatcher.hand_off(handoff)
        finished = self._answered(job, delivery.answer)
        if finished is not None:
            # The direct path's answer: the job as the executor committed it (with its
            # session record), and its rows when they fit one answer.
            return finished
        if job.dry_run:
            # BigQuery answers a dry run at once: wait for the executor's (it alone can ask).
            job = self._wait(self.store.get(job.job_id) or job, None)
            if not job.done:
                raise Unavailable("The dry run did not finish in time; try again")
            return job
        if self._direct is not None:
            # The direct fast path returns once the executor has handled the job: answer with
            # its state now, so a finished job is reported DONE without another round trip.
            return self.store.get(job.job_id) or job
        return job

    def _created_by_executor(self, job: Job) -> Job | None:
        """The stored job of this very submission, if the executor created it from the
        hand-over (same owner, statement and creation time); None for any other holder
        of the id (a duplicate, or the caller's own earlier submission)."""
        stored_job = self.store.get(job.job_id)
        if (
            stored_job is not None
            and stored_job.owner == job.owner
            and stored_job.sql == job.sql
            and stored_job.created_ms == job.created_ms
        ):
            return stored_job
        return None

    def _answered(self, job: Job, answer: ExecutorAnswer | None) -> Job | None:
        """The finished job of the executor's answer (kept with its inline rows), or None."""
        if answer is None or answer.job is None:
            return None
        done = answer.job
        if done.job_id != job.job_id or not done.done:
            return None
        self.done_jobs.put(done, answer.rest or None, answer.size)
        return done

    def _refuse_over_quota(self, job: Job, open_count: int) -> NoReturn:
        """Store and record the refusal of an approval-needing job past the quota; raise it."""
        limit = self.config.max_pending_per_principal
        refusal = QuotaExceeded(quota_message(job.owner, open_count, limit))
        job.state = DONE
        job.ended_ms = job.created_ms
        job.error = stored(refusal)
        self.store.create(
            job,
            record=Recording.of(
                self.recorder,
                job,
                [
                    *accepted_events(job),
                    (
                        "blocked",
                        {
                            **job.error,
                            "quota": "approvals.max_pending_per_principal",
                            "limit": limit,
                            "open_requests": open_count,
                        },
                    ),
                ],
            ),
        )
        raise refusal

    def _retried(
        self, principal: Principal, project: str, job_id: str, req: wire.QueryRequest
    ) -> Job:
        """The stored job a submission's id names: the caller's own retry of the same
        statement (else :class:`Duplicate`, whoever owns the id)."""
        existing = self.store.get(job_id)
        if existing is None or existing.owner != principal.email or existing.sql != req.sql:
            raise Duplicate(f"Already Exists: Job {project}:{job_id}")
        return existing

    def _resume(self, job: Job) -> Job:
        """A client's retry of a job it already submitted: hand the job off again if its
        hand-off never happened (the first attempt failed after storing it)."""
        if job.done:
            return job
        unsent = [
            rec
            for rec in self.store.outbox_of(job.job_id)
            if not rec.finished
            and rec.sent_ms is None
            and rec.event in (outbox.ACCEPTED, outbox.APPROVED)
        ]
        if not unsent:
            return job
        self.dispatcher.send_all(unsent)
        return self.store.get(job.job_id) or job

    def _close_message(self, job: Job) -> list[OutboxRecord]:
        """The record that has slack_notify show an ended request's outcome on its message."""
        return [
            self.dispatcher.record(
                job.job_id, outbox.CLOSE, self.config.approvals_topic, until_done=True
            )
        ]

    def insert_job(
        self, principal: Principal, project: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``jobs.insert``."""
        req = wire.parse_insert(body)
        job_id = req.job_id or self.new_id()
        try:
            job = self.submit(principal, project, req, job_id, "jobs.insert")
        except Duplicate:
            # Same caller retrying the same insert: answer with the job it created.
            return wire.job_resource(self._resume(self._retried(principal, project, job_id, req)))
        if job.dry_run and job.error:
            raise job_error(job)
        return wire.job_resource(job)

    def query(
        self, principal: Principal, project: str, body: Mapping[str, Any], *, raw: bool = False
    ) -> dict[str, Any]:
        """``jobs.query``: submit, wait up to ``timeoutMs``, answer like getQueryResults.
        ``raw``: the answer's ``rows`` may be JSON text (:class:`bqgate.wire.codec.RawJson`,
        for an answer that is encoded as is)."""
        req = wire.parse_query(body)
        job_id = req.request_id or self.new_id()
        try:
            job = self.submit(principal, project, req, job_id, "jobs.query")
        except Duplicate:
            job = self._resume(self._retried(principal, project, job_id, req))
        params = wire.ResultsRequest(
            max_results=req.max_results,
            start_index=0,
            timeout_ms=req.timeout_ms,
            location=None,
            int64_timestamps=_int64_ts(body),
        )
        return self._results(job, params, query_response=True, raw=raw)

    # --- reading -----------------------------------------------------------------

    def _owned(self, principal: Principal, project: str, job_id: str) -> Job:
        job = self.done_jobs.get(job_id) or self._read(job_id)
        if job is None or job.owner != principal.email or job.project != project:
            raise NotFound(f"Not found: Job {project}:{job_id}")
        return self._expire_if_due(job)

    def _read(self, job_id: str) -> Job | None:
        """The stored job (a finished one is kept in memory from then on)."""
        job = self.store.get(job_id)
        if job is not None and job.done:
            self.done_jobs.put(job)
        return job

    def _expire_if_due(self, job: Job) -> Job:
        """End an approval request past its TTL when the agent polls it (lazy expiry)."""
        now = self._now_ms()
        if job.state != PENDING_APPROVAL or job.expire_at_ms is None or now < job.expire_at_ms:
            return job
        close: list[OutboxRecord] = []

        def records(j: Job) -> list[OutboxRecord]:
            close[:] = self._close_message(j)
            return close

        done = self.store.transition(
            job.job_id,
            lambda j: expire(j, now),
            dispatch=records,
            record=Recording(self.recorder, job, lambda j: [("expired", j.error or {})]),
        )
        if done.changed:
            self.dispatcher.send_all(close)
        return done.after

    def get_job(self, principal: Principal, project: str, job_id: str) -> dict[str, Any]:
        """``jobs.get``."""
        return wire.job_resource(self._owned(principal, project, job_id))

    def cancel_job(self, principal: Principal, project: str, job_id: str) -> dict[str, Any]:
        """``jobs.cancel``: a job not yet running ends with ``stopped``."""
        self._owned(principal, project, job_id)
        now = self._now_ms()

        close: list[OutboxRecord] = []
        awaited: dict[str, bool] = {}

        def cancel(job: Job) -> Job | None:
            awaited["approval"] = job.state == PENDING_APPROVAL  # for its close message
            if job.state in (PENDING, PENDING_APPROVAL):
                return replace(
                    job,
                    state=DONE,
                    ended_ms=now,
                    error=stored(Stopped("Job cancelled by its owner")),
                )
            return None

        def records(j: Job) -> list[OutboxRecord]:
            # A request awaiting approval has (or will have) a Slack message to close.
            close[:] = self._close_message(j) if awaited.get("approval") else []
            return close

        done = self.store.transition(job_id, cancel, dispatch=records)
        self.dispatcher.send_all(close)
        return {"kind": "bigquery#jobCancelResponse", "job": wire.job_resource(done.after)}

    def get_query_results(
        self,
        principal: Principal,
        project: str,
        job_id: str,
        params: Mapping[str, str],
        *,
        raw: bool = False,
    ) -> dict[str, Any]:
        """``jobs.getQueryResults``: waits up to ``timeoutMs`` for the job, then pages
        (``raw``: as for :meth:`query`)."""
        job = self._owned(principal, project, job_id)
        return self._results(job, wire.parse_results_params(params), raw=raw)

    def _wait(self, job: Job, timeout_ms: int | None) -> Job:
        budget = (
            self.config.max_wait_ms
            if timeout_ms is None
            else min(timeout_ms, self.config.max_wait_ms)
        )
        deadline = time.monotonic() + budget / 1000
        delay = 0.01
        while not job.done and time.monotonic() < deadline:
            self.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.25)
            fresh = self._read(job.job_id)
            if fresh is None:  # pragma: no cover - jobs are never deleted while polled
                raise NotFound(f"Not found: Job {job.project}:{job.job_id}")
            job = self._expire_if_due(fresh)
        return job

    def _results(
        self,
        job: Job,
        params: wire.ResultsRequest,
        *,
        query_response: bool = False,
        raw: bool = False,
    ) -> dict[str, Any]:
        job = self._wait(job, params.timeout_ms)
        if not job.done:
            return wire.query_results(
                job, rows=None, next_offset=None, query_response=query_response
            )
        if job.error:
            raise job_error(job)
        rows, next_offset = self.page(job, params, raw=raw)
        return wire.query_results(
            job, rows=rows, next_offset=next_offset, query_response=query_response
        )

    @overload
    def page(
        self, job: Job, params: wire.ResultsRequest
    ) -> tuple[list[dict[str, Any]] | None, int | None]: ...

    @overload
    def page(
        self, job: Job, params: wire.ResultsRequest, *, raw: bool
    ) -> tuple[list[dict[str, Any]] | codec.RawJson | None, int | None]: ...

    def page(
        self, job: Job, params: wire.ResultsRequest, *, raw: bool = False
    ) -> tuple[list[dict[str, Any]] | codec.RawJson | None, int | None]:
        """The REST rows of a finished job from ``params.start_index`` (at most
        ``params.max_results``) and the offset of the next page (None: the last).
        ``raw``: the rows may come as JSON text (for an answer's ``rows``)."""
        total = job.total_rows or 0
        start = params.start_index
        if job.schema is None or params.max_results == 0 or start >= total or not job.page_starts:
            empty: list[dict[str, Any]] | None = (
                [] if job.schema is not None and params.max_results != 0 else None
            )
            return empty, None
        inline = self.done_jobs.rest(job.job_id)
        if inline is not None and sum(count for _, count, _ in inline) == total:
            # Answered inline by the executor: served from memory, as many rows as the
            # client asks for (or one default page), no page read; with ``raw``, as the
            # JSON text the executor sent (see inline_page).
            want = DEFAULT_PAGE_ROWS if params.max_results is None else params.max_results
            end = min(total, start + min(want, MAX_PAGE_ROWS))
            rest = inline_page(
                inline,
                start,
                end,
                job.schema,
                int64_timestamps=params.int64_timestamps,
                raw=raw,
            )
            return rest, (end if end < total else None)
        first = bisect.bisect_right(job.page_starts, start) - 1
        if params.max_results is None:
            # One stored page (from ``start``) per call, as BigQuery pages by size.
            end = job.page_starts[first + 1] if first + 1 < len(job.page_starts) else total
            end = min(end, start + DEFAULT_PAGE_ROWS)
        else:
            end = min(total, start + min(params.max_results, MAX_PAGE_ROWS))
        last = bisect.bisect_right(job.page_starts, end - 1) - 1
        rows_out: list[list[Any]] = []
        for page_start, rows_json in self.store.get_pages(job.job_id, first, last):
            page_rows = codec.loads(rows_json)
            lo = max(start - page_start, 0)
            hi = min(end - page_start, len(page_rows))
            rows_out.extend(page_rows[lo:hi])
        rest = wire.rows_to_rest(rows_out, job.schema, params.int64_timestamps)
        return rest, (end if end < total else None)


def session_id_for(principal: Principal, labels: Mapping[str, str]) -> str:
    """The session a request belongs to: the caller's own session for its ``session_id``
    label, else one session per principal and token lifetime.

    The label only groups the caller's requests: the stored id is derived from the
    issuer, the principal and the label, so a label naming another principal's session
    (or its stored id) lands in a session of the caller's own.

    >>> p = Principal(email="a@x", groups=frozenset(), issuer="i", subject="a", expires_at=99)
    >>> session_id_for(p, {"session_id": "s-1"})
    's-1.e682d0b6378392ae53c9dbc6'
    >>> q = Principal(email="b@x", groups=frozenset(), issuer="i", subject="b", expires_at=99)
    >>> session_id_for(q, {"session_id": "s-1"}) != session_id_for(p, {"session_id": "s-1"})
    True
    >>> session_id_for(q, {"session_id": session_id_for(p, {"session_id": "s-1"})})[:12]
    's-1e682d0b63'
    >>> session_id_for(p, {})
    'auto-d204ada9ccc811c7e64e'
    """
    label = labels.get("session_id")
    if label:
        owner = f"{principal.issuer}\n{principal.email}\n{label}"
        mine = hashlib.sha256(owner.encode("utf-8")).hexdigest()[:24]
        slug = "".join(c for c in label if c.isascii() and (c.isalnum() or c in "-_"))[:40]
        return f"{slug}.{mine}" if slug else f"l.{mine}"
    digest = hashlib.sha256(f"{principal.issuer}|{principal.email}|{principal.expires_at}".encode())
    return "auto-" + digest.hexdigest()[:20]


def _int64_ts(body: Mapping[str, Any]) -> bool:
    opts = body.get("formatOptions")
    return bool(isinstance(opts, dict) and opts.get("useInt64Timestamp"))
