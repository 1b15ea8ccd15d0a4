"""The session record: MAC-chained events, timelines and replay.

A *session* groups one principal's requests (see :func:`bqgate.service.gateway.session_id_for`).
Each session is an append-only list of :class:`Event`; every event carries the MAC of the
one before it (``prev_mac``) and its own ``mac``: HMAC-SHA256 under the chain key
(:mod:`bqgate.chain`) over a canonical encoding of everything it says. Editing, removing or
reordering a stored event breaks the chain at that event, and without the key nobody can
re-seal it; :mod:`bqgate.verification` checks chains against the checkpoints kept outside
Firestore (:mod:`bqgate.anchors`), which also show truncated and deleted sessions.

Pure: plain values in, plain values out. ``bqgate.adapters.firestore_audit`` stores
the events; ``bqgate sessions`` renders them with the helpers below.

>>> key = ChainKey(b"k" * 32)
>>> e1 = seal(session_id="s", seq=1, kind="request", at_ms=1000, job_id="j1",
...           principal="a@x", data={"statement": "SELECT 1"}, prev=None,
...           expire_at_ms=9000, key=key)
>>> e2 = seal(session_id="s", seq=2, kind="blocked", at_ms=1001, job_id="j1",
...           principal="a@x", data={"message": "no"}, prev=e1, expire_at_ms=9001, key=key)
>>> e2.prev_mac == e1.mac, e1.mac == event_mac(key, e1)
(True, True)
>>> forged = replace(e1, data={"statement": "SELECT 2"})
>>> forged.mac == event_mac(key, forged)
False
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal, get_args

from bqgate.chain import GENESIS, ChainKey
from bqgate.vocabulary import human_bytes

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

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.@:+=-]{1,200}$")

__all__ = [
    "GENESIS",
    "KINDS",
    "MAX_DATA_BYTES",
    "ChainKey",
    "Event",
    "EventKind",
    "RecordedRequest",
    "Rejudged",
    "SessionHead",
    "Step",
    "canonical_json",
    "event_data",
    "event_id_for",
    "event_mac",
    "format_ms",
    "recorded_requests",
    "rejudge",
    "render_rejudge",
    "render_rows",
    "render_timeline",
    "replay_steps",
    "seal",
    "session_doc_id",
    "summarize",
    "to_plain",
]


# --------------------------------------------------------------------------- encoding


def to_plain(value: Any) -> Any:
    """``value`` as plain JSON values, the same way every time.

    Mappings get string keys, tuples and sets become lists (sets sorted), datetimes
    ISO 8601, ``Decimal`` its string, bytes base64, and non-finite floats the strings
    ``NaN``, ``Infinity`` and ``-Infinity`` (JSON has no spelling for them).

    >>> to_plain({"b": (1, 2.5), 3: {"x"}, "n": float("nan"), "d": Decimal("1.10")})
    {'b': [1, 2.5], '3': ['x'], 'n': 'NaN', 'd': '1.10'}
    >>> to_plain(object())
    Traceback (most recent call last):
    ...
    TypeError: cannot record a value of type object
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((to_plain(v) for v in value), key=canonical_json)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"cannot record a value of type {type(value).__name__}")


