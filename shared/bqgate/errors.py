"""One error root for the whole gateway.

Every error the gateway can answer with is a :class:`BqgateError` leaf that knows
its HTTP status and its BigQuery error ``reason``. None of them uses a reason the
BigQuery client retries (``backendError``, ``rateLimitExceeded``,
``internalError``): a denial must end the call, not start a retry loop.

>>> err = AccessDenied("DROP is blocked by policy")
>>> err.http_status, err.reason, err.status
(403, 'accessDenied', 'PERMISSION_DENIED')
>>> err.to_body()["error"]["errors"][0]["reason"]
'accessDenied'
"""

from __future__ import annotations

from typing import Any

# Reasons the google-cloud-bigquery client treats as retryable. Never used for a denial.
RETRYABLE_REASONS = frozenset(
    {
        "backendError",
        "rateLimitExceeded",
        "internalError",
        "jobRateLimitExceeded",
        "jobBackendError",
        "jobInternalError",
    }
)


class BqgateError(Exception):
    """Root of every error the gateway raises on purpose."""

    http_status: int = 400
    reason: str = "invalid"
    status: str = "INVALID_ARGUMENT"

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


class InvalidRequest(BqgateError):
    """The request itself is malformed (bad JSON, missing field, bad parameter)."""

    http_status = 400
    reason = "invalid"
    status = "INVALID_ARGUMENT"


class InvalidQuery(BqgateError):
    """The SQL cannot be understood (parse error, legacy SQL)."""

    http_status = 400
    reason = "invalidQuery"
    status = "INVALID_ARGUMENT"


class Unauthenticated(BqgateError):
    """No or bad credentials. The message never echoes the token."""

    http_status = 401
    reason = "unauthorized"
    status = "UNAUTHENTICATED"


class AccessDenied(BqgateError):
    """Policy, approver or ownership denial."""

    http_status = 403
    reason = "accessDenied"
    status = "PERMISSION_DENIED"


class NotFound(BqgateError):
    http_status = 404
    reason = "notFound"
    status = "NOT_FOUND"


class Duplicate(BqgateError):
    http_status = 409
    reason = "duplicate"
    status = "ALREADY_EXISTS"


class QuotaExceeded(BqgateError):
    """A policy limit: the query would bill more bytes than allowed (cost guard), or its
    principal has too many requests awaiting approval. Not retried by clients."""

    http_status = 403
    reason = "quotaExceeded"
    status = "PERMISSION_DENIED"


class NotImplementedApi(BqgateError):
    """An API method the gateway deliberately does not offer."""

    http_status = 501
    reason = "notImplemented"
    status = "UNIMPLEMENTED"


class Unavailable(BqgateError):
    """A dependency of the gateway (JWKS, Firestore) failed; the request fails closed.

    Uses ``accessDenied`` semantics for the reason so clients do not spin on retries.
    """

    http_status = 503
    reason = "unavailable"
    status = "UNAVAILABLE"


class Rejected(Unavailable):
    """A dependency answered that it did not do what was asked (Slack's ``ok: false``):
    unlike a timeout, the call certainly had no effect, so repeating it is safe."""


class PolicyError(BqgateError):
    """The policy file is invalid. ``problems`` lists every mistake as ``path: message``."""

    http_status = 500
    reason = "invalid"
    status = "FAILED_PRECONDITION"

    def __init__(self, problems: list[str], *, source: str = "policy") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__("; ".join(f"{source}: {p}" for p in self.problems))
