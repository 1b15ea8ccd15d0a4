"""One error root for the whole gateway.

Every error the gateway can answer with is a :class:`BqgateError` leaf that knows
its HTTP status and its BigQuery error ``reason``. None of them uses a reason the
BigQuery client retries (``backendError``, ``rateLimitExceeded``,
``internalError``): a denial must end the call, not start a retry loop. The one
exception is deliberate: a dependency outage (:class:`Unavailable`) on a request that
is idempotent by job id or requestId is answered as ``backendError`` by the HTTP
layer, so the client's own retry resumes it (see :func:`unavailable_reason`).

What BigQuery says about a statement reaches the agent only through
:func:`from_warehouse`, which clamps it to a leaf that a finished job may carry.

>>> err = AccessDenied("DROP is blocked by policy")
>>> err.http_status, err.reason, err.status
(403, 'accessDenied', 'PERMISSION_DENIED')
>>> err.to_body()["error"]["errors"][0]["reason"]
'accessDenied'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Reasons a BigQuery client retries: the Python client's ``_RETRYABLE_REASONS`` (HTTP
#: calls) and ``job_retry_reasons`` (whole jobs), which the Java and Go clients share.
#: Never used for a denial, and never carried by a finished job.
RETRYABLE_REASONS = frozenset(
    {
        "backendError",
        "badGateway",
        "internalError",
        "rateLimitExceeded",
        "jobBackendError",
        "jobInternalError",
        "jobRateLimitExceeded",
    }
)


class BqgateError(Exception):
    """Root of every error the gateway raises on purpose."""

    http_status: int = 400
    reason: str = "invalid"
    status: str = "INVALID_ARGUMENT"
    #: True when the same request may succeed later (a dependency failed, not the request).
    transient: bool = False

    def __init_subclass__(
        cls,
        *,
        http_status: int | None = None,
        reason: str | None = None,
        status: str | None = None,
        **kwargs: Any,
    ) -> None:
        """A leaf names its answer where it is declared: ``class NotFound(BqgateError,
        http_status=404, reason="notFound", status="NOT_FOUND")``."""
        super().__init_subclass__(**kwargs)
        if http_status is not None:
            cls.http_status = http_status
        if reason is not None:
            cls.reason = reason
        if status is not None:
            cls.status = status

    def __init__(self, message: str, *, location: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.location = location

    def to_error_proto(self) -> dict[str, Any]:
        """The ``errors[]`` / ``errorResult`` entry for this error."""
        entry: dict[str, Any] = {"reason": self.reason, "message": self.message}
        if self.location:
            entry["location"] = self.location
        return entry

    def to_body(self) -> dict[str, Any]:
        """BigQuery's REST error body."""
        return {
            "error": {
                "code": self.http_status,
                "message": self.message,
                "status": self.status,
                "errors": [self.to_error_proto()],
            }
        }


class InvalidRequest(BqgateError, http_status=400, reason="invalid", status="INVALID_ARGUMENT"):
    """The request itself is malformed (bad JSON, missing field, bad parameter)."""


class InvalidQuery(BqgateError, http_status=400, reason="invalidQuery", status="INVALID_ARGUMENT"):
    """The SQL cannot be understood (parse error, legacy SQL)."""


class Unauthenticated(
    BqgateError, http_status=401, reason="unauthorized", status="UNAUTHENTICATED"
):
    """No or bad credentials. The message never echoes the token."""


class AccessDenied(BqgateError, http_status=403, reason="accessDenied", status="PERMISSION_DENIED"):
    """Policy, approver or ownership denial."""


class NotFound(BqgateError, http_status=404, reason="notFound", status="NOT_FOUND"):
    """The thing the request names does not exist (or is not the caller's to see)."""


class Duplicate(BqgateError, http_status=409, reason="duplicate", status="ALREADY_EXISTS"):
    """A job with this id exists already."""


class QuotaExceeded(
    BqgateError, http_status=403, reason="quotaExceeded", status="PERMISSION_DENIED"
):
    """A policy limit: the query would bill more bytes than allowed (cost guard), or its
    principal has too many requests awaiting approval. Not retried by clients."""


class NotImplementedApi(
    BqgateError, http_status=400, reason="notImplemented", status="UNIMPLEMENTED"
):
    """An API method the gateway deliberately does not offer. A client error (400, not
    BigQuery's 501): a request is never answered with a 5xx for what the client sent."""