def canonical_json(value: Any) -> str:
    """The one JSON text of ``value``: sorted keys, no spaces, UTF-8 characters kept.

    Integers are written exactly; floats with Python's shortest round-trip form (so
    ``json.loads`` gives the same float back and re-encoding gives the same text);
    there is no other number form, so a value has exactly one encoding.

    >>> canonical_json({"b": 1, "a": [0.1, "é", None, True]})
    '{"a":[0.1,"é",null,true],"b":1}'
    >>> canonical_json(json.loads(canonical_json({"x": 1e21, "y": 2**70})))
    '{"x":1e+21,"y":1180591620717411303424}'
    """
    return json.dumps(
        to_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def event_id_for(seq: int) -> str:
    """The stored id of the ``seq``-th event of a session (sorts in order).

    >>> event_id_for(7)
    '00000007'
    """
    return f"{seq:08d}"


def session_doc_id(session_id: str) -> str:
    """The document id a session is stored under.

    Session ids come from a client label, so anything a document id cannot hold
    (``/``, ``.``, ``__x__``, very long) is replaced by a digest.

    >>> session_doc_id("s-1"), session_doc_id("a/b")
    ('s-1', 'h-c14cddc033f64b9dea80ea67')
    """
    if (
        _SAFE_ID.match(session_id)
        and session_id not in (".", "..")
        and not (session_id.startswith("__") and session_id.endswith("__"))
    ):
        return session_id
    return "h-" + hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:24]


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    """One recorded event of a session.

    ``mac`` covers every field but ``mac``, ``event_id`` and ``defect`` (``key_id`` names
    the chain key it was sealed with); ``prev_expire_at_ms`` (the expiry of the event
    before) lets verification tell events removed by retention from events removed by
    someone. ``defect`` says why a stored document could not be read back as an event.
    """

    session_id: str
    seq: int
    kind: str
    at_ms: int
    job_id: str
    principal: str
    data: Mapping[str, Any]
    prev_mac: str
    expire_at_ms: int
    prev_expire_at_ms: int | None = None
    key_id: str = ""
    mac: str = ""
    event_id: str = ""
    defect: str | None = None

    def body(self) -> dict[str, Any]:
        """Everything the MAC covers, except ``prev_mac`` (chained in separately)."""
        return {
            "session_id": self.session_id,
            "seq": self.seq,
            "kind": self.kind,
            "at_ms": self.at_ms,
            "job_id": self.job_id,
            "principal": self.principal,
            "data": self.data,
            "expire_at_ms": self.expire_at_ms,
            "prev_expire_at_ms": self.prev_expire_at_ms,
            "key_id": self.key_id,
        }

    def to_doc(self) -> dict[str, Any]:
        """The stored form: ``data`` as canonical JSON text (any JSON survives storage).

        >>> e = seal(session_id="s", seq=1, kind="k", at_ms=1, job_id="j", principal="p",
        ...          data={"rows": [[1, None]]}, prev=None, expire_at_ms=2,
        ...          key=ChainKey(b"k" * 32))
        >>> doc = e.to_doc(); doc["data"]
        '{"rows":[[1,null]]}'
        >>> Event.from_doc(e.event_id, doc) == e
        True
        """
        return {
            "session_id": self.session_id,
            "seq": self.seq,
            "kind": self.kind,
            "at_ms": self.at_ms,
            "job_id": self.job_id,
            "principal": self.principal,
            "data": canonical_json(self.data),
            "prev_mac": self.prev_mac,
            "expire_at_ms": self.expire_at_ms,
            "prev_expire_at_ms": self.prev_expire_at_ms,
            "key_id": self.key_id,
            "mac": self.mac,
        }

    def to_export(self) -> dict[str, Any]:
        """The event as one JSON object (``data`` as an object), for ``export``."""
        doc = self.to_doc()
        doc["data"] = to_plain(self.data)
        doc["event_id"] = self.event_id
        return doc

    @classmethod
    def from_doc(cls, event_id: str, doc: Mapping[str, Any]) -> Event:
        """Read a stored event back; a malformed document gives an event with ``defect``.

        >>> e = seal(session_id="s", seq=1, kind="k", at_ms=1, job_id="j", principal="p",
        ...          data={}, prev=None, expire_at_ms=2, key=ChainKey(b"k" * 32))
        >>> Event.from_doc(e.event_id, {**e.to_doc(), "seq": "1", "data": "{oops"}).defect
        'malformed stored event: data is not a JSON object; seq is not an integer'
        """
        problems: list[str] = []

        def text(name: str) -> str:
            value = doc.get(name)
            if not isinstance(value, str):
                problems.append(f"{name} is not a string")
                return ""
            return value

        def integer(name: str, optional: bool = False) -> int | None:
            value = doc.get(name)
            if value is None and optional:
                return None
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(f"{name} is not an integer")
                return 0
            return value

        data: Mapping[str, Any] = {}
        raw = doc.get("data")
        if isinstance(raw, str):
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                data = parsed
            else:
                problems.append("data is not a JSON object")
        else:
            problems.append("data is not a JSON text")
        event = cls(
            session_id=text("session_id"),
            seq=integer("seq") or 0,
            kind=text("kind"),
            at_ms=integer("at_ms") or 0,
            job_id=text("job_id"),
            principal=text("principal"),
            data=data,
            prev_mac=text("prev_mac"),
            expire_at_ms=integer("expire_at_ms") or 0,
            prev_expire_at_ms=integer("prev_expire_at_ms", optional=True),
            key_id=text("key_id"),
            mac=text("mac"),
            event_id=event_id,
        )
        if problems:
            return replace(event, defect="malformed stored event: " + "; ".join(problems))
        return event


