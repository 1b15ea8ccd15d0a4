"""The executor core: the only code that runs statements on BigQuery.

``Executor.run(job_id)`` is called by the Pub/Sub-triggered function for every
execute message and may be called by a direct fast path too. It is idempotent:

* the job is claimed in a store transaction; a DONE job is never run again;
* the BigQuery job id is derived from the gateway job id
  (:func:`bqgate.jobs.warehouse_job_id`), so a redelivery or a retry after a crash
  attaches to the same BigQuery job instead of running the statement twice;
* result pages have deterministic ids, so rewriting them is harmless.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bqgate import outbox
from bqgate.approvals import check_binding, needs_approval, quota_message
from bqgate.errors import BqgateError
from bqgate.jobs import DONE, PENDING, PENDING_APPROVAL, RUNNING, Job, warehouse_job_id
from bqgate.outbox import OutboxRecord
from bqgate.policy import Policy
from bqgate.ports import JobStore, OpenRequestQuota, QueryOutcome, Queue, QuotaFull, Warehouse
from bqgate.service.dispatch import REDISPATCH_AFTER_MS, Dispatcher
from bqgate.service.gateway import NullRecorder, Recorder, record_all

if TYPE_CHECKING:
    from bqgate.masking import Masker

log = logging.getLogger("bqgate.executor")

#: Firestore documents hold at most 1 MiB; keep each page's JSON well under it.
PAGE_BYTES = 512 * 1024
#: Rows fetched from BigQuery per call.
FETCH_ROWS = 5_000

_LABEL_BAD = re.compile(r"[^a-z0-9_-]")


def label_value(text: str) -> str:
    """A BigQuery label value (lower-case letters, digits, _ and -, at most 63).

    >>> label_value("Agent@Demo-Project.iam.gserviceaccount.com")
    'agent_demo-project_iam_gserviceaccount_com'
    """
    return _LABEL_BAD.sub("_", text.lower())[:63]


def cost_decision(estimate: int, policy: Policy) -> tuple[str, str]:
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


@dataclass
class ExecutorConfig:
    page_bytes: int = PAGE_BYTES
    fetch_rows: int = FETCH_ROWS
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
            Dispatcher(store=store, queue=queue, clock=clock,
                       redispatch_after_ms=self.config.redispatch_after_ms)
            if queue is not None else None
        )

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _record(self, job: Job, kind: str, data: Mapping[str, Any]) -> None:
        if self.recorder is not None:
            self.recorder.record(job, kind, data)

    def run(self, job_id: str) -> str:
        """Handle one execute message for ``job_id``. Returns what happened (for logs and tests).

        * an approval-bound job not yet sent for approval is dry-run (cost guard, byte
          estimate) and published to the approvals topic;
        * an allowed job is dry-run; over the policy's thresholds it is blocked or sent
          for approval instead of running;
        * an approved job has its approval binding re-checked against the statement as
          stored now;
        * then the job is claimed in a transaction and run exactly once.
        """
        job = self.store.get(job_id)
        if job is None:
            log.warning("execute message for unknown job %s: dropped", job_id)
            return "unknown"
        if job.state == DONE:
            return "skipped"
        if job.state == PENDING_APPROVAL:
            return self._request_approval(job, None)
        if needs_approval(job):
            problem = self._approval_problem(job)
            if problem:
                return self._fail(
                    job,
                    {
                        "reason": "accessDenied",
                        "message": f"Approval does not match this job: {problem}",
                    },
                )
        elif job.state == PENDING:
            estimate = self._upper_bound(job)
            if estimate is None or cost_decision(estimate, self.policy)[0] != "allow":
                estimate = self._estimate(job)  # the bound does not settle it: ask BigQuery
            if estimate is None:
                return "failed"
            decision, why = cost_decision(estimate, self.policy)
            if decision == "block":
                return self._fail(job, {"reason": "quotaExceeded", "message": why})
            if decision == "approve":
                return self._request_approval(job, why, estimate)
        return self._execute(job_id)

    def _upper_bound(self, job: Job) -> int | None:
        """Bytes the job can process at most: the sum of its tables' stored sizes.

        A statement cannot scan more than every table it references, so when that sum is
        within the policy's limits the dry run is skipped. None (dry run needed) when a
        table's size does not bound its scan (views, external tables, wildcards, table
        functions, INFORMATION_SCHEMA) or the classifier listed no tables.
        """
        tables = job.classification.get("tables")
        if not isinstance(tables, list) or not tables:
            return None
        total = 0
        for table in tables:
            size = self.warehouse.table_size(str(table))
            if size is None:
                return None
            total += size
        return total

    def _estimate(self, job: Job) -> int | None:
        """Dry-run the job (None, with the job failed, if BigQuery rejects it)."""
        t0 = time.perf_counter()
        try:
            estimate = self.warehouse.dry_run(
                job.sql, default_dataset=job.default_dataset, query_parameters=job.query_parameters
            )
        except BqgateError as err:
            self._fail(job, {"reason": err.reason, "message": err.message})
            return None
        job.timings["dry_run_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return estimate

    def _request_approval(
        self, job: Job, cost_reason: str | None, estimate: int | None = None
    ) -> str:
        if job.approval_requested_ms:
            return "awaiting-approval"  # a redelivery: the request is already out
        if estimate is None:
            estimate = self._estimate(job)
            if estimate is None:
                return "failed"
            decision, why = cost_decision(estimate, self.policy)
            if decision == "block":
                return self._fail(job, {"reason": "quotaExceeded", "message": why})
        now = self._now_ms()
        ttl_ms = self.policy.approvals.ttl_seconds * 1000
        fields: dict[str, Any] = {
            "state": PENDING_APPROVAL,
            "needs_approval": True,
            "bytes_estimate": estimate,
            "approval_requested_ms": now,
            "timings": job.timings,
        }
        if cost_reason:
            verdict = dict(job.classification)
            verdict["reasons"] = [*verdict.get("reasons", []), cost_reason]
            fields["classification"] = verdict
            fields["expire_at_ms"] = now + ttl_ms
        won = {"ok": False}
        if self.dispatcher is None:
            raise RuntimeError("the executor has no queue to send approval requests to")
        dispatcher = self.dispatcher
        notify: list[OutboxRecord] = []

        def mark(j: Job) -> dict[str, Any] | None:
            won["ok"] = j.state in (PENDING, PENDING_APPROVAL) and not j.approval_requested_ms
            return fields if won["ok"] else None

        def records(j: Job) -> list[OutboxRecord]:
            notify[:] = [dispatcher.record(j.job_id, outbox.NOTIFY, self.approvals_topic,
                                           until_done=True)]
            return notify

        # A statement that only the cost guard sent for approval counts against its
        # principal's open requests now (policy-bound ones were counted by the ingress).
        limit = self.policy.approvals.max_pending_per_principal
        quota = OpenRequestQuota(job.owner, limit, now) if job.state == PENDING else None
        try:
            job = self.store.transition(job.job_id, mark, dispatch=records, quota=quota)
        except QuotaFull as full:
            message = quota_message(job.owner, len(full.open_job_ids), limit)
            return self._fail(job, {"reason": "quotaExceeded", "message": message})
        if not won["ok"]:
            return "awaiting-approval"
        self._record(
            job,
            "approval_requested",
            {"reasons": job.classification.get("reasons"), "bytes_estimate": estimate},
        )
        # The request and its notification were committed together; if this publish fails
        # the outbox reconciler sends it (the approvers see the request meanwhile).
        dispatcher.send_all(notify)
        return "sent-for-approval"

    def _approval_problem(self, job: Job) -> str | None:
        """Why the job's approval does not cover the statement as stored now (None: it does)."""
        from bqgate.sql.classify import classify

        default = job.default_dataset or {}
        verdict = classify(
            job.sql,
            policy=self.policy,
            principal=job.owner,
            groups=job.groups,
            default_project=default.get("projectId") or job.project,
            default_dataset=default.get("datasetId"),
        )
        if verdict.decision == "block":
            return "the statement is now blocked: " + "; ".join(verdict.reasons)
        return check_binding(job, verdict.statement_hash)

    def _execute(self, job_id: str) -> str:
        now = self._now_ms()
        wjid = warehouse_job_id(job_id)
        claimed: dict[str, bool] = {"ok": False}

        def claim(job: Job) -> dict[str, Any] | None:
            claimed["ok"] = False
            if job.state not in (PENDING, RUNNING):
                return None  # DONE (nothing to do) or awaiting approval (not ours yet)
            claimed["ok"] = True
            return {
                "state": RUNNING,
                "started_ms": job.started_ms or now,
                "warehouse_job_id": wjid,
                "executions": job.executions + 1,
            }

        job = self.store.transition(job_id, claim)
        if not claimed["ok"]:
            return "skipped"
        self._record(
            job, "execution_started", {"warehouse_job_id": wjid, "attempt": job.executions}
        )
        t0 = time.perf_counter()
        try:
            outcome = self.warehouse.run(
                wjid,
                job.sql,
                default_dataset=job.default_dataset,
                labels={
                    "bqgate_job": label_value(job.job_id),
                    "bqgate_principal": label_value(job.owner),
                },
                maximum_bytes_billed=self.policy.cost.max_bytes_billed,
                query_parameters=job.query_parameters,
            )
        except BqgateError as err:
            return self._fail(job, {"reason": err.reason, "message": err.message})
        run_ms = (time.perf_counter() - t0) * 1000
        if outcome.error:
            return self._fail(job, outcome.error)
        return self._store_results(job, wjid, outcome, run_ms)

    def _fail(self, job: Job, error: Mapping[str, str]) -> str:
        err = {
            "reason": error.get("reason", "invalidQuery"),
            "message": error.get("message", "the query failed"),
        }
        now = self._now_ms()
        self.store.transition(
            job.job_id, lambda j: None if j.done else {"state": DONE, "ended_ms": now, "error": err}
        )
        self._record(job, "execution_finished", {"error": err})
        return "failed"

    def masker_for(self, job: Job, schema: Sequence[Mapping[str, Any]]) -> Masker:
        """Plan masking for the job's output columns by lineage (fail closed).

        When none of the tables the classifier resolved has a sensitive column, no output
        can derive from one: lineage is skipped (content detectors still run).
        """
        # sqlglot-heavy modules load with the first job, not with the function.
        from bqgate.masking import ColumnMask, Masker, MaskPlan, plan_masking
        from bqgate.sql.lineage import output_lineage

        tables = job.classification.get("tables")
        if (
            isinstance(tables, list)
            and tables
            and job.classification.get("decision") in ("allow", "approve")
            and not any(self.policy.sensitive_for(t) for t in tables)
        ):
            plan = MaskPlan(
                tuple(
                    ColumnMask(str(f.get("name", "")), None, "no sensitive source table")
                    for f in schema
                )
            )
            return Masker(plan, schema, hmac_key=self.hmac_key)
        default = job.default_dataset or {}
        lineage = output_lineage(
            job.sql,
            schemas=self.warehouse.table_schema,
            default_project=default.get("projectId") or job.project,
            default_dataset=default.get("datasetId"),
        )
        plan = plan_masking(lineage, schema, self.policy.sensitive_for)
        return Masker(plan, schema, hmac_key=self.hmac_key)

    def _store_results(self, job: Job, wjid: str, outcome: QueryOutcome, run_ms: float) -> str:
        t0 = time.perf_counter()
        cap = self.policy.cost.max_result_rows
        schema = outcome.schema
        page_starts: list[int] = []
        masking: list[dict[str, Any]] = []
        total = 0
        truncated = outcome.total_rows > cap
        sample: list[list[Any]] = []
        sample_cap = self.policy.sessions.record_rows
        if schema:
            masker = self.masker_for(job, schema)
            masking = masker.plan.describe()
            buf: list[str] = []
            buf_bytes = 0
            buf_start = 0

            def flush() -> None:
                nonlocal buf, buf_bytes
                if buf:
                    page_starts.append(buf_start)
                    self.store.put_page(
                        job.job_id, len(page_starts) - 1, buf_start, "[" + ",".join(buf) + "]"
                    )
                buf, buf_bytes = [], 0

            for rows in self.warehouse.pages(wjid, page_size=self.config.fetch_rows, max_rows=cap):
                masked_rows = masker.mask_rows(rows)
                if len(sample) < sample_cap:
                    sample.extend(masked_rows[: sample_cap - len(sample)])
                for row in masked_rows:
                    encoded = json.dumps(row, separators=(",", ":"))
                    if buf and buf_bytes + len(encoded) > self.config.page_bytes:
                        flush()
                        buf_start = total
                    buf.append(encoded)
                    buf_bytes += len(encoded) + 1
                    total += 1
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
        fields = {
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
        # Record before the job is marked DONE: the agent cannot read rows the session record
        # does not hold (a failed write raises, and the redelivery runs this again).
        record_all(self.recorder or NullRecorder(), job, [
            ("execution_finished", {
                "warehouse_job_id": wjid,
                "total_bytes_processed": outcome.total_bytes_processed,
                "duration_ms": timings["warehouse_ms"],
                "error": None,
            }),
            ("result", {
                "schema": schema,
                "total_rows": total,
                "truncated": truncated,
                "masking": masking,
                "detector_hits": hits,
                "rows": sample,
            }),
        ])
        self.store.transition(job.job_id, lambda j: None if j.done else fields)
        return "done"


__all__ = ["DONE", "Executor", "ExecutorConfig", "label_value"]
