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
from typing import Any

from bqgate.errors import BqgateError
from bqgate.jobs import DONE, PENDING, RUNNING, Job, warehouse_job_id
from bqgate.masking import Masker, plan_masking
from bqgate.policy import Policy
from bqgate.ports import JobStore, QueryOutcome, Warehouse
from bqgate.service.gateway import Recorder
from bqgate.sql.lineage import output_lineage

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


@dataclass
class ExecutorConfig:
    page_bytes: int = PAGE_BYTES
    fetch_rows: int = FETCH_ROWS


class Executor:
    def __init__(self, *, store: JobStore, warehouse: Warehouse, policy: Policy,
                 hmac_key: bytes, recorder: Recorder | None = None,
                 config: ExecutorConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.warehouse = warehouse
        self.policy = policy
        self.hmac_key = hmac_key
        self.recorder = recorder
        self.config = config or ExecutorConfig()
        self.clock = clock
        self._schemas: dict[str, list[dict[str, Any]]] = {}

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _record(self, job: Job, kind: str, data: Mapping[str, Any]) -> None:
        if self.recorder is not None:
            self.recorder.record(job, kind, data)

    def run(self, job_id: str) -> str:
        """Run one job to completion. Returns what happened (for logs and tests)."""
        now = self._now_ms()
        wjid = warehouse_job_id(job_id)
        claimed: dict[str, bool] = {"ok": False}

        def claim(job: Job) -> dict[str, Any] | None:
            claimed["ok"] = False
            if job.state not in (PENDING, RUNNING):
                return None  # DONE (nothing to do) or awaiting approval (not ours yet)
            claimed["ok"] = True
            return {"state": RUNNING, "started_ms": job.started_ms or now,
                    "warehouse_job_id": wjid, "executions": job.executions + 1}

        if self.store.get(job_id) is None:
            log.warning("execute message for unknown job %s: dropped", job_id)
            return "unknown"
        job = self.store.transition(job_id, claim)
        if not claimed["ok"]:
            return "skipped"
        self._record(job, "execution_started", {"warehouse_job_id": wjid,
                                                "attempt": job.executions})
        t0 = time.perf_counter()
        try:
            outcome = self.warehouse.run(
                wjid, job.sql,
                default_dataset=job.default_dataset,
                labels={"bqgate_job": label_value(job.job_id),
                        "bqgate_principal": label_value(job.owner)},
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
        err = {"reason": error.get("reason", "invalidQuery"),
               "message": error.get("message", "the query failed")}
        now = self._now_ms()
        self.store.transition(job.job_id, lambda j: None if j.done else
                              {"state": DONE, "ended_ms": now, "error": err})
        self._record(job, "execution_finished", {"error": err})
        return "failed"

    def _schema_of(self, table: str) -> list[dict[str, Any]]:
        if table not in self._schemas:
            self._schemas[table] = self.warehouse.table_schema(table)
        return self._schemas[table]

    def masker_for(self, job: Job, schema: Sequence[Mapping[str, Any]]) -> Masker:
        """Plan masking for the job's output columns by lineage (fail closed)."""
        default = job.default_dataset or {}
        lineage = output_lineage(
            job.sql, schemas=self._schema_of,
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
                    self.store.put_page(job.job_id, len(page_starts) - 1, buf_start,
                                        "[" + ",".join(buf) + "]")
                buf, buf_bytes = [], 0

            for rows in self.warehouse.pages(wjid, page_size=self.config.fetch_rows, max_rows=cap):
                for row in masker.mask_rows(rows):
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
        timings = {**job.timings, "warehouse_ms": round(run_ms, 3),
                   "results_ms": round((time.perf_counter() - t0) * 1000, 3)}
        fields = {
            "state": DONE, "ended_ms": now, "schema": schema if schema else None,
            "total_rows": total if schema else None, "page_starts": page_starts,
            "truncated": truncated, "statement_type": outcome.statement_type,
            "num_dml_affected_rows": outcome.num_dml_affected_rows,
            "total_bytes_processed": outcome.total_bytes_processed,
            "masking": masking, "timings": timings, "detector_hits": hits,
        }
        done = self.store.transition(job.job_id, lambda j: None if j.done else fields)
        self._record(done, "execution_finished", {
            "warehouse_job_id": wjid, "total_bytes_processed": outcome.total_bytes_processed,
            "duration_ms": timings["warehouse_ms"], "error": None})
        self._record(done, "result", {"schema": schema, "total_rows": total,
                                      "truncated": truncated, "masking": masking,
                                      "detector_hits": hits})
        return "done"


__all__ = ["DONE", "Executor", "ExecutorConfig", "label_value"]
