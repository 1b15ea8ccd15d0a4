"""The executor core: the only code that runs statements on BigQuery.

``Executor.run(job_id)`` is called by the Pub/Sub-triggered function for every
execute message and may be called by a direct fast path too. It is idempotent:

* the job is claimed by a conditional commit; a DONE job is never run again;
* the BigQuery job id is derived from the gateway job id
  (:func:`bqgate.jobs.warehouse_job_id`; for a read handed over uncommitted, from the
  job id, its owner and its creation time: :func:`bqgate.jobs.handed_over_job_id`) and
  stored by the claim, so a redelivery or a retry after a crash attaches to the same
  BigQuery job instead of running the statement twice;
* result pages have deterministic ids, so rewriting them is harmless.

``Executor.accept(job, handoff)`` serves the ingress's direct call for an allowed read it
has not committed: the job is created with its claim, in one commit made while the read
runs (see :func:`bqgate.service.dispatch.directly_acceptable`).

Every job it is handed ends (see :meth:`Executor.run`): BigQuery's answer becomes the
job's error through :func:`bqgate.errors.from_warehouse`; a dependency outage
(:class:`bqgate.errors.Unavailable`, or a transient BigQuery API failure) is retried by
redelivery at most ``ExecutorConfig.transient_attempts`` times; anything unexpected ends
the job at once with ``jobFailed`` and an incident id.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from bqgate import outbox
from bqgate.approvals import check_binding, needs_approval, quota_message
from bqgate.audit.record import EventKind
from bqgate.errors import (
    AccessDenied,
    BqgateError,
    Duplicate,
    InvalidQuery,
    JobFailed,
    NotFound,
    QuotaExceeded,
    Unavailable,
    from_warehouse,
    stored,
)
from bqgate.jobs import (
    DONE,
    PENDING,
    PENDING_APPROVAL,
    RUNNING,
    Job,
    Transition,
    handed_over_job_id,
    warehouse_job_id,
)
from bqgate.outbox import OutboxRecord
from bqgate.policy import Policy
from bqgate.ports import (
    DryRun,
    EventItems,
    JobStore,
    OpenRequestQuota,
    Page,
    QueryOutcome,
    Queue,
    QuotaFull,
    Recorder,
    Recording,
    Warehouse,
)
from bqgate.service.dispatch import (
    NOT_CREATED,
    REDISPATCH_AFTER_MS,
    STORE_DOWN,
    Dispatcher,
    ExecutorAnswer,
    RestChunk,
    accepted_events,
    directly_acceptable,
)
from bqgate.vocabulary import Decision, strictest_decision
from bqgate.wire import codec
from bqgate.wire.bigquery import DEFAULT_PAGE_ROWS, rest_rows

if TYPE_CHECKING:
    from bqgate.masking import Masker
    from bqgate.sql.rewrite import Rewrite

log = logging.getLogger("bqgate.executor")

#: Firestore documents hold at most 1 MiB; keep each page's JSON well under it.
PAGE_BYTES = 512 * 1024
#: Rows fetched from BigQuery per call (BigQuery also caps each answer at ~10 MB).
FETCH_ROWS = 10_000
#: Largest result (masked rows as JSON) answered inline (``execution.inline_result_bytes``).
INLINE_RESULT_BYTES = 1024 * 1024
#: Compact JSON of rows.
_ENCODE = codec.dumps

_LABEL_BAD = re.compile(r"[^a-z0-9_-]")

#: BigQuery statement types the dry run is compared with (DDL and scripting are judged
#: by the classifier alone).
COMPARED_STATEMENT_TYPES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "SCRIPT"})

_VERB = {"DELETE": "deletes", "UPDATE": "updates", "MERGE": "changes"}

#: Reference kinds whose code runs with the query (their bodies are invisible to sqlglot).
CODE_KINDS = frozenset({"routine", "table_function", "procedure", "model"})


class _NotCreated(Exception):
    """A job handed over uncommitted (:meth:`Executor.accept`) was not created: its run
    ends here, with nothing stored to end. ``store_down``: the job store did not answer
    (the ingress need not try it too)."""

    def __init__(self, why: str, *, store_down: bool = False) -> None:
        super().__init__(why)
        self.store_down = store_down


def classify_defaults(job: Job) -> dict[str, Any]:
    """The classifier's name defaults for a job: its project, and its default dataset as
    ``project.dataset`` (bare table names resolve there, ``dataset.table`` in the job's
    project, exactly as BigQuery does)."""
    default = job.default_dataset or {}
    dataset = default.get("datasetId")
    return {
        "default_project": job.project,
        "default_dataset": f"{default.get('projectId') or job.project}.{dataset}"
        if dataset
        else None,
        "claims": job.claims,
    }


def label_value(text: str) -> str:
    """A BigQuery label value (lower-case letters, digits, _ and -, at most 63).

    >>> label_value("Agent@Demo-Project.iam.gserviceaccount.com")
    'agent_demo-project_iam_gserviceaccount_com'
    """
    return _LABEL_BAD.sub("_", text.lower())[:63]


def cost_decision(estimate: int, policy: Policy) -> tuple[Decision, str]:
    """The cost guard: allow, approve or block by the dry run's byte estimate.

    >>> from bqgate.policy import load_policy
    >>> p = load_policy("policies/default.yaml")
    >>> cost_decision(10, p)[0], cost_decision(2 * 1024**3, p)[0], cost_decision(10**15, p)[0]
    ('allow', 'approve', 'block')
    """
    cost = policy.cost
    if cost.block_above_bytes is not None and estimate > cost.block_above_bytes:
        return "block", (
            f"the query would process {estimate:,} bytes, over the policy's "
            f"block limit of {cost.block_above_bytes:,} bytes"
        )
    if cost.approve_above_bytes is not None and estimate > cost.approve_above_bytes:
        return "approve", (
            f"the query would process {estimate:,} bytes, over the policy's "
            f"approval threshold of {cost.approve_above_bytes:,} bytes"
        )
    return "allow", "within the policy's cost limits"


#: Claims of reads committing at once while their reads run (per executor process).
CLAIM_THREADS = 16

#: Deliveries of one job that may fail on a dependency outage before the job is failed.
TRANSIENT_ATTEMPTS = 3


#: BigQuery bills at least 10 MiB for each table a query references, in whole MiB.
MIN_BILLED_BYTES = 10 * 1024 * 1024


def billed_bytes(processed: int, tables: int = 0) -> int:
    """What BigQuery would bill for ``processed`` bytes over ``tables`` referenced tables.

    >>> billed_bytes(0), billed_bytes(1), billed_bytes(11 * 1024 * 1024 + 1)
    (0, 10485760, 12582912)
    >>> billed_bytes(0, tables=2)
    20971520
    """
    if processed <= 0 and tables <= 0:
        return 0
    mib = 1024 * 1024
    return max(MIN_BILLED_BYTES * max(tables, 1), -(-processed // mib) * mib)


def _tables_of(job: Job) -> int:
    return len(job.classification.tables)


def lower_cap(policy_cap: int | None, client_cap: int | None) -> int | None:
    """The ``maximumBytesBilled`` a job runs with: the lower of the policy's and the client's.

    >>> lower_cap(10, None), lower_cap(None, 5), lower_cap(10, 5), lower_cap(None, None)
    (10, 5, 5, None)
    """
    caps = [c for c in (policy_cap, client_cap) if c is not None]
    return min(caps) if caps else None


def over_client_cap(estimate: int, job: Job) -> bool:
    """Would the job bill more than the ``maximumBytesBilled`` its client set?"""
    cap = job.maximum_bytes_billed
    return bool(cap) and billed_bytes(estimate, _tables_of(job)) > (cap or 0)


def client_cap_error(estimate: int, job: Job) -> BqgateError:
    """BigQuery's own error for a query over the client's ``maximumBytesBilled``."""
    return from_warehouse(
        "bytesBilledLimitExceeded",
        f"Query exceeded limit for bytes billed: {job.maximum_bytes_billed}. "
        f"{billed_bytes(estimate, _tables_of(job))} or higher required.",
    )


@dataclass
class ExecutorConfig:
    page_bytes: int = PAGE_BYTES
    fetch_rows: int = FETCH_ROWS
    #: A result whose masked rows encode to at most this many bytes is answered inline
    #: (the direct call's answer carries it) and its pages are written in the commit that
    #: ends the job; a larger one is written page by page as it streams from BigQuery.
    inline_result_bytes: int = INLINE_RESULT_BYTES
    transient_attempts: int = TRANSIENT_ATTEMPTS
    #: The outbox reconciler's deadline for approval requests (bqgate.service.dispatch).
    redispatch_after_ms: int = REDISPATCH_AFTER_MS


class Executor:
    def __init__(
        self,
        *,
        store: JobStore,
        warehouse: Warehouse,
        policy: Policy,
        hmac_key: bytes,
        queue: Queue | None = None,
        approvals_topic: str = "approvals",
        recorder: Recorder | None = None,
        config: ExecutorConfig | None = None,
        clock: Callable[[], float] = time.time,
        warehouse_project: str | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.approvals_topic = approvals_topic
        self.warehouse = warehouse
        self.policy = policy
        self.hmac_key = hmac_key
        self.recorder = recorder
        self.config = config or ExecutorConfig()
        self.clock = clock
        self.dispatcher = (
            Dispatcher(
                store=store,
                queue=queue,
                clock=clock,
                redispatch_after_ms=self.config.redispatch_after_ms,
            )
            if queue is not None
            else None
        )
        #: The project BigQuery jobs run in; error messages never name it to the agent.
        self.warehouse_project = warehouse_project
        # Per thread: the direct call being answered (its hand-off, and how the job ended).
        self._local = threading.local()
        self._claims: futures.ThreadPoolExecutor | None = None
        self._claims_lock = threading.Lock()

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _claimer(self) -> futures.ThreadPoolExecutor:
        """The threads that commit a read's claim while the read runs (built on first use)."""
        with self._claims_lock:
            if self._claims is None:
                self._claims = futures.ThreadPoolExecutor(
                    max_workers=CLAIM_THREADS, thread_name_prefix="bqgate-claim"
                )
            return self._claims

    def _record(self, job: Job, kind: EventKind, data: Mapping[str, Any]) -> None:
        if self.recorder is not None:
            self.recorder.record(job, kind, data)

    def _recording(self, job: Job, events: Callable[[Job], EventItems]) -> Recording | None:
        """Session events the store commits with a job write (None: no recorder)."""
        return None if self.recorder is None else Recording(self.recorder, job, events)

    def _handoff(self) -> list[str]:
        """The outbox record the commit that ends this run's job finishes (a direct call)."""
        rid: str | None = getattr(self._local, "handoff", None)
        return [rid] if rid else []

    def _finished(
        self, job: Job, *, rest: tuple[RestChunk, ...] = (), completed: bool = False
    ) -> None:
        """Note the job this run ended, for the direct call's answer (if one is awaited)."""
        if getattr(self._local, "answering", False):
            self._local.ended = ExecutorAnswer(
                outcome="finished", job=job, rest=rest, outbox_done=completed
            )

    def execute(self, job_id: str, *, direct: bool = False) -> ExecutorAnswer:
        """:meth:`run`, answered: what happened and, when this run ended the job, the job as
        committed (with its masked rows when the result is answered inline).

        ``direct``: the ingress called (its job's ``accepted`` hand-off is finished in
        the commit that ends the job, so the ingress need not mark it)."""
        return self._answering(job_id, direct, lambda: self.run(job_id))

    def accept(self, job: Job, handoff: OutboxRecord) -> ExecutorAnswer:
        """The direct call for a job the ingress has not committed
        (:func:`bqgate.service.dispatch.directly_acceptable`): create it, with its
        ``accepted`` record ``handoff`` and its request's session events, and run it.

        When its rewrite and its cost are settled without a round trip, the creation is
        the claim: one commit, made while the read runs (:meth:`_execute`); otherwise
        the job is created first and goes on as any other. The answer says
        ``accepted`` only if this call created the job; else (a duplicate id, a failure
        before anything was stored) it is :data:`NOT_CREATED` and the ingress creates the
        job itself: a job is never lost, and never created twice."""
        if (
            not directly_acceptable(job)
            or handoff.job_id != job.job_id
            or handoff.event != outbox.ACCEPTED
        ):
            return ExecutorAnswer(outcome=NOT_CREATED)
        self._local.created = False
        try:
            answer = self._answering(job.job_id, True, lambda: self.run_new(job, handoff))
        except _NotCreated as why:
            if why.store_down:
                # Its read may have run on BigQuery (labelled with the job id), but nothing
                # was recorded, so nothing it read was returned: say so where audits look.
                log.error(
                    "job %s (statement %s): not created, the job store did not answer; "
                    "nothing it read was returned",
                    job.job_id,
                    job.classification.statement_hash[:16],
                )
                return ExecutorAnswer(outcome=STORE_DOWN)
            log.warning("job %s: not created here (%s); the ingress creates it", job.job_id, why)
            return ExecutorAnswer(outcome=NOT_CREATED)
        finally:
            created, self._local.created = self._local.created, False
        if not created:
            return ExecutorAnswer(outcome=NOT_CREATED)
        return replace(answer, accepted=True)

    def _answering(self, job_id: str, direct: bool, body: Callable[[], str]) -> ExecutorAnswer:
        self._local.handoff = outbox.record_id(job_id, outbox.ACCEPTED) if direct else None
        self._local.answering, self._local.ended = True, None
        try:
            outcome = body()
            ended: ExecutorAnswer | None = self._local.ended
        finally:
            self._local.handoff, self._local.answering, self._local.ended = None, False, None
        if ended is None or ended.job is None or ended.job.job_id != job_id:
            return ExecutorAnswer(outcome=outcome)
        return ExecutorAnswer(
            outcome=outcome,
            job=ended.job,
            rest=ended.rest,
            outbox_done=ended.outbox_done,
        )

    def run(self, job_id: str) -> str:
        """Handle one execute message for ``job_id``; the job reaches a terminal state unless
        a retry may help. Returns what happened (for logs and tests).

        * a :class:`BqgateError` (BigQuery rejected the statement, a policy check failed)
          ends the job with that error, clamped by :func:`bqgate.errors.finished`;
        * a transient one (a dependency outage) is raised again, so the message is
          redelivered, until the job has failed this way ``transient_attempts`` times; then
          the job ends with ``jobFailed``;
        * any other exception ends the job with ``jobFailed`` and an incident id (logged
          with its traceback); the message says nothing else.

        If the job store itself is down the error propagates (nothing can be recorded);
        the redelivery, or the dead-letter consumer, finishes the job.
        """
        return self._guarded(job_id, lambda: self._run(job_id))

    def run_new(self, job: Job, handoff: OutboxRecord) -> str:
        """:meth:`run` for a job not yet stored (see :meth:`accept`). Raises
        :class:`_NotCreated` for any failure before the job was stored: there is no
        job to end or to count a failure against."""

        def body() -> str:
            try:
                return self._run_new(job, handoff)
            except _NotCreated:
                raise
            except Exception as exc:
                if getattr(self._local, "created", False):
                    raise
                raise _NotCreated(type(exc).__name__) from exc

        return self._guarded(job.job_id, body)

    def _guarded(self, job_id: str, body: Callable[[], str]) -> str:
        try:
            return body()
        except _NotCreated:
            raise  # nothing stored: nothing to end
        except BqgateError as err:
            if err.transient:
                return self._transient(job_id, err)
            return self._fail_id(job_id, err)
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("job %s: unexpected executor error (incident %s)", job_id, incident)
            return self._fail_id(
                job_id,
                JobFailed(f"The gateway failed to run the job (incident {incident})."),
            )

    def _transient(self, job_id: str, err: BqgateError) -> str:
        """Count one transient failure; raise ``err`` (redelivery) while attempts remain."""
        limit = self.config.transient_attempts

        def count(job: Job) -> Job | None:
            return None if job.done else replace(job, transient_failures=job.transient_failures + 1)

        job = self.store.transition(job_id, count).after
        if job.done:
            return "skipped"
        if job.transient_failures < limit:
            log.warning(
                "job %s: transient failure %d of %d (%s): redelivery will retry",
                job_id,
                job.transient_failures,
                limit,
                err.message,
            )
            raise err
        incident = uuid.uuid4().hex[:12]
        log.error(
            "job %s: gave up after %d transient failures (incident %s): %s",
            job_id,
            limit,
            incident,
            err.message,
        )
        return self._fail_id(
            job_id,
            JobFailed(
                f"The job failed {limit} times on a transient error of a service the gateway "
                f"depends on (incident {incident}); submit the query again later."
            ),
        )

    def _fail_id(self, job_id: str, err: BqgateError) -> str:
        job = self.store.get(job_id)
        if job is None:
            return "unknown"
        return self._fail(job, err)

    def _run(self, job_id: str) -> str:
        """Handle one execute message for ``job_id``.

        * every statement is first rewritten so that it reads masked values only
          (:mod:`bqgate.sql.rewrite`); that rewritten statement is what is dry-run,
          measured and run;
        * an approval-bound job not yet sent for approval is dry-run (cost guard, byte
          estimate), its writes measured, and published to the approvals topic;
        * an allowed job is dry-run (unless table sizes settle its cost); BigQuery's
          statement type and tables must agree with the classifier's; over the policy's
          thresholds it is blocked or sent for approval instead of running;
        * an allowed DELETE/UPDATE/MERGE has its blast radius measured first: over its
          tier's ``writes`` limits it is sent for approval (or blocked);
        * a statement sqlglot could not parse runs only if the dry run shows a plain query
          over readable tables without sensitive columns;
        * an approved job has its approval binding re-checked against the statement as
          stored now;
        * then the job is claimed in a transaction and run exactly once.
        """
        job = self.store.get(job_id)
        if job is None:
            log.warning("execute message for unknown job %s: dropped", job_id)
            return "unknown"
        return self._proceed(job)

    def _run_new(self, job: Job, handoff: OutboxRecord) -> str:
        """Create the handed-over ``job`` and run it: created with its claim when nothing
        needs a round trip first (the common read), else created first and on as usual."""
        plan = self._settled_plan(job)
        if plan is not None:
            return self._execute(job, plan, create=handoff)
        try:
            self.store.create(
                job,
                dispatch=[handoff],
                record=Recording.of(self.recorder, job, accepted_events(job)),
            )
        except Duplicate:
            raise _NotCreated("the job id is taken") from None
        except Unavailable as err:
            raise _NotCreated("the job store did not answer", store_down=True) from err
        self._local.created = True
        return self._proceed(job)

    def _settled_plan(self, job: Job) -> Rewrite | None:
        """The read's rewrite when it runs without asking anything first: the rewrite
        holds and the tables' stored sizes allow its cost (None: go the usual way, which
        fails the job or asks BigQuery's dry run or an approver)."""
        from bqgate.sql.rewrite import RewriteError

        try:
            plan = self._rewrite(job)
        except RewriteError:
            return None
        return plan if self._settled_estimate(job) is not None else None

    def _settled_estimate(self, job: Job) -> int | None:
        """The tables' stored sizes when they settle the job's cost: the policy allows
        that much and the client's own cap is not exceeded (None: ask BigQuery's dry run)."""
        estimate = self._upper_bound(job)
        if (
            estimate is None
            or cost_decision(estimate, self.policy)[0] != "allow"
            or over_client_cap(estimate, job)
        ):
            return None
        return estimate

    def _proceed(self, job: Job) -> str:
        """:meth:`_run` for the job as stored."""
        if job.state == DONE:
            return "skipped"
        if job.dry_run and job.classification.second_opinion:
            return self._fail(
                job,
                AccessDenied(
                    "Blocked by bqgate policy: a statement the classifier cannot "
                    "parse gets no dry run (only a second opinion when it runs)"
                ),
            )
        if job.classification.second_opinion:
            return self._second_opinion(job)
        plan = self._plan(job)
        if plan is None:
            return "failed"
        if job.dry_run:
            return self._answer_dry_run(job, plan)
        if job.state == PENDING_APPROVAL:
            return self._request_approval(job, None, plan=plan)
        if needs_approval(job):
            problem = self._approval_problem(job)
            if problem:
                return self._fail(
                    job,
                    AccessDenied(f"Approval does not match this job: {problem}"),
                )
        elif job.state == PENDING:
            estimate = None if job.classification.writes else self._settled_estimate(job)
            if estimate is None:
                estimate = self._estimate(job, plan)  # the bound does not settle it: ask BigQuery
            if estimate is None:
                return "failed"
            if over_client_cap(estimate, job):
                return self._fail(job, client_cap_error(estimate, job))
            decision, why = cost_decision(estimate, self.policy)
            if decision == "block":
                return self._fail(job, QuotaExceeded(why))
            if decision == "approve":
                return self._request_approval(job, why, estimate, plan=plan)
            if job.classification.writes:
                measured = self._measured_or_ended(job, plan)
                if isinstance(measured, str):
                    return measured
                verdict, message, record = measured
                if verdict == "approve":
                    return self._request_approval(job, message, estimate, plan=plan, blast=record)
        return self._execute(job, plan)

    # --- the masking rewrite, the second opinion, the blast radius --------------------

    def _measured_or_ended(
        self, job: Job, plan: Rewrite
    ) -> str | tuple[str, str, list[dict[str, Any]]]:
        """A write's measured blast radius (verdict, message, record), or how the job ended
        instead: ``"failed"`` when it could not be measured, the block when the policy's
        write limits block it."""
        measured = self._blast_radius(job, plan)
        if measured is None:
            return "failed"
        verdict, message, _ = measured
        if verdict == "block":
            return self._fail(job, AccessDenied(f"Blocked by bqgate policy: {message}"))
        return measured

    def _plan(self, job: Job) -> Rewrite | None:
        """The job's statement rewritten to read masked values only (None: job failed)."""
        from bqgate.sql.rewrite import RewriteError

        try:
            return self._rewrite(job)
        except RewriteError as exc:
            text = str(exc)
            if "schema of" in text:
                self._fail(job, NotFound("Not found: " + text))
            else:
                self._fail(job, AccessDenied("Blocked by bqgate policy: " + text))
            return None

    def _rewrite(self, job: Job) -> Rewrite:
        """The job's statement rewritten to read masked values only (raises RewriteError)."""
        from bqgate.sql.names import Defaults
        from bqgate.sql.rewrite import rewrite

        groups = self.policy.groups_for(job.owner, job.groups)
        return rewrite(
            job.sql,
            defaults=Defaults.of(job.project, job.default_dataset),
            sensitive_for=self.policy.sensitive_for,
            schema_for=self.warehouse.table_schema,
            parameters=job.query_parameters,
            parameter_mode=job.parameter_mode,
            hmac_key=self.hmac_key,
            unmasked_for=lambda fqn: self.policy.unmasked_for(job.owner, groups, fqn),
        )

    def _dry_run(self, job: Job, sql: str, params: Sequence[Mapping[str, Any]]) -> DryRun | None:
        """Dry-run ``sql`` (None, with the job failed, if BigQuery rejects it)."""
        t0 = time.perf_counter()
        try:
            info = self.warehouse.dry_run_info(
                sql, default_dataset=job.default_dataset, query_parameters=params
            )
        except BqgateError as err:
            if err.transient:
                raise  # run() counts it and lets the redelivery try again
            self._fail(job, err)
            return None
        job.timings["dry_run_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return info

    def _second_opinion(self, job: Job) -> str:
        """A statement sqlglot cannot parse: run it only if BigQuery's dry run shows a plain
        query whose tables are all readable (``allow``) and carry no sensitive columns."""
        info = self._dry_run(job, job.sql, job.query_parameters)
        if info is None:
            return "failed"
        problems: list[str] = []
        if info.statement_type != "SELECT":
            problems.append(
                f"BigQuery reads it as {info.statement_type or 'an unknown statement'}, "
                "and only plain queries get a second opinion"
            )
        tables = list(info.referenced_tables or ())
        groups = self.policy.groups_for(job.owner, job.groups)
        for table in tables:
            problems.extend(self._readable_problems(table, groups, job))
        if problems:
            reasons = [*job.classification.reasons, *problems]
            return self._fail(
                job,
                AccessDenied("Blocked by bqgate policy: " + "; ".join(reasons)),
            )
        verdict = replace(
            job.classification,
            tables=tuple(sorted(tables)),
            decision="allow",
            reasons=(
                *job.classification.reasons,
                "BigQuery's dry run shows a plain query over readable tables without sensitive "
                "columns: allowed on the second opinion",
            ),
        )
        opinion = {"statement_type": info.statement_type, "referenced_tables": sorted(tables)}
        self.store.transition(
            job.job_id,
            lambda j: replace(j, classification=verdict),
            record=self._recording(job, lambda j: [("second_opinion", opinion)]),
        )
        estimate_ok, why = cost_decision(info.total_bytes_processed, self.policy)
        if estimate_ok != "allow":
            return self._fail(job, QuotaExceeded(why))
        from bqgate.sql.rewrite import Rewrite

        plan = Rewrite(
            sql=job.sql,
            changed=False,
            parameters=tuple(job.query_parameters),
            parameter_mode=job.parameter_mode,
            tables=tuple(tables),
        )
        return self._execute(job, plan)

    def _readable_problems(self, table: str, groups: frozenset[str], job: Job) -> list[str]:
        """Why the caller may not read ``table`` unseen by the classifier (empty: fine)."""
        project, dataset, _ = [*table.split("."), "", ""][:3]
        tier = self.policy.tier_of(project, dataset)
        if tier is None:
            return [f"{table}: dataset {project}.{dataset} is not in the policy (deny by default)"]
        action = self.policy.action_for(groups, tier, "read", job.claims)
        if action != "allow":
            return [f"read on {table} ({tier}) is not allowed without approval"]
        if self.policy.sensitive_for(table):
            return [
                f"{table} has sensitive columns and is read where the masking rewrite cannot "
                "reach (a view or routine body, or SQL sqlglot cannot parse)"
            ]
        return []

    def _disagreement(self, job: Job, info: DryRun) -> str | None:
        """Where BigQuery's dry run contradicts the classifier (None: they agree)."""
        kinds = job.classification.statements
        expected = kinds[0] if len(kinds) == 1 else "SCRIPT"
        if (
            info.statement_type
            and expected in COMPARED_STATEMENT_TYPES
            and info.statement_type != expected
        ):
            return (
                f"the classifier read a {expected} statement but BigQuery reads "
                f"{info.statement_type}"
            )
        if info.referenced_tables is None:
            return None
        ours = [t.lower() for t in job.classification.tables]
        groups = self.policy.groups_for(job.owner, job.groups)
        problems: list[str] = []
        for table in info.referenced_tables:
            low = table.lower()
            if low in ours or any("*" in t and fnmatch.fnmatchcase(low, t) for t in ours):
                continue
            # BigQuery reads a table the classifier did not see (through a view, a table
            # function or a routine): it must be readable without approval and unmasked.
            problems.extend(self._readable_problems(table, groups, job))
        if problems:
            return "BigQuery's dry run reads tables the classifier did not see: " + "; ".join(
                problems
            )
        return None

    def _blast_radius(
        self, job: Job, plan: Rewrite
    ) -> tuple[Decision, str, list[dict[str, Any]]] | None:
        """Measure every DELETE/UPDATE/MERGE: (decision, message, record)."""
        import sqlglot

        from bqgate.sql.blast import CannotMeasure, measure_sql

        statements = [s for s in sqlglot.parse(plan.marked_sql, read="bigquery") if s is not None]
        worst: Decision = "allow"
        messages: list[str] = []
        record: list[dict[str, Any]] = []
        for check in job.classification.writes:
            index, target, limits = check.statement, check.target, check.limits
            try:
                if index > len(statements):
                    raise CannotMeasure("the statement is missing")
                count_sql = measure_sql(statements[index - 1])
            except CannotMeasure as exc:
                worst = strictest_decision((worst, "approve"))
                messages.append(f"the blast radius on {target} cannot be measured ({exc})")
                continue
            sql, params, _mode = plan.finalize(count_sql)
            row = self._query_row(job, f"_m{index}", sql, params)
            if row is None:
                return None
            touched, total = int(row[0] or 0), int(row[1] or 0)
            verb = _VERB.get(check.kind, "touches")
            text = f"{verb} {touched:,} of {total:,} rows of {target}"
            over = limits.exceeded(touched, total)
            entry = {
                "statement": index,
                "target": target,
                "touched": touched,
                "total": total,
                "limits": limits.describe(),
                "over": over,
            }
            record.append(entry)
            if over:
                worst = strictest_decision((worst, limits.above))
                messages.append(f"{text}: {over} (tier {check.tier})")
            else:
                messages.append(text)
        self.store.transition(
            job.job_id,
            lambda j: replace(j, blast_radius=record),
            record=self._recording(job, lambda j: [("blast_radius", {"writes": record})]),
        )
        return worst, "; ".join(messages), record

    def _query_row(
        self, job: Job, suffix: str, sql: str, params: Sequence[Mapping[str, Any]]
    ) -> list[Any] | None:
        """Run a small helper query (derived job id, idempotent) and return its first row."""
        wjid = warehouse_job_id(job.job_id) + suffix
        try:
            outcome = self.warehouse.run(
                wjid,
                sql,
                default_dataset=job.default_dataset,
                labels={"bqgate_job": label_value(job.job_id), "bqgate_purpose": "blast_radius"},
                maximum_bytes_billed=self.policy.cost.max_bytes_billed,
                query_parameters=params,
            )
        except BqgateError as err:
            if err.transient:
                raise  # run() counts it and lets the redelivery try again
            self._fail(job, err)
            return None
        if outcome.error:
            self._fail(job, outcome.error)
            return None
        for rows in self.warehouse.pages(wjid, page_size=1, max_rows=1):
            if rows:
                return list(rows[0])
        self._fail(job, InvalidQuery("the blast-radius count returned no row"))
        return None

    def _upper_bound(self, job: Job) -> int | None:
        """Bytes the job can process at most: the sum of its tables' stored sizes.

        A statement cannot scan more than every table it references, so when that sum is
        within the policy's limits the dry run is skipped. None (dry run needed) when a
        table's size does not bound its scan (views, external tables, wildcards, table
        functions, INFORMATION_SCHEMA) or the classifier listed no tables.
        """
        tables = job.classification.tables
        if not tables:
            return None
        for verdict in job.classification.per_statement:
            if any(kind in CODE_KINDS for kind, _name, _role in verdict.refs):
                # A routine's body may read tables the statement does not name: only the
                # dry run (and its agreement with the classifier) can show them.
                return None
        total = 0
        for table in tables:
            size = self.warehouse.table_size(str(table))
            if size is None:
                return None
            total += size
        return total

    def _estimate(self, job: Job, plan: Rewrite) -> int | None:
        """Dry-run the job as it will run; check it agrees with the classifier."""
        info = self._dry_run(job, plan.sql, plan.parameters)
        if info is None:
            return None
        problem = self._disagreement(job, info)
        if problem:
            self._fail(job, AccessDenied(f"Blocked by bqgate policy: {problem}"))
            return None
        return info.total_bytes_processed

    def _request_approval(
        self,
        job: Job,
        cost_reason: str | None,
        estimate: int | None = None,
        *,
        plan: Rewrite,
        blast: list[dict[str, Any]] | None = None,
    ) -> str:
        if job.approval_requested_ms:
            return "awaiting-approval"  # a redelivery: the request is already out
        extra: list[str] = [cost_reason] if cost_reason else []
        if estimate is None:
            estimate = self._estimate(job, plan)
            if estimate is None:
                return "failed"
            decision, why = cost_decision(estimate, self.policy)
            if decision == "block":
                return self._fail(job, QuotaExceeded(why))
            if job.classification.writes and blast is None:
                measured = self._measured_or_ended(job, plan)
                if isinstance(measured, str):
                    return measured
                _, message, blast = measured
                extra.append(message)
        if over_client_cap(estimate, job):
            return self._fail(job, client_cap_error(estimate, job))
        now = self._now_ms()
        ttl_ms = self.policy.approvals.ttl_seconds * 1000
        fields: dict[str, Any] = {
            "state": PENDING_APPROVAL,
            "needs_approval": True,
            "bytes_estimate": estimate,
            "approval_requested_ms": now,
            "timings": job.timings,
            "rewritten_sql": plan.sql if plan.changed else None,
        }
        if blast is not None:
            fields["blast_radius"] = blast
        if extra:
            fields["classification"] = replace(
                job.classification, reasons=(*job.classification.reasons, *extra)
            )
        if cost_reason or blast is not None:
            fields["expire_at_ms"] = now + ttl_ms
        if self.dispatcher is None:
            raise RuntimeError("the executor has no queue to send approval requests to")
        dispatcher = self.dispatcher
        notify: list[OutboxRecord] = []

        def mark(j: Job) -> Job | None:
            ours = j.state in (PENDING, PENDING_APPROVAL) and not j.approval_requested_ms
            return replace(j, **fields) if ours else None

        def records(j: Job) -> list[OutboxRecord]:
            notify[:] = [
                dispatcher.record(j.job_id, outbox.NOTIFY, self.approvals_topic, until_done=True)
            ]
            return notify

        # A statement that only the cost guard sent for approval counts against its
        # principal's open requests now (policy-bound ones were counted by the ingress).
        limit = self.policy.approvals.max_pending_per_principal
        quota = OpenRequestQuota(job.owner, limit, now) if job.state == PENDING else None

        def requested(j: Job) -> EventItems:
            return [
                (
                    "approval_requested",
                    {
                        "reasons": list(j.classification.reasons),
                        "bytes_estimate": estimate,
                        "rewritten_sql": fields["rewritten_sql"],
                        "blast_radius": blast,
                    },
                )
            ]

        try:
            marked = self.store.transition(
                job.job_id,
                mark,
                dispatch=records,
                quota=quota,
                record=self._recording(job, requested),
            )
        except QuotaFull as full:
            message = quota_message(job.owner, len(full.open_job_ids), limit)
            return self._fail(job, QuotaExceeded(message))
        if not marked.changed:
            return "awaiting-approval"
        # The request and its notification were committed together; if this publish fails
        # the outbox reconciler sends it (the approvers see the request meanwhile).
        dispatcher.send_all(notify)
        return "sent-for-approval"

    def _approval_problem(self, job: Job) -> str | None:
        """Why the job's approval does not cover the statement as stored now (None: it does)."""
        from bqgate.sql.classify import classify

        verdict = classify(
            job.sql,
            policy=self.policy,
            principal=job.owner,
            groups=job.groups,
            **classify_defaults(job),
        )
        if verdict.decision == "block":
            return "the statement is now blocked: " + "; ".join(verdict.reasons)
        return check_binding(job, verdict.statement_hash)

    def _execute(self, stored: Job, plan: Rewrite, *, create: OutboxRecord | None = None) -> str:
        """Claim the job and run it exactly once. ``create``: ``stored`` is not stored yet
        (:meth:`accept`): the claim creates it, with this ``accepted`` record and its
        request's session events, in the same one commit (a duplicate id takes nothing)."""
        job_id = stored.job_id
        now = self._now_ms()
        # The BigQuery job it runs as (a redelivery attaches to it): the one its first
        # claim stored; a handed-over read's own (jobs.handed_over_job_id).
        wjid = stored.warehouse_job_id or (
            handed_over_job_id(stored) if create is not None else warehouse_job_id(job_id)
        )
        rewritten = plan.sql if plan.changed else None

        def claim(job: Job) -> Job | None:
            if job.state not in (PENDING, RUNNING):
                return None  # DONE (nothing to do) or awaiting approval (not ours yet)
            if job.warehouse_job_id and job.warehouse_job_id != wjid:
                return None  # another delivery claimed it meanwhile, and runs it
            return replace(
                job,
                state=RUNNING,
                started_ms=job.started_ms or now,
                warehouse_job_id=wjid,
                executions=job.executions + 1,
                rewritten_sql=rewritten,
            )

        def started(j: Job) -> EventItems:
            return [
                (
                    "execution_started",
                    {
                        "warehouse_job_id": wjid,
                        "attempt": j.executions,
                        # The statement as it runs (the session keeps both; never the key,
                        # which travels as query parameters only).
                        "rewritten_sql": rewritten,
                        "masked_at_source": [list(m) for m in plan.masked],
                    },
                )
            ]

        def claim_it() -> Transition:
            # The claim and its session event in one commit.
            if create is None:
                return self.store.transition(job_id, claim, record=self._recording(stored, started))
            claimed_job = claim(stored)
            if claimed_job is None:
                return Transition.unchanged(stored)
            try:
                # Created as claimed: the request, its classification and the execution's
                # start are one append to the session, in the commit that creates the job.
                self.store.create(
                    claimed_job,
                    dispatch=[create],
                    record=self._recording(
                        claimed_job, lambda j: [*accepted_events(j), *started(j)]
                    ),
                )
            except Duplicate:
                return Transition.unchanged(stored)  # the id is taken: nothing here is ours
            except Unavailable as err:
                raise _NotCreated("the job store did not answer", store_down=True) from err
            return Transition(stored, claimed_job, True)

        def run_it() -> QueryOutcome:
            return self.warehouse.run(
                wjid,
                plan.sql,
                default_dataset=stored.default_dataset,
                labels={
                    "bqgate_job": label_value(job_id),
                    "bqgate_principal": label_value(stored.owner),
                },
                maximum_bytes_billed=lower_cap(
                    self.policy.cost.max_bytes_billed, stored.maximum_bytes_billed
                ),
                query_parameters=plan.parameters,
                priority=stored.priority,
            )

        t0 = time.perf_counter()
        if stored.classification.read_only:
            # A read changes nothing, so it starts on BigQuery while its claim commits: the
            # claim's round trip is off the agent's path. Its result is kept only if the
            # claim took the job (a job that ended meanwhile, e.g. cancelled, keeps its end;
            # the read's rows are dropped); the claim always commits before the job's end.
            claiming = self._claimer().submit(claim_it)
            try:
                outcome = run_it()
            except BqgateError as err:
                claimed = claiming.result()
                if not self._took(claimed, create):
                    return "skipped"
                if err.transient:
                    raise  # the redelivery attaches to the same BigQuery job id
                return self._fail(claimed.after, err)
            except BaseException:
                futures.wait([claiming])  # nothing else writes the job meanwhile
                raise
            claimed = claiming.result()
            if not self._took(claimed, create):
                return "skipped"
            job = claimed.after
        else:
            # Anything that may write: claimed first, then run.
            claimed = claim_it()
            if not self._took(claimed, create):
                return "skipped"
            job = claimed.after
            t0 = time.perf_counter()
            try:
                outcome = run_it()
            except BqgateError as err:
                if err.transient:
                    raise  # the redelivery attaches to the same BigQuery job id
                return self._fail(job, err)
        run_ms = (time.perf_counter() - t0) * 1000
        if outcome.error:
            return self._fail(job, outcome.error)
        return self._store_results(job, wjid, outcome, run_ms, plan)

    def _took(self, claimed: Transition, create: OutboxRecord | None) -> bool:
        """Whether the claim took the job (with ``create``: this call then created it)."""
        if claimed.changed and create is not None:
            self._local.created = True
        return claimed.changed

    def _answer_dry_run(self, job: Job, plan: Rewrite) -> str:
        """Answer a client's dry run like BigQuery (bytes, schema, statement type, tables)
        from the dry run of the statement as it would run (rewritten); run nothing."""
        info = self._dry_run(job, plan.sql, plan.parameters)
        if info is None:
            return "failed"
        problem = self._disagreement(job, info)
        if problem:
            return self._fail(job, AccessDenied(f"Blocked by bqgate policy: {problem}"))
        now = self._now_ms()
        fields: dict[str, Any] = {
            "state": DONE,
            "started_ms": now,
            "ended_ms": now,
            "schema": [dict(f) for f in info.schema],
            "statement_type": info.statement_type,
            "total_bytes_processed": info.total_bytes_processed,
            "referenced_tables": sorted(info.referenced_tables or job.classification.tables),
        }

        def answer(j: Job) -> Job | None:
            return None if j.done else replace(j, **fields)

        complete = self._handoff()
        ended = self.store.transition(
            job.job_id,
            answer,
            record=self._recording(
                job, lambda j: [("dry_run", {"total_bytes_processed": info.total_bytes_processed})]
            ),
            complete=complete,
        )
        if ended.changed:
            self._finished(ended.after, completed=bool(complete))
        return "dry-run"

    def _fail(self, job: Job, error: BqgateError) -> str:
        """Finish the job with a BigQuery-shaped error whose message carries no data, and
        whose reason and status suit a finished job (:func:`bqgate.errors.stored`: never a
        reason a client retries, never a 5xx)."""
        from bqgate.scrub import scrub

        err = stored(error, scrub=lambda m: scrub(m, self.warehouse_project, job.project))
        now = self._now_ms()

        def end(j: Job) -> Job | None:
            return None if j.done else replace(j, state=DONE, ended_ms=now, error=err)

        complete = self._handoff()
        ended = self.store.transition(
            job.job_id,
            end,
            record=self._recording(job, lambda j: [("execution_finished", {"error": err})]),
            complete=complete,
        )
        if ended.changed:
            self._finished(ended.after, completed=bool(complete))
        return "failed"

    def masker_for(
        self, job: Job, schema: Sequence[Mapping[str, Any]], plan: Rewrite | None = None
    ) -> Masker:
        """Plan the second line of masking for the job's output columns (fail closed).

        Columns whose sensitive sources were masked at the source by the rewrite are
        checked, not masked again (one stable format per strategy); anything else that
        derives from a sensitive column is masked by lineage. When none of the tables the
        job reads has a sensitive column, no output can derive from one: lineage is
        skipped (content detectors still run).
        """
        # sqlglot-heavy modules load with the first job, not with the function.
        from bqgate.masking import ColumnMask, Masker, MaskPlan, plan_masking
        from bqgate.sql.lineage import output_lineage

        groups = self.policy.groups_for(job.owner, job.groups)

        def sensitive_for(fqn: str) -> Mapping[str, str]:
            columns = self.policy.sensitive_for(fqn)
            if not columns:
                return columns
            granted = self.policy.unmasked_for(job.owner, groups, fqn)
            if "*" in granted:
                return {}
            return {c: s for c, s in columns.items() if c not in granted}

        tables = job.classification.tables
        if (
            tables
            and job.classification.decision != "block"
            and not any(sensitive_for(t) for t in tables)
        ):
            plan_ = MaskPlan(
                tuple(
                    ColumnMask(str(f.get("name", "")), None, "no sensitive source table")
                    for f in schema
                )
            )
            return Masker(plan_, schema, hmac_key=self.hmac_key)
        default = job.default_dataset or {}
        lineage = output_lineage(
            job.sql,
            schemas=self.warehouse.table_schema,
            default_project=job.project,
            default_dataset=(
                f"{default.get('projectId') or job.project}.{default['datasetId']}"
                if default.get("datasetId")
                else None
            ),
        )
        premasked = plan.masked_sources if plan is not None else frozenset()
        mask_plan = plan_masking(lineage, schema, sensitive_for, premasked=premasked)
        return Masker(mask_plan, schema, hmac_key=self.hmac_key)

    def _store_results(
        self, job: Job, wjid: str, outcome: QueryOutcome, run_ms: float, plan: Rewrite
    ) -> str:
        """Mask the result as it streams from BigQuery and end the job.

        A result whose masked rows encode to at most ``inline_result_bytes`` is held: its
        pages are written in the same commit as the job's DONE state and its session
        events, and the rows go back in the direct call's answer. A larger one is written
        page by page as it arrives (bounded memory), then the job ends in one commit.
        """
        t0 = time.perf_counter()
        cap = self.policy.cost.max_result_rows
        schema = outcome.schema
        page_starts: list[int] = []
        masking: list[dict[str, Any]] = []
        total = 0
        truncated = outcome.total_rows > cap
        sample: list[list[Any]] = []
        sample_cap = self.policy.sessions.record_rows
        held: list[Page] = []  # pages written with the DONE commit (an inline result)
        answer_rows: list[dict[str, Any]] = []  # an inline result's rows, as the agent gets them
        inline = self.config.inline_result_bytes > 0  # still small enough to answer inline
        inline_bytes = 0
        first_cut = job.first_page_rows if job.first_page_rows and job.first_page_rows > 0 else None
        if schema:
            masker = self.masker_for(job, schema, plan)
            masking = masker.plan.describe()
            buf: list[str] = []
            buf_bytes = 0
            buf_start = 0

            def write(page: Page) -> None:
                self.store.put_page(job.job_id, page.index, page.start, page.rows_json)

            def flush() -> None:
                nonlocal buf, buf_bytes
                if buf:
                    page_starts.append(buf_start)
                    page = Page(len(page_starts) - 1, buf_start, "[" + ",".join(buf) + "]")
                    if inline:
                        held.append(page)
                    else:
                        write(page)
                buf, buf_bytes = [], 0

            def add(part: list[list[Any]]) -> None:
                """Append rows to the page being filled: one encoding for the whole part
                when it fits (the common case), row by row (to cut pages at their byte
                limit) otherwise."""
                nonlocal buf_start, buf_bytes, total, inline, inline_bytes
                if not part:
                    return
                chunk = _ENCODE(part)[1:-1]
                if inline:
                    inline_bytes += len(chunk) + 1
                    if inline_bytes > self.config.inline_result_bytes:
                        # Too big to answer inline: stream the pages from here on.
                        inline = False
                        for page in held:
                            write(page)
                        held.clear()
                        answer_rows.clear()
                if buf_bytes + len(chunk) <= self.config.page_bytes:
                    pieces = [(chunk, len(part))]
                else:
                    pieces = [(_ENCODE(row), 1) for row in part]
                for encoded, count in pieces:
                    if buf and buf_bytes + len(encoded) > self.config.page_bytes:
                        flush()
                        buf_start = total
                    buf.append(encoded)
                    buf_bytes += len(encoded) + 1
                    total += count

            for rows in self.warehouse.pages(wjid, page_size=self.config.fetch_rows, max_rows=cap):
                masked_rows = masker.mask_rows(rows)
                if inline:
                    # BigQuery's own rows where the masks changed nothing, built otherwise.
                    answer_rows.extend(rest_rows(masked_rows, rows, schema))
                if len(sample) < sample_cap:
                    sample.extend(masked_rows[: sample_cap - len(sample)])
                cut = first_cut - total if first_cut is not None and not page_starts else 0
                if 0 < cut <= len(masked_rows):
                    # The first page ends where the client's first answer does.
                    add(masked_rows[:cut])
                    flush()
                    buf_start = total
                    add(masked_rows[cut:])
                else:
                    add(masked_rows)
            flush()
            hits = {f"{c}:{d}": n for (c, d), n in masker.hits.items()}
        else:
            hits = {}
        now = self._now_ms()
        timings = {
            **job.timings,
            "warehouse_ms": round(run_ms, 3),
            "results_ms": round((time.perf_counter() - t0) * 1000, 3),
        }
        fields: dict[str, Any] = {
            "state": DONE,
            "ended_ms": now,
            "schema": schema if schema else None,
            "total_rows": total if schema else None,
            "page_starts": page_starts,
            "truncated": truncated,
            "statement_type": outcome.statement_type,
            "num_dml_affected_rows": outcome.num_dml_affected_rows,
            "total_bytes_processed": outcome.total_bytes_processed,
            "masking": masking,
            "timings": timings,
            "detector_hits": hits,
        }
        events: EventItems = [
            (
                "execution_finished",
                {
                    "warehouse_job_id": wjid,
                    "total_bytes_processed": outcome.total_bytes_processed,
                    "duration_ms": timings["warehouse_ms"],
                    "error": None,
                },
            ),
            (
                "result",
                {
                    "schema": schema,
                    "total_rows": total,
                    "truncated": truncated,
                    "masking": masking,
                    "detector_hits": hits,
                    "rows": sample,
                },
            ),
        ]

        def end(j: Job) -> Job | None:
            return None if j.done else replace(j, **fields)

        # One commit: the job DONE, its session events (the agent cannot read rows the
        # session record does not hold), an inline result's pages, and the direct call's
        # hand-off finished. A failed commit raises; the redelivery runs this again.
        complete = self._handoff()
        ended = self.store.transition(
            job.job_id,
            end,
            record=self._recording(job, lambda j: events),
            pages=held,
            complete=complete,
        )
        if ended.changed:
            rest: tuple[RestChunk, ...] = ()
            if schema and inline:
                # The agent's pages as BigQuery's own JSON text: the ingress answers with it
                # as is. Pieces of the client's page size (its first answer's, else one
                # default page) so that each answer is whole pieces.
                step = first_cut or DEFAULT_PAGE_ROWS
                rest = tuple(
                    (at, len(part), codec.dumps_bytes(part))
                    for at in range(0, len(answer_rows), step)
                    for part in (answer_rows[at : at + step],)
                )
            self._finished(ended.after, rest=rest, completed=bool(complete))
        return "done"


__all__ = ["DONE", "Executor", "ExecutorConfig", "label_value"]
