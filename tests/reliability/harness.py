"""The reliability suite's machinery: agents, jobs with a visible effect, faults, invariants.

Everything runs against a dev stack of the suite's own (real emulators, real functions under
functions-framework, supervised). A *scenario* submits jobs, injects a fault, lets the stack
recover, then checks the invariants on what it submitted:

* **terminal**: every job the gateway accepted reaches DONE within the bound (60 s);
* **once**: no statement ran twice: each INSERT's marker row is in BigQuery at most once
  (exactly once if the job succeeded, never if it failed), and no job records more than
  one successful execution;
* **recorded**: no record is lost: every accepted job is in Firestore, and its session holds
  its request, classification and an event for how it ended;
* **chain**: every session of the scenario verifies (MAC chain, head, checkpoints).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
from bqgate.adapters.anchor_sinks import FolderSink
from bqgate.adapters.client import DevIdTokenCredentials
from bqgate.adapters.firestore_audit import FirestoreRecorder, open_client
from bqgate.adapters.firestore_store import FirestoreJobStore
from bqgate.anchors import AnchorIndex
from bqgate.chain import Keyring, load_or_create_dev_key
from bqgate.dev.issuer import OIDC_SUBDIR, load_secret
from bqgate.dev.stack import PROJECT, Stack
from bqgate.jobs import Job
from bqgate.verification import verify
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from google.cloud.bigquery.retry import DEFAULT_RETRY

#: ``short`` (what ``nox -s tests`` and CI run) or ``full`` (``nox -s reliability``).
MODE = os.environ.get("BQGATE_RELIABILITY", "short")
BOUND_S = 60.0
#: End events: a job whose session holds none of these never got an ending recorded.
ENDINGS = {"result", "execution_finished", "blocked", "denied", "expired"}
SUBMIT_RETRY = DEFAULT_RETRY.with_deadline(30)


def direct(stack: Stack) -> bigquery.Client:
    """Straight to the BigQuery emulator: the ground truth the invariants check against."""
    return bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=stack.url("bigquery")),
    )


def agent_client(stack: Stack, principal: str) -> bigquery.Client:
    """The standard BigQuery client as ``principal`` (group ai-coding-agents), via the gateway."""
    creds = DevIdTokenCredentials(
        stack.url("oidc_issuer"),
        principal,
        groups=("ai-coding-agents",),
        secret=load_secret(stack.state_dir / OIDC_SUBDIR),
    )
    return bigquery.Client(
        project=PROJECT,
        credentials=creds,
        client_options=ClientOptions(api_endpoint=stack.url("gateway")),
    )


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "max": 0.0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "p50": round(statistics.median(ordered), 1),
        "p95": round(p95, 1),
        "max": round(ordered[-1], 1),
    }


@dataclass
class Submitted:
    """One job a scenario sent, and what became of it."""

    job_id: str
    sql: str
    principal: str
    label: str
    marker: str | None = None  # the row an INSERT adds
    submitted_at: float = 0.0
    submit_error: str | None = None
    terminal_at: float | None = None
    job: Job | None = None


@dataclass
class Outcome:
    """A scenario's measurements and its four invariants (each: held, and the evidence)."""

    name: str
    jobs: list[Submitted] = field(default_factory=list)
    fault_ended_at: float = 0.0
    notes: list[str] = field(default_factory=list)
    invariants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def held(self, name: str) -> bool:
        return bool(self.invariants[name]["held"])

    def to_dict(self) -> dict[str, Any]:
        accepted = [j for j in self.jobs if j.job is not None]
        after = [
            j.terminal_at - self.fault_ended_at
            for j in accepted
            if j.terminal_at is not None and self.fault_ended_at
        ]
        return {
            "jobs": len(self.jobs),
            "accepted": len(accepted),
            "refused_at_submit": sorted({j.submit_error or "" for j in self.jobs} - {""}),
            "terminal_s_after_fault": percentiles(after),
            "states": sorted({(j.job.error or {}).get("reason", "ok") for j in accepted if j.job}),
            "invariants": self.invariants,
            "notes": self.notes,
        }