def event_mac(key: ChainKey, event: Event) -> str:
    """HMAC-SHA256 (hex), under ``key``, of ``event.prev_mac``, a newline and the
    canonical body of ``event``.

    >>> key = ChainKey(b"k" * 32)
    >>> e = Event("s", 1, "k", 1, "j", "p", {}, GENESIS, 2, key_id=key.key_id)
    >>> event_mac(key, e) == event_mac(key, replace(e, mac="x", event_id="y"))
    True
    >>> event_mac(key, e) == event_mac(key, replace(e, at_ms=2))
    False
    """
    return key.mac(event.prev_mac + "\n" + canonical_json(event.body()))


def seal(
    *,
    session_id: str,
    seq: int,
    kind: str,
    at_ms: int,
    job_id: str,
    principal: str,
    data: Mapping[str, Any],
    prev: Event | None,
    expire_at_ms: int,
    key: ChainKey,
    prev_mac: str | None = None,
    prev_expire_at_ms: int | None = None,
) -> Event:
    """A new event linked to ``prev`` (or to ``prev_mac``/``prev_expire_at_ms`` when
    only the session head is at hand), sealed with ``key``."""
    if prev is not None:
        prev_mac, prev_expire_at_ms = prev.mac, prev.expire_at_ms
    event = Event(
        session_id=session_id,
        seq=seq,
        kind=kind,
        at_ms=at_ms,
        job_id=job_id,
        principal=principal,
        data=to_plain(data),
        prev_mac=prev_mac or GENESIS,
        expire_at_ms=expire_at_ms,
        prev_expire_at_ms=prev_expire_at_ms,
        key_id=key.key_id,
        event_id=event_id_for(seq),
    )
    return replace(event, mac=event_mac(key, event))


