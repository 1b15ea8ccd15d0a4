"""Every job ends with the right, non-retryable error; outages answer 503 knowingly.

The pure core over fakes: :func:`bqgate.errors.from_warehouse` clamps, the ingress maps a
dependency outage to 503 with a retryable reason only for idempotent requests, a finished
job never answers 5xx or a reason a client retries, and the executor finishes every job
it is handed (bounded retries for outages, an incident id for the unexpected).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from bqgate import errors
from bqgate.classification import Classification
from bqgate.errors import (
    RETRYABLE_REASONS,
    BqgateError,
    JobFailed,
    NotFound,
    Unavailable,
)
from bqgate.identity import Principal
from bqgate.jobs import DONE, PENDING, RUNNING, Job, Transition
from bqgate.policy import load_policy
from bqgate.ports import Change, DryRun, QueryOutcome
from bqgate.service.executor import Executor
from bqgate.service.gateway import Gateway, GatewayConfig, block_error, job_error
from bqgate.service.ingress import IngressApp
from fakes import FakeWarehouse, MemoryJobStore, MemoryQueue, caller
from hypothesis import given
from hypothesis import strategies as st

POLICY = load_policy("policies/default.yaml")
AGENT = caller("agent@x", "ai-coding-agents")
#: Reasons the BigQuery clients retry (Python's HTTP and job retries, which Java/Go share).
CLIENT_RETRIES = {
    "rateLimitExceeded",
    "backendError",
    "internalError",
    "badGateway",
    "jobBackendError",
    "jobInternalError",
    "jobRateLimitExceeded",
}


# --- errors.from_warehouse ---------------------------------------------------------------


def test_retryable_list_holds_every_reason_the_clients_retry() -> None:
    assert CLIENT_RETRIES <= RETRYABLE_REASONS


@pytest.mark.parametrize(
    ("reason", "status", "leaf", "code", "transient"),
    [
        ("notFound", 404, "NotFound", 404, False),
        ("invalidQuery", 400, "InvalidQuery", 400, False),
        ("invalid", 400, "InvalidRequest", 400, False),
        ("accessDenied", 403, "AccessDenied", 403, False),
        ("stopped", None, "Stopped", 400, False),
        ("rateLimitExceeded", None, "QuotaExceeded", 403, False),
        ("rateLimitExceeded", 403, "QuotaExceeded", 403, True),
        ("backendError", None, "JobFailed", 400, False),
        ("backendError", 503, "JobFailed", 400, True),
        ("badGateway", 502, "JobFailed", 400, True),
        ("internalError", None, "JobFailed", 400, False),
        ("resourcesExceeded", None, "WarehouseError", 400, False),
        ("responseTooLarge", 403, "WarehouseError", 403, False),
        (None, 504, "JobFailed", 400, True),
        ("someReasonFromTheFuture", None, "JobFailed", 400, False),
    ],
)
def test_from_warehouse_translates_and_clamps(
    reason: str | None, status: int | None, leaf: str, code: int, transient: bool
) -> None:
    err = errors.from_warehouse(reason, "what BigQuery said", status)
    assert (type(err).__name__, err.http_status, err.transient) == (leaf, code, transient)
    assert "what BigQuery said" in err.message


@given(
    reason=st.one_of(st.none(), st.sampled_from(sorted(CLIENT_RETRIES)), st.text(max_size=30)),
    status=st.one_of(st.none(), st.integers(min_value=100, max_value=599)),
)
def test_no_warehouse_error_gives_a_finished_job_a_retryable_or_5xx_answer(
    reason: str | None, status: int | None
) -> None:
    err = errors.from_warehouse(reason, "m", status)
    stored = err.to_error_proto()
    assert stored["reason"] not in CLIENT_RETRIES and err.http_status < 500
    # Read back from the store, it answers the same way.
    again = errors.for_job(stored["reason"], stored["message"])
    assert again.reason == err.reason and again.http_status == err.http_status


@given(reason=st.text(max_size=30), message=st.text(max_size=50))
def test_any_stored_job_error_is_answered_as_a_client_error(reason: str, message: str) -> None:
    err = errors.for_job(reason, message)
    assert err.http_status < 500 and err.reason not in CLIENT_RETRIES


# --- the ingress: a finished job, a blocked statement, an outage ---------------------------


class StaticVerifier:
    def verify(self, token: str) -> Principal:
        return AGENT


def verdict(sql: str, **_: Any) -> Classification:
    return Classification("allow", reasons=("ok",))


def app_over(store: Any, gw: Gateway | None = None) -> IngressApp:
    gateway = gw or Gateway(
        store=store,
        queue=MemoryQueue(),
        classify=verdict,
        config=GatewayConfig(max_wait_ms=0),
        sleep=lambda s: None,
    )
    return IngressApp(lambda: gateway, StaticVerifier)


AUTH = {"Authorization": "Bearer t"}
JOBS = "/bigquery/v2/projects/demo-project/jobs"


@pytest.mark.parametrize("reason", sorted(CLIENT_RETRIES | {"stopped", "weird"}))
def test_a_finished_job_with_any_stored_reason_never_answers_5xx(reason: str) -> None:
    store = MemoryJobStore()
    store.create(
        Job.new(
            job_id="j1",
            project="demo-project",
            location="US",
            sql="SELECT 1",
            owner=AGENT.email,
            now_ms=0,
        )
    )
    store.transition(
        "j1", lambda j: replace(j, state=DONE, error={"reason": reason, "message": "m"})
    )
    app = app_over(store)
    resp = app.handle("GET", "/bigquery/v2/projects/demo-project/queries/j1", {}, AUTH, b"")
    # Rate limits end the job as a quota problem, a cancellation stays one, the rest failed.
    expected = {
        "rateLimitExceeded": (403, "quotaExceeded"),
        "jobRateLimitExceeded": (403, "quotaExceeded"),
        "stopped": (400, "stopped"),
    }.get(reason, (400, "jobFailed"))
    assert (resp.status, resp.body["error"]["errors"][0]["reason"]) == expected
    assert resp.body["error"]["errors"][0]["reason"] not in CLIENT_RETRIES

    # jobs.get is a 200 whose errorResult a client must not retry either.
    got = app.handle("GET", "/bigquery/v2/projects/demo-project/jobs/j1", {}, AUTH, b"")
    assert got.status == 200
    assert got.body["status"]["state"] == "DONE"
    assert got.body["status"]["errorResult"]["reason"] not in CLIENT_RETRIES


class DownStore(MemoryJobStore):
    """Firestore unreachable: every call fails as the adapter reports an outage."""

    def get(self, job_id: str) -> Job | None:
        raise Unavailable("Firestore did not answer in time or is unavailable (DeadlineExceeded)")

    def create(self, job: Job, **writes: Any) -> None:
        raise Unavailable("Firestore did not answer in time or is unavailable (DeadlineExceeded)")


def _body(sql: str, **extra: Any) -> bytes:
    return json.dumps(
        {"configuration": {"query": {"query": sql, "useLegacySql": False}}, **extra}
    ).encode()


@pytest.mark.parametrize(
    ("method", "path", "body", "reason"),
    [
        # Idempotent: a read, or a submission naming its job id / requestId. A retry is safe.
        ("GET", "/bigquery/v2/projects/demo-project/queries/j1", b"", "backendError"),
        ("GET", "/bigquery/v2/projects/demo-project/jobs/j1", b"", "backendError"),
        ("POST", JOBS, _body("SELECT 1", jobReference={"jobId": "j9"}), "backendError"),
        (
            "POST",
            "/bigquery/v2/projects/demo-project/queries",
            json.dumps({"query": "SELECT 1", "useLegacySql": False, "requestId": "r1"}).encode(),
            "backendError",
        ),
        # Not idempotent: a retry could start a second job, so nothing invites one.
        ("POST", JOBS, _body("SELECT 1"), "unavailable"),
        (
            "POST",
            "/bigquery/v2/projects/demo-project/queries",
            json.dumps({"query": "SELECT 1", "useLegacySql": False}).encode(),
            "unavailable",
        ),
    ],
)
def test_an_outage_answers_503_retryable_only_when_a_retry_is_safe(
    method: str, path: str, body: bytes, reason: str
) -> None:
    resp = app_over(DownStore()).handle(method, path, {}, AUTH, body)
    assert resp.status == 503
    assert resp.body["error"]["status"] == "UNAVAILABLE"
    assert resp.body["error"]["errors"][0]["reason"] == reason
    assert "Firestore" in resp.body["error"]["message"]


@pytest.mark.parametrize(
    ("per_statement", "reason"),
    [
        (
            [
                {
                    "kind": "SELECT",
                    "decision": "block",
                    "reasons": [
                        "table events has no dataset and no default dataset is set (unresolved)"
                    ],
                }
            ],
            "invalidQuery",
        ),
        (
            [
                {
                    "kind": "SELECT",
                    "decision": "block",
                    "reasons": [
                        "table name a.b.c.d has too many parts (unresolved)",
                        "read on demo-project.analytics.events is allowed",
                    ],
                }
            ],
            "invalidQuery",
        ),
        # Unparseable SQL that reaches a block names something the policy denies.
        (
            [
                {
                    "kind": "UNPARSEABLE",
                    "decision": "block",
                    "reasons": [
                        "cannot parse; routine e.ds.f: dataset e.ds is not in the policy "
                        "(deny by default)"
                    ],
                }
            ],
            "accessDenied",
        ),
        (
            [{"kind": "DROP_TABLE", "decision": "block", "reasons": ["DROP is blocked"]}],
            "accessDenied",
        ),
        (
            [
                {"kind": "SELECT", "decision": "block", "reasons": ["t x (unresolved)"]},
                {"kind": "DELETE", "decision": "block", "reasons": ["always true: blocked"]},
            ],
            "accessDenied",
        ),
    ],
)
def test_syntax_and_resolution_errors_are_invalid_query_not_access_denied(
    per_statement: list[dict[str, Any]], reason: str
) -> None:
    err = block_error(Classification.from_dict({"reasons": ["r"], "per_statement": per_statement}))
    assert err.reason == reason
    assert err.http_status == (400 if reason == "invalidQuery" else 403)


# --- the executor finishes every job --------------------------------------------------------


class ScriptedWarehouse(FakeWarehouse):
    """A warehouse whose dry run or run raises what the test says, a given number of times."""

    def __init__(
        self,
        *,
        dry_run: list[BaseException] | None = None,
        run: list[BaseException] | None = None,
        outcome_error: dict[str, str] | None = None,
    ) -> None:
        super().__init__([{"name": "x", "type": "INTEGER"}], [["1"]])
        self.dry_run_errors = list(dry_run or [])
        self.run_errors = list(run or [])
        self.outcome_error = outcome_error

    def dry_run_info(self, sql: str, **kwargs: Any) -> DryRun:
        if self.dry_run_errors:
            raise self.dry_run_errors.pop(0)
        return super().dry_run_info(sql, **kwargs)

    def run(self, job_id: str, sql: str, **kwargs: Any) -> QueryOutcome:
        self.jobs[job_id] = self.jobs.get(job_id, 0) + 1
        if self.run_errors:
            raise self.run_errors.pop(0)
        if self.outcome_error:
            # What BigQuery said, through the adapter's one translation.
            err = errors.from_warehouse(self.outcome_error["reason"], self.outcome_error["message"])
            return QueryOutcome([], 0, None, None, None, error=err)
        return QueryOutcome(self.schema, len(self.rows), "SELECT", None, 1)


def executor_with(wh: FakeWarehouse) -> tuple[Executor, MemoryJobStore]:
    store = MemoryJobStore()
    store.create(
        Job.new(
            job_id="j1",
            project="demo-project",
            location="US",
            sql="SELECT * FROM `demo-project.analytics.nope`",
            owner=AGENT.email,
            now_ms=0,
        )
    )
    return Executor(
        store=store, warehouse=wh, policy=POLICY, hmac_key=b"k", queue=MemoryQueue()
    ), store


def deliveries(ex: Executor, times: int) -> Iterator[str | BaseException]:
    """Deliver the execute message up to ``times`` times, as Pub/Sub redelivers on errors."""
    for _ in range(times):
        try:
            yield ex.run("j1")
        except BqgateError as err:
            yield err


def test_unknown_table_in_the_dry_run_ends_the_job_not_found() -> None:
    ex, store = executor_with(
        ScriptedWarehouse(
            dry_run=[
                errors.from_warehouse(
                    "notFound", "Not found: Table demo-project:analytics.nope", 404
                )
            ]
        )
    )
    assert ex.run("j1") == "failed"
    job = store.get("j1")
    assert job is not None and job.state == DONE
    assert job.error == {
        "reason": "notFound",
        "message": "Not found: Table demo-project:analytics.nope",
    }
    assert isinstance(job_error(job), NotFound) and job_error(job).http_status == 404


def test_a_job_bigquery_finished_with_a_retryable_reason_ends_clamped() -> None:
    ex, store = executor_with(
        ScriptedWarehouse(
            outcome_error={"reason": "rateLimitExceeded", "message": "Exceeded rate limits"}
        )
    )
    assert ex.run("j1") == "failed"
    job = store.get("j1")
    assert job is not None and job.error is not None
    assert job.error["reason"] == "quotaExceeded"


def test_an_outage_is_retried_by_redelivery_a_bounded_number_of_times() -> None:
    outage = Unavailable("BigQuery did not answer in time or is unavailable (ConnectionError)")
    ex, store = executor_with(ScriptedWarehouse(dry_run=[outage] * 10))
    results = list(deliveries(ex, 5))
    # Raised (so Pub/Sub redelivers) twice, then the job ends; later deliveries are no-ops.
    assert [type(r).__name__ if isinstance(r, BaseException) else r for r in results] == [
        "Unavailable",
        "Unavailable",
        "failed",
        "skipped",
        "skipped",
    ]
    job = store.get("j1")
    assert job is not None and job.state == DONE and job.transient_failures == 3
    assert job.error is not None and job.error["reason"] == "jobFailed"
    assert "incident" in job.error["message"]


def test_an_outage_that_clears_lets_the_job_run_once_under_the_same_warehouse_id() -> None:
    outage = errors.from_warehouse("backendError", "Backend error", 503)
    wh = ScriptedWarehouse(run=[outage])
    ex, store = executor_with(wh)
    results = list(deliveries(ex, 2))
    assert isinstance(results[0], JobFailed) and results[0].transient
    assert results[1] == "done"
    job = store.get("j1")
    assert job is not None and job.state == DONE and job.error is None
    assert list(wh.jobs.values()) == [2] and len(wh.jobs) == 1  # one BigQuery job id, attached


@pytest.mark.parametrize(
    "boom", [KeyError("schema"), RuntimeError("masking exploded"), RecursionError()]
)
def test_an_unexpected_error_ends_the_job_with_an_incident_and_no_data(
    boom: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    ex, store = executor_with(ScriptedWarehouse(run=[boom]))
    assert ex.run("j1") == "failed"
    job = store.get("j1")
    assert job is not None and job.state == DONE and job.error is not None
    assert job.error["reason"] == "jobFailed"
    message = job.error["message"]
    assert "incident" in message and "schema" not in message and "exploded" not in message
    assert any("unexpected executor error" in r.message for r in caplog.records)


def test_the_job_ends_even_when_its_first_store_write_is_the_failure() -> None:
    """A job store that fails once (the claim) and then recovers: the job still ends."""

    class FlakyStore(MemoryJobStore):
        failures = 1

        def transition(self, job_id: str, change: Change, **writes: Any) -> Transition:
            if self.failures:
                self.failures -= 1
                raise Unavailable("Firestore did not answer in time")
            return super().transition(job_id, change, **writes)

    wh = ScriptedWarehouse()
    store = FlakyStore()
    store.create(
        Job.new(
            job_id="j1",
            project="demo-project",
            location="US",
            sql="SELECT 1",
            owner=AGENT.email,
            now_ms=0,
        )
    )
    ex = Executor(store=store, warehouse=wh, policy=POLICY, hmac_key=b"k", queue=MemoryQueue())
    first = next(iter(deliveries(ex, 1)))
    assert isinstance(first, Unavailable)
    after = store.get("j1")
    assert after is not None and after.state in (PENDING, RUNNING)
    assert ex.run("j1") == "done"
