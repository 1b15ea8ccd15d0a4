"""The sweeper: what makes every job end, even when a message or a process was lost.

Cloud Scheduler calls the sweeper function every minute (the dev stack runs the same
function and calls it every few seconds). One :meth:`Sweeper.sweep`:

1. **reconciles the outbox**: re-publishes every hand-off not marked sent after its
   deadline (bqgate.service.dispatch), and fails a job whose hand-off could not be made
   for :data:`bqgate.outbox.GIVE_UP_MS`;
2. **expires stale approval requests** (the gateway also expires them lazily when the
   agent polls) and has their Slack messages closed (buttons removed, "Expired");
3. **fails orphaned RUNNING jobs**: a job RUNNING longer than ``running_deadline_ms``
   lost its executor; it ends with a ``timeout`` error. A late executor is harmless: its
   claim refuses a DONE job, and its results never overwrite the failure.

The same function consumes the dead-letter topics (Pub/Sub push): a job whose execute
message died is failed with a clear, non-retryable error; a notification that died is
left to the reconciler (the request is still in ``bqgate approvals list``).

HTTP surface: ``POST /`` (a sweep), ``POST /dead-letter/{execute|approvals}`` (a Pub/Sub
push of a dead letter), ``GET /healthz``.

Pure: talks to ports only.

>>> route_sweeper("POST", "/dead-letter/execute")
('dead-letter', 'execute')
>>> route_sweeper("POST", "/") , route_sweeper("GET", "/dead-letter/x")
(('sweep', None), None)
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from bqgate import approvals as core
from bqgate import outbox
from bqgate.audit.record import EventKind
from bqgate.errors import BqgateError, GatewayFailed, NotFound, from_warehouse, stored
from bqgate.jobs import DONE, PENDING, PENDING_APPROVAL, RUNNING, Job
from bqgate.outbox import OutboxRecord
from bqgate.ports import JobStore, Queue, Recorder
from bqgate.service.dispatch import REDISPATCH_AFTER_MS, Dispatcher
from bqgate.service.http import Response, answered, error_response, health_check, json_object
from bqgate.wire import envelopes

log = logging.getLogger("bqgate.sweeper")

#: A RUNNING job older than this has lost its executor (whose own timeout is 540 s, and a
#: redelivery attaches to the same BigQuery job): the sweeper fails it.
RUNNING_DEADLINE_MS = 20 * 60 * 1000
#: Most jobs (or outbox records) of each kind handled per sweep; the rest wait a minute.
BATCH = 200

_DEAD_LETTER = re.compile(r"^/dead-letter/(execute|approvals)/?$")


def route_sweeper(method: str, path: str) -> tuple[str, str | None] | None:
    """The sweeper handler for a request: ``(name, topic)`` or None."""
    if method.upper() != "POST":
        return None
    if path.rstrip("/") in ("", "/sweep"):
        return "sweep", None
    m = _DEAD_LETTER.match(path)
    return ("dead-letter", m.group(1)) if m else None


@dataclass
class SweeperConfig:
    execute_topic: str = "execute"
    approvals_topic: str = "approvals"
    running_deadline_ms: int = RUNNING_DEADLINE_MS
    redispatch_after_ms: int = REDISPATCH_AFTER_MS
    batch: int = BATCH


def dead_letter_error(job: Job, attempts: int | None) -> BqgateError:
    """The error a job whose execute message died ends with (a reason no client retries).

    >>> job = Job(job_id="j", project="p", location="US", sql="", owner="a")
    >>> dead_letter_error(job, 5).message[:62]
    'bqgate could not run this job: its executor failed on all 5 de'
    """
    tries = f"all {attempts} deliveries" if attempts else "every delivery"
    message = f"bqgate could not run this job: its executor failed on {tries}"
    if job.executions and job.warehouse_job_id:
        message += (
            f". It had started as BigQuery job {job.warehouse_job_id}, whose outcome is "
            "unknown: check before running the statement again"
        )
    else:
        message += ". Nothing ran in BigQuery"
    return GatewayFailed(message)


def orphan_error(deadline_ms: int, job: Job) -> BqgateError:
    """The error of a RUNNING job that outlived the gateway's deadline."""
    message = (
        f"The job did not finish within bqgate's deadline of "
        f"{core.describe_duration(deadline_ms)}: its executor stopped"
    )
    if job.warehouse_job_id:
        message += (
            f"; BigQuery job {job.warehouse_job_id} may have run: check before running "
            "the statement again"
        )
    return from_warehouse("timeout", message)  # BigQuery's own reason for a deadline


def undeliverable_error() -> BqgateError:
    return GatewayFailed(
        "bqgate could not hand this job to its executor within "
        f"{core.describe_duration(outbox.GIVE_UP_MS)}; nothing ran in BigQuery"
    )