class Unavailable(BqgateError, http_status=503, reason="unavailable", status="UNAVAILABLE"):
    """A dependency of the gateway (JWKS, Firestore, Pub/Sub, BigQuery's API) failed or did
    not answer in time; the request fails closed, within seconds.

    Its own reason is not one a client retries; :func:`unavailable_reason` says when the
    HTTP answer may invite a retry. Never stored on a job: a job that keeps failing this
    way ends with :class:`JobFailed`.
    """

    transient = True


class TooLarge(BqgateError, http_status=413, reason="invalid", status="INVALID_ARGUMENT"):
    """The request (body, URL or headers) is over the gateway's limits."""

    def __init__(self, message: str, *, http_status: int = 413) -> None:
        super().__init__(message)
        self.http_status = http_status


class Stopped(BqgateError, http_status=400, reason="stopped", status="CANCELLED"):
    """The job was cancelled (by its owner, or in BigQuery)."""


class JobFailed(BqgateError, http_status=400, reason="jobFailed", status="ABORTED"):
    """A job ended by a failure that retrying the same job cannot fix: BigQuery's transient
    errors once a job has finished with them, an outage that outlasted the executor's
    bounded retries, or an unexpected error (the message names an incident, never data)."""


class GatewayFailed(BqgateError, http_status=400, reason="gatewayError", status="ABORTED"):
    """The gateway itself could not run a job (every delivery to its executor failed, or its
    hand-off was never taken): a finished job's error, stored as ``gatewayError`` and read
    back as itself (:func:`for_job`). Only the gateway says it: the same reason from
    BigQuery is clamped like any other it does not know (:func:`from_warehouse`)."""


class WarehouseError(BqgateError):
    """Any other BigQuery reason (resourcesExceeded, responseTooLarge, billingTierLimitExceeded,
    ...): the reason is kept, the status is a client error."""

    def __init__(self, message: str, *, reason: str, http_status: int = 400) -> None:
        super().__init__(message)
        self.reason = reason
        self.http_status = http_status


class Rejected(Unavailable):
    """A dependency answered that it did not do what was asked (Slack's ``ok: false``):
    unlike a timeout, the call certainly had no effect, so repeating it is safe."""


class PolicyError(BqgateError, http_status=500, reason="invalid", status="FAILED_PRECONDITION"):
    """The policy file is invalid. ``problems`` lists every mistake as ``path: message``."""

    def __init__(self, problems: list[str], *, source: str = "policy") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__("; ".join(f"{source}: {p}" for p in self.problems))


#: The leaf a stored job error with this reason is raised as (a finished job's reasons).
JOB_ERRORS: dict[str, type[BqgateError]] = {
    "accessDenied": AccessDenied,
    "duplicate": Duplicate,
    "invalid": InvalidRequest,
    "invalidQuery": InvalidQuery,
    "jobFailed": JobFailed,
    "notFound": NotFound,
    "quotaExceeded": QuotaExceeded,
    "stopped": Stopped,
}

#: Other BigQuery reasons a finished job keeps as they are, with the HTTP status BigQuery's
#: own clients map them to (all client errors: none is retried).
_KEPT_REASONS: dict[str, int] = {
    "billingNotEnabled": 403,
    "billingTierLimitExceeded": 400,
    "blocked": 403,
    "bytesBilledLimitExceeded": 400,
    "policyViolation": 403,
    "resourceInUse": 400,
    "resourcesExceeded": 400,
    "responseTooLarge": 403,
    "tableUnavailable": 400,
    "timeout": 400,
}

#: Rate limits end a finished job as a quota problem: the agent may submit it again later.
_RATE_LIMITS = frozenset({"rateLimitExceeded", "jobRateLimitExceeded"})


