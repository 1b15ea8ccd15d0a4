"""Helpers the tests on the local stack share (``tests/`` is on ``sys.path``, see
``tests/conftest.py``): waiting for a condition, fresh in-process wiring, and a job that
waits for approval written straight to Firestore."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from bqgate.jobs import PENDING_APPROVAL, Job
from conftest import AGENT

LEDGER_SQL = "SELECT entry_id, amount FROM `demo-project.finance.ledger` ORDER BY entry_id LIMIT 3"


def until(what: str, fn: Callable[[], Any], timeout: float = 60, interval: float = 0.2) -> Any:
    """``fn()``'s first truthy value, polled every ``interval`` seconds; fails the test
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def clear_bootstrap() -> None:
    """Forget every client and service ``bqgate.bootstrap`` built (the next use builds them
    from the environment as it is now)."""
    from bqgate import bootstrap

    for name in dir(bootstrap):
        clear = getattr(getattr(bootstrap, name), "cache_clear", None)
        if callable(clear):
            clear()


def new_pending_job(sql: str = LEDGER_SQL, session_id: str = "", **fields: Any) -> Job:
    """A PENDING_APPROVAL job of the agent, classified by the stack's policy and written
    straight to Firestore as the gateway and the executor leave it (nothing is published)."""
    from bqgate import bootstrap

    groups = bootstrap.policy().groups_for(AGENT)
    classification = bootstrap._classifier()(
        sql,
        principal=AGENT,
        groups=groups,
        default_project="demo-project",
        default_dataset=None,
        claims={},
    )
    assert classification.decision == "approve", classification
    now = int(time.time() * 1000)
    job = Job.new(
        job_id="fn-" + uuid.uuid4().hex,
        project="demo-project",
        location="US",
        sql=sql,
        owner=AGENT,
        groups=sorted(groups),
        classification=classification,
        state=PENDING_APPROVAL,
        expire_at_ms=now + 900_000,
        now_ms=now,
        needs_approval=True,
        bytes_estimate=4096,
        approval_requested_ms=now,
        session_id=session_id,
        **fields,
    )
    bootstrap.job_store().create(job)
    return job