@dataclass(frozen=True)
class SessionHead:
    """The summary document of a session: whose, since when, and the chain's tip.

    ``label`` is the client's ``session_id`` label the session groups (empty for the
    automatic per-token session); the stored id is derived from it and the owner.
    """

    session_id: str
    principals: tuple[str, ...] = ()
    issuer: str = ""
    started_ms: int = 0
    last_ms: int = 0
    last_seq: int = 0
    last_mac: str = GENESIS
    last_expire_at_ms: int | None = None
    expire_at_ms: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)
    label: str = ""

    def to_doc(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "principals": list(self.principals),
            "principal": self.principals[0] if self.principals else "",
            "issuer": self.issuer,
            "started_ms": self.started_ms,
            "last_ms": self.last_ms,
            "last_seq": self.last_seq,
            "last_mac": self.last_mac,
            "last_expire_at_ms": self.last_expire_at_ms,
            "expire_at_ms": self.expire_at_ms,
            "counts": dict(self.counts),
            "label": self.label,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> SessionHead:
        """Read a head document back (missing fields take their defaults).

        >>> h = SessionHead("s", ("a@x",), "dev", 1, 2, 3, "ab", 9, 10, {"request": 1}, "l")
        >>> SessionHead.from_doc(h.to_doc()) == h
        True
        """
        return cls(
            session_id=str(doc.get("session_id", "")),
            principals=tuple(str(p) for p in doc.get("principals") or ()),
            issuer=str(doc.get("issuer", "")),
            started_ms=int(doc.get("started_ms") or 0),
            last_ms=int(doc.get("last_ms") or 0),
            last_seq=int(doc.get("last_seq") or 0),
            last_mac=str(doc.get("last_mac") or GENESIS),
            last_expire_at_ms=(
                None if doc.get("last_expire_at_ms") is None else int(doc["last_expire_at_ms"])
            ),
            expire_at_ms=int(doc.get("expire_at_ms") or 0),
            counts={str(k): int(v) for k, v in (doc.get("counts") or {}).items()},
            label=str(doc.get("label") or ""),
        )

    def advanced(self, event: Event, issuer: str, label: str = "") -> SessionHead:
        """The head after appending ``event``.

        >>> e = seal(session_id="s", seq=1, kind="request", at_ms=5, job_id="j",
        ...          principal="a@x", data={}, prev=None, expire_at_ms=50,
        ...          key=ChainKey(b"k" * 32))
        >>> h = SessionHead("s").advanced(e, "dev", "mine")
        >>> h.principals, h.started_ms, h.last_seq, h.counts, h.label
        (('a@x',), 5, 1, {'request': 1}, 'mine')
        """
        principals = self.principals
        if event.principal and event.principal not in principals:
            principals = (*principals, event.principal)
        counts = dict(self.counts)
        counts[event.kind] = counts.get(event.kind, 0) + 1
        return SessionHead(
            session_id=self.session_id,
            principals=principals,
            issuer=self.issuer or issuer,
            started_ms=self.started_ms if self.last_seq else event.at_ms,
            last_ms=event.at_ms,
            last_seq=event.seq,
            last_mac=event.mac,
            last_expire_at_ms=event.expire_at_ms,
            expire_at_ms=max(self.expire_at_ms, event.expire_at_ms),
            counts=counts,
            label=self.label or label,
        )


# --------------------------------------------------------------------------- recording


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


# --------------------------------------------------------------------------- rendering


def format_ms(ms: int) -> str:
    """A UTC timestamp with milliseconds.

    >>> format_ms(1_700_000_000_123)
    '2023-11-14T22:13:20.123Z'
    """
    stamp = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _one_line(text: str, width: int = 100) -> str:
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
        return f"request ({d.get('client', {}).get('request_kind', '?')}): " + _one_line(
            str(d.get("statement", ""))
        )
    if kind == "classification":
        reasons = "; ".join(d.get("reasons") or ()) or "no reason given"
        return f"classified {d.get('decision')}: {_one_line(reasons)}"
    if kind == "blocked":
        return "blocked: " + _one_line(str(d.get("message", "")))
    if kind == "approval_requested":
        return "approval requested: " + _one_line("; ".join(d.get("reasons") or ()))
    if kind == "notified":
        how = "found the message already posted" if d.get("found_existing") else "posted"
        return f"approvers notified in Slack ({how}, {d.get('channel')} {d.get('ts')})"
    if kind == "approval_decided":
        who = d.get("approver") or "?"
        via = f" via {d['via']}" if d.get("via") else ""
        return f"approval {d.get('outcome', 'decided')} by {who}{via}"
    if kind in ("denied", "expired"):
        who = f" by {d['approver']}" if d.get("approver") else ""
        return f"{kind}{who}: " + _one_line(str(d.get("reason") or d.get("message") or ""))
    if kind == "execution_started":
        return (
            f"execution started: BigQuery job {d.get('warehouse_job_id')} (attempt "
            f"{d.get('attempt', 1)})"
        )
    if kind == "execution_finished":
        err = d.get("error")
        if err:
            return f"execution failed: {err.get('reason')}: {_one_line(str(err.get('message')))}"
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
    return f"{kind}: " + _one_line(canonical_json(d))


def render_timeline(head: SessionHead | None, events: Sequence[Event]) -> list[str]:
    """A session as readable lines: a header, then one line per event.

    >>> e = seal(session_id="s", seq=1, kind="blocked", at_ms=1_700_000_000_000,
    ...          job_id="job123456789", principal="a@x", data={"message": "DROP is blocked"},
    ...          prev=None, expire_at_ms=0, key=ChainKey(b"k" * 32))
    >>> print("\\n".join(render_timeline(None, [e])))
    session s: 1 events, 1 jobs, principals a@x
      #1   2023-11-14T22:13:20.000Z  +0.000s  job123456789  blocked: DROP is blocked
    """
    session = head.session_id if head else (events[0].session_id if events else "?")
    principals = head.principals if head else tuple(dict.fromkeys(e.principal for e in events))
    jobs = len({e.job_id for e in events})
    lines = [
        f"session {session}: {len(events)} events, {jobs} jobs, principals "
        f"{', '.join(principals) or '?'}"
    ]
    if head and head.issuer:
        lines[0] += f", issuer {head.issuer}"
    start = events[0].at_ms if events else 0
    for e in events:
        lines.append(
            f"  #{e.seq:<3} {format_ms(e.at_ms)}  +{(e.at_ms - start) / 1000:.3f}s  "
            f"{e.job_id[:12]:<12}  {summarize(e)}"
        )
    return lines


def _cell(value: Any, width: int) -> str:
    text = (
        "NULL"
        if value is None
        else (canonical_json(value) if isinstance(value, (list, dict)) else str(value))
    )
    return _one_line(text, width)


def render_rows(
    schema: Sequence[Mapping[str, Any]], rows: Sequence[Sequence[Any]], width: int = 30
) -> list[str]:
    """A small text table of compact rows under their schema's column names.

    >>> print("\\n".join(render_rows([{"name": "id"}, {"name": "email"}],
    ...                              [[1, "a***@x.com"], [2, None]])))
    id | email
    ---+-----------
    1  | a***@x.com
    2  | NULL
    """
    names = [str(f.get("name", "?")) for f in schema]
    cells = [[_cell(v, width) for v in row] for row in rows]
    widths = [max([len(n)] + [len(r[i]) for r in cells if i < len(r)]) for i, n in enumerate(names)]
    out = [" | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip()]
    out.append("-+-".join("-" * w for w in widths))
    for r in cells:
        out.append(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
    return out


# --------------------------------------------------------------------------- replay


@dataclass(frozen=True)
class Step:
    """One replay step: wait ``delay_ms`` after the previous step, then show ``lines``."""

    delay_ms: int
    event: Event
    lines: tuple[str, ...]


def _agent_saw(event: Event) -> list[str]:
    d = event.data
    if event.kind == "blocked":
        return [f"    agent saw: 403 {d.get('reason', 'accessDenied')}: {d.get('message', '')}"]
    if event.kind in ("denied", "expired"):
        return [
            f"    agent saw: accessDenied: {d.get('message') or 'the request was ' + event.kind}"
        ]
    if event.kind == "approval_requested":
        return ["    agent saw: job PENDING (waiting for approval)"]
    if event.kind == "execution_finished" and d.get("error"):
        err = d["error"]
        return [f"    agent saw: {err.get('reason')}: {err.get('message')}"]
    if event.kind == "result":
        schema = d.get("schema") or []
        lines = [
            f"    agent saw: {d.get('total_rows', 0)} rows"
            + (" (truncated)" if d.get("truncated") else "")
        ]
        for m in d.get("masking") or ():
            lines.append(
                f"      masked {m.get('column')} with {m.get('strategy')}: {m.get('reason')}"
            )
        rows = d.get("rows") or []
        if schema and rows:
            lines += ["      " + line for line in render_rows(schema, rows)]
            if d.get("total_rows", 0) > len(rows):
                lines.append(
                    f"      ... {d.get('total_rows', 0) - len(rows)} more rows not recorded"
                )
        elif schema:
            lines.append("      columns: " + ", ".join(str(f.get("name")) for f in schema))
        return lines
    return []


def replay_steps(events: Sequence[Event]) -> list[Step]:
    """The session as it happened: each statement as it arrived, then what the agent saw.

    >>> key = ChainKey(b"k" * 32)
    >>> a = seal(session_id="s", seq=1, kind="request", at_ms=1000, job_id="j1",
    ...          principal="a@x", data={"statement": "DROP TABLE t"}, prev=None,
    ...          expire_at_ms=0, key=key)
    >>> b = seal(session_id="s", seq=2, kind="blocked", at_ms=1250, job_id="j1",
    ...          principal="a@x", data={"message": "DROP is blocked"}, prev=a, expire_at_ms=0,
    ...          key=key)
    >>> steps = replay_steps([a, b])
    >>> [s.delay_ms for s in steps]
    [0, 250]
    >>> print("\\n".join(steps[0].lines + steps[1].lines))
    <BLANKLINE>
    == statement 1 (job j1) at 1970-01-01T00:00:01.000Z by a@x
       DROP TABLE t
      +0.250s blocked: DROP is blocked
        agent saw: 403 accessDenied: DROP is blocked
    """
    steps: list[Step] = []
    statement = 0
    start = events[0].at_ms if events else 0
    prev_ms = start
    for e in events:
        lines: list[str] = []
        if e.kind == "request":
            statement += 1
            lines += [
                "",
                f"== statement {statement} (job {e.job_id}) at {format_ms(e.at_ms)} "
                f"by {e.principal}",
            ]
            lines += ["   " + line for line in str(e.data.get("statement", "")).splitlines()]
        else:
            lines.append(f"  +{(e.at_ms - start) / 1000:.3f}s {summarize(e)}")
            lines += _agent_saw(e)
        steps.append(Step(max(e.at_ms - prev_ms, 0), e, tuple(lines)))
        prev_ms = e.at_ms
    return steps


# --------------------------------------------------------------------------- re-judging


@dataclass(frozen=True)
class RecordedRequest:
    """A statement as the session recorded it, with the decision it got then."""

    job_id: str
    at_ms: int
    sql: str
    principal: str
    groups: tuple[str, ...]
    default_project: str
    default_dataset: str | None
    decision: str
    reasons: tuple[str, ...]


def recorded_requests(events: Iterable[Event]) -> list[RecordedRequest]:
    """Every recorded statement, in order, with its recorded classification."""
    requests: dict[str, Event] = {}
    verdicts: dict[str, Mapping[str, Any]] = {}
    for e in events:
        if e.kind == "request" and e.job_id not in requests:
            requests[e.job_id] = e
        elif e.kind == "classification":
            verdicts.setdefault(e.job_id, e.data)
    out = []
    for job_id, e in requests.items():
        d = e.data
        v = verdicts.get(job_id, {})
        out.append(
            RecordedRequest(
                job_id=job_id,
                at_ms=e.at_ms,
                sql=str(d.get("statement", "")),
                principal=str(d.get("principal") or e.principal),
                groups=tuple(str(g) for g in d.get("groups") or ()),
                # As BigQuery resolves names: `dataset.table` in the job's project, a bare
                # `table` in the default dataset (which may live in another project).
                default_project=str(d.get("project") or d.get("default_project") or ""),
                default_dataset=(
                    f"{d.get('default_project') or d.get('project')}.{d['default_dataset']}"
                    if d.get("default_dataset")
                    else None
                ),
                decision=str(v.get("decision", "unknown")),
                reasons=tuple(str(r) for r in v.get("reasons") or ()),
            )
        )
    return out


@dataclass(frozen=True)
class Rejudged:
    """A recorded statement judged again under another policy."""

    request: RecordedRequest
    decision: str
    reasons: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return self.decision != self.request.decision


#: ``judge(request) -> (decision, reasons)`` under the policy being tried.
Judge = Callable[[RecordedRequest], tuple[str, Sequence[str]]]


def rejudge(events: Iterable[Event], judge: Judge) -> list[Rejudged]:
    """Judge every recorded statement again.

    >>> key = ChainKey(b"k" * 32)
    >>> a = seal(session_id="s", seq=1, kind="request", at_ms=0, job_id="j1", principal="a@x",
    ...          data={"statement": "SELECT 1", "groups": []}, prev=None, expire_at_ms=0,
    ...          key=key)
    >>> b = seal(session_id="s", seq=2, kind="classification", at_ms=0, job_id="j1",
    ...          principal="a@x", data={"decision": "allow", "reasons": []}, prev=a,
    ...          expire_at_ms=0, key=key)
    >>> [r.changed for r in rejudge([a, b], lambda req: ("block", ["stricter"]))]
    [True]
    """
    out = []
    for req in recorded_requests(events):
        decision, reasons = judge(req)
        out.append(Rejudged(req, decision, tuple(reasons)))
    return out


def render_rejudge(results: Sequence[Rejudged], policy_name: str = "the new policy") -> list[str]:
    """What would change under another policy, statement by statement.

    >>> req = RecordedRequest("j1", 0, "SELECT 1", "a@x", (), "p", None, "allow", ())
    >>> print("\\n".join(render_rejudge([Rejudged(req, "block", ("stricter",))], "new.yaml")))
    statement 1 (job j1): allow -> block: SELECT 1
        now: stricter
    1 of 1 statements would be judged differently under new.yaml
    """
    lines = []
    for i, r in enumerate(results, start=1):
        mark = f"{r.request.decision} -> {r.decision}" if r.changed else f"{r.decision} (unchanged)"
        sql = _one_line(r.request.sql, 80)
        lines.append(f"statement {i} (job {r.request.job_id}): {mark}: {sql}")
        if r.changed:
            lines.append("    now: " + ("; ".join(r.reasons) or "no reason given"))
    changed = sum(r.changed for r in results)
    lines.append(
        f"{changed} of {len(results)} statements would be judged differently under {policy_name}"
    )
    return lines
