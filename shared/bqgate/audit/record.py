"""The recording rules: what each kind of session event records, and how it reads back.

The gateway, the executor, the approvals function and the sweeper record events through a
:class:`~bqgate.ports.Recorder`; :func:`event_data` decides what an event holds (the
statement and who sent it, never the token; at most ``record_rows`` masked rows) and
:func:`summarize` says it in one line (``bqgate sessions show`` and the console).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Any, Literal, get_args

from bqgate.audit.chain import Event, canonical_json, to_plain
from bqgate.vocabulary import human_bytes

__all__ = [
    "KINDS",
    "MAX_DATA_BYTES",
    "EventKind",
    "event_data",
    "format_ms",
    "one_line",
    "summarize",
]

#: The event kinds the gateway, the executor, the approvals function and the sweeper record
#: (mypy checks every recorder call against it; :func:`event_data` refuses any other).
EventKind = Literal[
    "request",
    "classification",
    "second_opinion",
    "dry_run",
    "blast_radius",
    "blocked",
    "approval_requested",
    "notified",
    "approval_decided",
    "denied",
    "expired",
    "execution_started",
    "execution_finished",
    "result",
]
KINDS: tuple[EventKind, ...] = get_args(EventKind)

#: Largest canonical ``data`` an event may hold (Firestore documents hold 1 MiB).
MAX_DATA_BYTES = 600_000


def event_data(
    job: Any, kind: EventKind, data: Mapping[str, Any], *, record_rows: int
) -> dict[str, Any]:
    """What an event of ``kind`` about ``job`` (a :class:`bqgate.jobs.Job`) records.

    A ``request`` gets the statement and who sent it, from where (the token is never
    part of a job, so never recorded); a ``result`` keeps at most ``record_rows`` of
    the masked rows it was given. Anything too big for one document is trimmed and
    says so.

    >>> from bqgate.jobs import Job
    >>> job = Job.new(job_id="j", project="p", location="US", sql="SELECT 1", owner="a@x",
    ...               groups=["g"], issuer="dev", labels={"session_id": "s"}, now_ms=0)
    >>> d = event_data(job, "request", {"request_kind": "jobs.query"}, record_rows=0)
    >>> d["statement"], d["principal"], d["groups"], d["client"]["request_kind"]
    ('SELECT 1', 'a@x', ['g'], 'jobs.query')
    >>> r = event_data(job, "result", {"rows": [[1], [2], [3]], "total_rows": 3}, record_rows=2)
    >>> r["rows"], r["rows_recorded"]
    ([[1], [2]], 2)
    >>> event_data(job, "reqest", {}, record_rows=0)  # type: ignore[arg-type]
    Traceback (most recent call last):
    ...
    ValueError: 'reqest' is not an event kind the session record knows
    """
    if kind not in KINDS:
        raise ValueError(f"{kind!r} is not an event kind the session record knows")
    out: dict[str, Any] = to_plain(data)
    if kind == "request":
        default = job.default_dataset or {}
        out = {
            "statement": job.sql,
            "principal": job.owner,
            "groups": list(job.groups),
            "issuer": job.issuer,
            "client": {
                "request_kind": out.pop("request_kind", job.request_kind),
                "labels": dict(job.labels),
            },
            "project": job.project,
            "default_project": default.get("projectId") or job.project,
            "default_dataset": default.get("datasetId"),
            "location": job.location,
            "query_parameters": to_plain(job.query_parameters),
            **out,
        }
        if len(canonical_json(out).encode("utf-8")) > MAX_DATA_BYTES:
            sql = str(out["statement"])
            out["statement_sha256"] = hashlib.sha256(sql.encode("utf-8")).hexdigest()
            out["statement"] = sql[: MAX_DATA_BYTES // 8]
            out["statement_truncated"] = True
    elif kind == "result":
        rows = list(out.pop("rows", None) or [])[: max(record_rows, 0)]
        out["rows"] = rows
        out["rows_recorded"] = len(rows)
        while rows and len(canonical_json(out).encode("utf-8")) > MAX_DATA_BYTES:
            rows = rows[: len(rows) // 2]
            out["rows"], out["rows_recorded"], out["rows_trimmed"] = rows, len(rows), True
    if len(canonical_json(out).encode("utf-8")) > MAX_DATA_BYTES:
        raise ValueError(f"the {kind} event of job {job.job_id} is too big to record")
    return out


# --------------------------------------------------------------------------- reading back


def format_ms(ms: int) -> str:
    """A UTC timestamp with milliseconds.

    >>> format_ms(1_700_000_000_123)
    '2023-11-14T22:13:20.123Z'
    """
    stamp = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def one_line(text: str, width: int = 100) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _processed(n: Any) -> str:
    return human_bytes(n) if isinstance(n, int) else "? bytes"


def summarize(event: Event) -> str:
    """One line saying what an event records.

    >>> summarize(Event("s", 1, "classification", 0, "j", "p",
    ...                 {"decision": "approve", "reasons": ["restricted read"]}, "", 0))
    'classified approve: restricted read'
    >>> summarize(Event("s", 1, "result", 0, "j", "p", {"total_rows": 3, "rows_recorded": 2,
    ...                 "masking": [{"column": "ssn", "strategy": "last4", "reason": "x"}]}, "", 0))
    'result: 3 rows (2 recorded), masked ssn (last4)'
    """
    d = event.data
    kind = event.kind
    if event.defect:
        return f"UNREADABLE: {event.defect}"
    if kind == "request":
        return f"request ({d.get('client', {}).get('request_kind', '?')}): " + one_line(
            str(d.get("statement", ""))
        )
    if kind == "classification":
        reasons = "; ".join(d.get("reasons") or ()) or "no reason given"
        return f"classified {d.get('decision')}: {one_line(reasons)}"
    if kind == "blocked":
        return "blocked: " + one_line(str(d.get("message", "")))
    if kind == "approval_requested":
        return "approval requested: " + one_line("; ".join(d.get("reasons") or ()))
    if kind == "notified":
        how = "found the message already posted" if d.get("found_existing") else "posted"
        return f"approvers notified in Slack ({how}, {d.get('channel')} {d.get('ts')})"
    if kind == "approval_decided":
        who = d.get("approver") or "?"
        via = f" via {d['via']}" if d.get("via") else ""
        return f"approval {d.get('outcome', 'decided')} by {who}{via}"
    if kind in ("denied", "expired"):
        who = f" by {d['approver']}" if d.get("approver") else ""
        return f"{kind}{who}: " + one_line(str(d.get("reason") or d.get("message") or ""))
    if kind == "execution_started":
        return (
            f"execution started: BigQuery job {d.get('warehouse_job_id')} (attempt "
            f"{d.get('attempt', 1)})"
        )
    if kind == "execution_finished":
        err = d.get("error")
        if err:
            return f"execution failed: {err.get('reason')}: {one_line(str(err.get('message')))}"
        return (
            f"execution finished: {_processed(d.get('total_bytes_processed'))} processed in "
            f"{d.get('duration_ms', '?')} ms"
        )
    if kind == "result":
        line = f"result: {d.get('total_rows', 0)} rows ({d.get('rows_recorded', 0)} recorded)"
        if d.get("truncated"):
            line += ", truncated"
        masked = [f"{m.get('column')} ({m.get('strategy')})" for m in d.get("masking") or ()]
        if masked:
            line += ", masked " + ", ".join(masked)
        return line
    return f"{kind}: " + one_line(canonical_json(d))