class Scenario:
    """Submit jobs as several agents, then check the invariants on them."""

    def __init__(self, stack: Stack, name: str, scratch_dataset: str = "analytics") -> None:
        self.stack = stack
        self.outcome = Outcome(name)
        self.run = f"{name.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
        self.table = f"{PROJECT}.{scratch_dataset}.rel_{self.run.replace('-', '_')}"
        self.store = FirestoreJobStore(self._fs())
        self.record = FirestoreRecorder(self._fs(), retention_seconds=0, record_rows=0)
        self._clients: dict[str, bigquery.Client] = {}

    def _fs(self) -> Any:
        return open_client(PROJECT, emulator_host=f"127.0.0.1:{self.stack.ports['firestore']}")

    def client(self, principal: str) -> bigquery.Client:
        if principal not in self._clients:
            self._clients[principal] = agent_client(self.stack, principal)
        return self._clients[principal]

    def create_scratch(self) -> None:
        direct(self.stack).create_table(
            bigquery.Table(self.table, schema=[bigquery.SchemaField("marker", "STRING")])
        )

    def principal(self, i: int) -> str:
        return f"rel-agent-{i}@demo-project.iam.gserviceaccount.com"

    def submit(self, sql: str, principal: str, *, marker: str | None = None) -> Submitted:
        """jobs.insert with an id chosen here, so a submit that fails still names its job."""
        job = Submitted(
            job_id=f"rel_{uuid.uuid4().hex}",
            sql=sql,
            principal=principal,
            label=self.run,
            marker=marker,
            submitted_at=time.monotonic(),
        )
        self.outcome.jobs.append(job)
        try:
            self.client(principal).query(
                sql,
                job_id=job.job_id,
                job_config=bigquery.QueryJobConfig(labels={"session_id": self.run}),
                retry=SUBMIT_RETRY,
                job_retry=None,  # the id is ours: a failed job is never retried under it
                timeout=20,
            )
        except Exception as exc:
            job.submit_error = type(exc).__name__
        return job

    def insert(self, principal: str) -> Submitted:
        marker = uuid.uuid4().hex
        return self.submit(
            f"INSERT INTO `{self.table}` (marker) VALUES ('{marker}')", principal, marker=marker
        )

    def submit_many(self, make: Callable[[int], Submitted], n: int) -> list[Submitted]:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(n, 1)) as pool:
            return list(pool.map(make, range(n)))

    def approve_pending(self, jobs: Sequence[Submitted], deadline_s: float = BOUND_S) -> None:
        """Approve each approval-bound job as alice through the approver API, once the
        executor has asked for it (its estimate is needed first)."""
        from bqgate.cli import main

        deadline = time.monotonic() + deadline_s
        todo = [j for j in jobs if j.submit_error is None]
        while todo and time.monotonic() < deadline:
            for j in list(todo):
                stored = self.store.get(j.job_id)
                if stored is None:
                    continue
                if stored.done:
                    todo.remove(j)
                elif stored.approval_requested_ms is not None:
                    with contextlib.redirect_stdout(open(os.devnull, "w")):
                        main(
                            [
                                "approve",
                                j.job_id,
                                "--principal",
                                "alice@example.com",
                                "--dev-dir",
                                str(self.stack.state_dir),
                            ]
                        )
                    todo.remove(j)
            time.sleep(0.25)
        for j in todo:
            self.outcome.notes.append(f"{j.job_id}: never asked for approval")

    # --- invariants -----------------------------------------------------------------

    def wait_terminal(self, bound_s: float = BOUND_S) -> None:
        start = self.outcome.fault_ended_at or time.monotonic()
        deadline = start + bound_s
        pending = list(self.outcome.jobs)
        while pending and time.monotonic() < deadline:
            for j in list(pending):
                stored = self.store.get(j.job_id)
                j.job = stored
                if stored is None and j.submit_error is not None:
                    # Refused at submit and never stored: the client was told; nothing to end.
                    if time.monotonic() - start > 5:
                        pending.remove(j)
                    continue
                if stored is not None and stored.done:
                    j.terminal_at = time.monotonic()
                    pending.remove(j)
            time.sleep(0.2)
        for j in pending:
            j.job = self.store.get(j.job_id)

    def check(self, bound_s: float = BOUND_S) -> Outcome:
        self.wait_terminal(bound_s)
        out = self.outcome
        accepted = [j for j in out.jobs if j.job is not None]
        lost_accepts = [j.job_id for j in out.jobs if j.job is None and j.submit_error is None]
        not_terminal = [j.job_id for j in accepted if not (j.job and j.job.done)]
        start = out.fault_ended_at or min((j.submitted_at for j in out.jobs), default=0.0)
        late = [
            j.job_id
            for j in accepted
            if j.terminal_at is not None and j.terminal_at - max(start, j.submitted_at) > bound_s
        ]
        out.invariants["terminal"] = {
            "held": not not_terminal and not late and not lost_accepts,
            "bound_s": bound_s,
            "not_terminal": not_terminal,
            "stuck_states": sorted({j.job.state for j in accepted if j.job and not j.job.done}),
            "late": late,
            "accepted_but_missing": lost_accepts,
        }
        out.invariants["once"] = self._check_once(accepted)
        out.invariants["recorded"] = self._check_recorded(accepted, lost_accepts)
        out.invariants["chain"] = self._check_chain()
        return out

    def _check_once(self, accepted: Sequence[Submitted]) -> dict[str, Any]:
        counts: dict[str, int] = {}
        if any(j.marker for j in self.outcome.jobs):
            rows = (
                direct(self.stack)
                .query(f"SELECT marker, COUNT(*) AS n FROM `{self.table}` GROUP BY marker")
                .result()
            )
            counts = {r.marker: r.n for r in rows}
        twice, missing, ran_after_failure, executions = [], [], [], []
        for j in self.outcome.jobs:
            n = counts.get(j.marker or "", 0)
            if n > 1:
                twice.append(j.job_id)
            if j.job is None or not j.job.done or not j.marker:
                continue
            if j.job.error is None and n != 1:
                missing.append(j.job_id)
            if j.job.error is not None and n:
                ran_after_failure.append(j.job_id)
        for j in accepted:
            events = [e for e in self._events() if e.job_id == j.job_id]
            ok_runs = [
                e for e in events if e.kind == "execution_finished" and not e.data.get("error")
            ]
            if len(ok_runs) > 1:
                executions.append(j.job_id)
        return {
            "held": not twice and not missing and not ran_after_failure and not executions,
            "ran_twice": twice,
            "succeeded_without_effect": missing,
            "failed_but_ran": ran_after_failure,
            "recorded_two_successful_executions": executions,
            "dml_jobs": sum(1 for j in self.outcome.jobs if j.marker),
        }

    def _sessions(self) -> list[str]:
        return [h.session_id for h in self.record.by_label(self.run, limit=100)]

    def _events(self) -> list[Any]:
        if not hasattr(self, "_event_cache"):
            self._event_cache = [e for s in self._sessions() for e in self.record.events(s)]
        return self._event_cache

    def _check_recorded(
        self, accepted: Sequence[Submitted], lost_accepts: Sequence[str]
    ) -> dict[str, Any]:
        kinds: dict[str, set[str]] = {}
        for e in self._events():
            kinds.setdefault(e.job_id, set()).add(e.kind)
        unrecorded, no_ending = [], []
        for j in accepted:
            seen = kinds.get(j.job_id, set())
            if not {"request", "classification"} <= seen:
                unrecorded.append(j.job_id)
            elif (
                j.job
                and j.job.done
                and not seen & ENDINGS
                and not (j.job.error and j.job.error.get("reason") == "stopped")
            ):
                no_ending.append(j.job_id)
        return {
            "held": not unrecorded and not no_ending and not lost_accepts,
            "jobs_in_firestore": len(accepted),
            "accepted_but_missing": list(lost_accepts),
            "no_request_or_classification": unrecorded,
            "done_without_an_ending_event": no_ending,
        }

    def _check_chain(self, settle_s: float = 5.0) -> dict[str, Any]:
        keys = Keyring([load_or_create_dev_key(self.stack.state_dir)])
        deadline = time.monotonic() + settle_s
        while True:
            anchors = AnchorIndex.read(FolderSink(self.stack.state_dir / "anchors").read(), keys)
            ids = self._sessions()
            report = verify(
                ids,
                lambda s: (self.record.head(s), self.record.events(s)),
                keys=keys,
                anchors=anchors,
                now_ms=int(time.time() * 1000),
            )
            tails = [s.session_id for s in report.sessions if s.unanchored]
            if (report.ok and not tails) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return {
            "held": report.ok and bool(ids),
            "sessions": len(ids),
            "broken": [s.describe() for s in report.sessions if not s.ok],
            "not_yet_checkpointed": tails,
            "forged_checkpoints": list(report.problems),
        }


# --------------------------------------------------------------------------- faults


def signal_group(stack: Stack, name: str, sig: signal.Signals) -> None:
    os.killpg(stack.proc(name).popen.pid, sig)


@contextlib.contextmanager
def paused(stack: Stack, name: str) -> Iterator[None]:
    """SIGSTOP a process group for the block, then SIGCONT it (even on failure)."""
    signal_group(stack, name, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed meanwhile: nothing to resume
            signal_group(stack, name, signal.SIGCONT)


def wait_restarted(stack: Stack, name: str, before: int, timeout: float = 60.0) -> float:
    """Seconds until the supervisor has ``name`` back (restarts went past ``before``)."""
    t0 = time.monotonic()
    proc = stack.proc(name)
    while proc.restarts <= before:
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{name} did not come back within {timeout:.0f}s")
        time.sleep(0.1)
    return time.monotonic() - t0


def slack_messages(stack: Stack, job_id: str) -> int:
    state = requests.get(stack.url("slack") + "/_test/messages", timeout=10).json()
    return sum(
        1
        for m in state["messages"]
        if any(
            e.get("value") == job_id
            for b in m.get("blocks") or []
            if b.get("type") == "actions"
            for e in b.get("elements") or []
        )
    )