def from_warehouse(
    reason: str | None, message: str | None, http_status: int | None = None
) -> BqgateError:
    """The gateway error for what BigQuery said (a failed API call, or a job's errorResult).

    The one place a warehouse error is translated: the result always suits a *finished*
    job (a client error whose reason no client retries). ``transient`` is set when the
    API call itself failed in a way a later identical call may not (``http_status`` 5xx or
    a retryable reason on a call): the executor retries those a bounded number of times
    under the same derived BigQuery job id. A job BigQuery *finished* with a retryable
    reason (``http_status`` None) is not transient: its id is spent.

    >>> err = from_warehouse("notFound", "Not found: Table p:d.t", 404)
    >>> type(err).__name__, err.http_status, err.transient
    ('NotFound', 404, False)
    >>> err = from_warehouse("rateLimitExceeded", "Exceeded rate limits")
    >>> err.reason, err.http_status, err.transient
    ('quotaExceeded', 403, False)
    >>> err = from_warehouse("backendError", "Backend error", 503)
    >>> err.reason, err.http_status, err.transient
    ('jobFailed', 400, True)
    >>> from_warehouse("stopped", "Job cancelled").reason
    'stopped'
    >>> from_warehouse("gatewayError", "not BigQuery's word").reason  # only the gateway's
    'jobFailed'
    """
    reason = reason or ""
    text = message or "BigQuery failed the query"
    transient = http_status is not None and (
        http_status >= 500 or http_status == 429 or reason in RETRYABLE_REASONS
    )
    err: BqgateError
    if reason in _RATE_LIMITS:
        err = QuotaExceeded(f"BigQuery rate limit: {text}")
    elif reason in RETRYABLE_REASONS or (reason not in JOB_ERRORS and reason not in _KEPT_REASONS):
        err = JobFailed(f"BigQuery failed the job: {text}")
    elif reason in JOB_ERRORS:
        err = JOB_ERRORS[reason](text)
    else:
        err = WarehouseError(text, reason=reason, http_status=_KEPT_REASONS[reason])
    err.transient = transient
    return err


#: The reasons only the gateway stores for a finished job (its own failures, never BigQuery's).
GATEWAY_ERRORS: dict[str, type[BqgateError]] = {"gatewayError": GatewayFailed}


def for_job(reason: str | None, message: str | None) -> BqgateError:
    """The error a finished job with this stored ``errorResult`` raises when read.

    Reasons the gateway wrote itself come back as their leaf; anything else (an error
    stored before reasons were clamped) is clamped as :func:`from_warehouse` would.

    >>> for_job("accessDenied", "Blocked by bqgate policy").http_status
    403
    >>> err = for_job("backendError", "old")
    >>> err.reason, err.http_status
    ('jobFailed', 400)
    >>> err = for_job("gatewayError", "bqgate could not run this job")
    >>> err.reason, err.message
    ('gatewayError', 'bqgate could not run this job')
    """
    cls = JOB_ERRORS.get(reason or "") or GATEWAY_ERRORS.get(reason or "")
    if cls is not None:
        return cls(message or "the job failed")
    return from_warehouse(reason, message)


def finished(err: BqgateError) -> BqgateError:
    """``err`` as a finished job may carry it: a client error with a reason no client
    retries (a 5xx or retryable leaf becomes :class:`JobFailed` with its message).

    >>> finished(Unavailable("Firestore did not answer")).reason
    'jobFailed'
    >>> finished(NotFound("Not found: Table p:d.t")).reason
    'notFound'
    """
    if err.http_status < 500 and err.reason not in RETRYABLE_REASONS:
        return err
    return JobFailed(err.message)


def stored(err: BqgateError, *, scrub: Callable[[str], str] | None = None) -> dict[str, str]:
    """The ``errorResult`` a finished job stores for ``err`` (:func:`for_job` reads it back):
    clamped by :func:`finished`, its message cleaned by ``scrub``.

    >>> stored(Unavailable("Firestore did not answer"))
    {'reason': 'jobFailed', 'message': 'Firestore did not answer'}
    >>> stored(AccessDenied("Blocked by bqgate policy: x"), scrub=str.upper)["message"]
    'BLOCKED BY BQGATE POLICY: X'
    """
    proto = finished(err).to_error_proto()
    message = str(proto["message"])
    return {"reason": str(proto["reason"]), "message": scrub(message) if scrub else message}


def unavailable_reason(idempotent: bool) -> str:
    """The reason an HTTP 503 answers with: ``backendError`` (clients retry it) only when
    the request is idempotent (by job id or requestId), so the retry cannot start a second
    job; else ``unavailable``, which no client retries.

    >>> unavailable_reason(True), unavailable_reason(False)
    ('backendError', 'unavailable')
    """
    return "backendError" if idempotent else "unavailable"
