"""Google client-library failures as gateway errors: the one translation every adapter uses.

An outage (no answer within the call's deadline, a refused connection, a 5xx after the
library's bounded retries) becomes :class:`bqgate.errors.Unavailable`, which the HTTP layer
answers as a 503 and the executor retries a bounded number of times. What BigQuery says
about a statement goes through :func:`bqgate.errors.from_warehouse`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Iterator
from typing import Any

import requests
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.auth import exceptions as auth_exceptions

from bqgate.errors import BqgateError, Unavailable, from_warehouse

#: Failures that say nothing about the request, only that the service did not answer.
OUTAGES: tuple[type[BaseException], ...] = (
    gexc.RetryError,
    gexc.DeadlineExceeded,
    gexc.ServiceUnavailable,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.GatewayTimeout,
    gexc.TooManyRequests,
    gexc.Unknown,
    concurrent.futures.TimeoutError,
    TimeoutError,
    ConnectionError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    auth_exceptions.TransportError,
)


def retry(deadline_s: float) -> gretry.Retry:
    """The library's transient-error retry, bounded to ``deadline_s`` in all."""
    return gretry.Retry(
        predicate=gretry.if_transient_error,
        initial=0.1,
        maximum=1.0,
        multiplier=2.0,
        timeout=deadline_s,
    )


def unavailable(service: str, exc: BaseException) -> Unavailable:
    """The gateway error for an outage of ``service`` (the message names no data)."""
    return Unavailable(
        f"{service} did not answer in time or is unavailable ({type(exc).__name__}); "
        "try again shortly"
    )


@contextlib.contextmanager
def outage_as_unavailable(service: str) -> Iterator[None]:
    """Run a block of calls to ``service``; an outage raises :class:`Unavailable`."""
    try:
        yield
    except BqgateError:
        raise
    except OUTAGES as exc:
        raise unavailable(service, exc) from None


def warehouse_error(exc: gexc.GoogleAPICallError) -> BqgateError:
    """What a failed BigQuery API call means for the job (through ``from_warehouse``)."""
    errors: Any = getattr(exc, "errors", None) or []
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    reason = first.get("reason") if isinstance(first.get("reason"), str) else None
    message = getattr(exc, "message", None) or first.get("message") or type(exc).__name__
    return from_warehouse(reason, str(message), exc.code if isinstance(exc.code, int) else 500)


@contextlib.contextmanager
def bigquery_calls() -> Iterator[None]:
    """Run a block of BigQuery API calls: a rejection becomes the job's error
    (``from_warehouse``), an outage :class:`Unavailable` (both transient when a retry may
    help)."""
    try:
        yield
    except BqgateError:
        raise
    except gexc.RetryError as exc:
        cause = exc.cause
        if isinstance(cause, gexc.GoogleAPICallError):
            raise warehouse_error(cause) from None
        raise unavailable("BigQuery", exc) from None
    except gexc.GoogleAPICallError as exc:
        raise warehouse_error(exc) from None
    except OUTAGES as exc:
        raise unavailable("BigQuery", exc) from None