class Sweeper:
    def __init__(
        self,
        *,
        store: JobStore,
        queue: Queue,
        config: SweeperConfig | None = None,
        recorder: Recorder | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.config = config or SweeperConfig()
        self.recorder = recorder
        self.clock = clock
        self.dispatcher = Dispatcher(
            store=store,
            queue=queue,
            clock=clock,
            redispatch_after_ms=self.config.redispatch_after_ms,
        )

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _record(self, job: Job, kind: EventKind, data: Mapping[str, Any]) -> None:
        if self.recorder is None:
            return
        try:
            self.recorder.record(job, kind, data)
        except Exception:  # the job's end stands; the next record retries nothing
            log.exception("recording %s for job %s failed", kind, job.job_id)

    # --- the schedule ------------------------------------------------------------

    def sweep(self) -> dict[str, Any]:
        """One pass of everything above; returns what it did (counts)."""
        t0 = time.perf_counter()
        reconciled = self.dispatcher.reconcile(limit=self.config.batch, on_give_up=self._gave_up)
        expired = self.expire_requests()
        orphans = self.fail_orphans()
        done = {
            "outbox": reconciled.to_body(),
            "expired": expired,
            "orphans_failed": orphans,
            "ms": round((time.perf_counter() - t0) * 1000, 1),
        }
        if reconciled.published or reconciled.given_up or expired or orphans:
            log.info("sweep: %s", done)
        return done

    def _end(self, job_id: str, may_end: Callable[[Job], bool], error: BqgateError) -> Job | None:
        """End the job with ``error`` if ``may_end`` still holds in the transaction."""
        now = self._now_ms()
        err = stored(error)

        def end(j: Job) -> Job | None:
            ends = not j.done and may_end(j)
            return replace(j, state=DONE, ended_ms=now, error=dict(err)) if ends else None

        try:
            done = self.store.transition(job_id, end)
        except NotFound:
            return None
        if not done.changed:
            return None
        self._record(done.after, "execution_finished", {"error": dict(err)})
        return done.after

    def _gave_up(self, rec: OutboxRecord) -> None:
        """A hand-off that never happened: the job it was for ends with a clear error."""
        if rec.event not in (outbox.ACCEPTED, outbox.APPROVED):
            return  # a notification: the request expires on its own
        self._end(
            rec.job_id,
            lambda j: j.state in (PENDING, PENDING_APPROVAL) and j.executions == 0,
            undeliverable_error(),
        )

    def expire_requests(self) -> int:
        """Expire every request past its TTL; their Slack messages get closed."""
        now = self._now_ms()
        jobs = self.store.expired_approvals(now_ms=now, limit=self.config.batch)
        return sum(self._expire(job.job_id, now) for job in jobs)

    def _expire(self, job_id: str, now: int) -> bool:
        close: list[OutboxRecord] = []

        def records(j: Job) -> list[OutboxRecord]:
            close[:] = [
                self.dispatcher.record(
                    j.job_id, outbox.CLOSE, self.config.approvals_topic, until_done=True
                )
            ]
            return close

        try:
            done = self.store.transition(job_id, lambda j: core.expire(j, now), dispatch=records)
        except NotFound:
            return False
        if not done.changed:
            return False  # decided or expired by someone else meanwhile
        expired = done.after
        self._record(expired, "expired", {**(expired.error or {}), "by": "sweeper"})
        self.dispatcher.send_all(close)
        return True

    def fail_orphans(self) -> int:
        """Fail every job RUNNING for longer than the deadline."""
        deadline = self.config.running_deadline_ms
        cutoff = self._now_ms() - deadline
        count = 0
        for job in self.store.stale_running(started_before_ms=cutoff, limit=self.config.batch):
            still = self._end(
                job.job_id,
                lambda j: j.state == RUNNING and (j.started_ms or 0) <= cutoff,
                orphan_error(deadline, job),
            )
            count += still is not None
        return count

    # --- dead letters --------------------------------------------------------------

    def dead_letter(self, topic: str, job_id: str, attempts: int | None) -> str:
        """Handle one message that Pub/Sub gave up delivering. Returns what happened."""
        job = self.store.get(job_id)
        if job is None:
            return "unknown"
        if job.done:
            return "already-done"
        if topic == "approvals":
            # Slack (or slack_notify) kept failing: the request stays decidable through the
            # approver API, and the outbox reconciler keeps trying to notify.
            log.warning("notification of job %s dead-lettered; left to the reconciler", job_id)
            return "left-to-reconciler"
        if job.state == PENDING_APPROVAL and job.approval_requested_ms:
            return "awaiting-approval"  # estimated and sent for approval: not stuck
        ended = self._end(
            job_id,
            lambda j: j.state in (PENDING, PENDING_APPROVAL, RUNNING),
            dead_letter_error(job, attempts),
        )
        return "failed" if ended is not None else "already-done"

    # --- HTTP ----------------------------------------------------------------------

    def handle(self, method: str, path: str, body: Mapping[str, Any] | None) -> Response:
        """Answer one request to the sweeper function (``body``: the decoded JSON)."""
        health = health_check("sweeper", method, path)
        if health is not None:
            return health
        found = route_sweeper(method, path)
        if found is None:
            return error_response(NotFound(f"Not found: {method.upper()} {path}"))

        def call(found: tuple[str, str | None] = found) -> Response:
            if found[0] == "sweep":
                return Response(200, self.sweep())
            topic = found[1] or ""
            job_id = envelopes.job_id_of_event(body)
            if job_id is None:
                # Acknowledge: redelivering a malformed message would never fix it.
                log.error("malformed dead letter on %s: dropped", topic)
                return Response(200, {"outcome": "malformed"})
            outcome = self.dead_letter(topic, job_id, envelopes.delivery_attempts(body))
            log.info("dead letter on %s for job %s: %s", topic, job_id, outcome)
            return Response(200, {"job_id": job_id, "outcome": outcome})

        # An unexpected failure answers 500: Pub/Sub (or the scheduler) tries again.
        return answered("sweeper", method, path, call, what="failed")


class SweeperApp:
    """The sweeper function's HTTP entry: health checks build nothing; the first real
    request builds the service (``factory``)."""

    def __init__(self, factory: Callable[[], Sweeper]) -> None:
        self._factory = factory

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Answer one request (a dead letter's body is read as JSON, when sent as JSON)."""
        return health_check("sweeper", method, path) or answered(
            "sweeper",
            method,
            path,
            lambda: self._factory().handle(method, path, json_object(headers, body)),
            what="failed",
        )


__all__ = [
    "RUNNING_DEADLINE_MS",
    "Sweeper",
    "SweeperApp",
    "SweeperConfig",
    "dead_letter_error",
    "orphan_error",
    "route_sweeper",
]
