"""What the approver console shows, as plain values: inbox items, decided requests,
search filters and a session's timeline.

Pure: built from what the approvals service, the job store and the session record
return; the Flask app (``bqgate.adapters.console_web``) only renders these.

>>> item = inbox_items([{"job_id": "j1", "owner": "agent@x", "groups": ["agents"],
...     "sql": "SELECT 1", "session_id": "s1", "tables": ["p.finance.ledger"],
...     "reasons": ["restricted read"],
...     "bytes_estimate": 2048, "created_ms": 0, "expire_at_ms": 900_000,
...     "approvals": [], "required": 1}], lambda project, dataset: "restricted")[0]
>>> item.tables[0].tier, item.bytes_text, describe_left(item.left_ms(60_000))
('restricted', '2.0 KiB (2,048 bytes)', '14 min 0 s left')
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bqgate import approvals as core
from bqgate import verification
from bqgate.anchors import Checkpoint
from bqgate.audit.chain import Event, SessionHead, canonical_json
from bqgate.audit.record import format_ms, summarize
from bqgate.chain import Keyring
from bqgate.jobs import DONE, Job
from bqgate.policy import parse_duration
from bqgate.ports import DecisionQuery
from bqgate.vocabulary import human_bytes

#: ``(project, dataset) -> tier`` (``Policy.tier_of``).
TierOf = Callable[[str, str], str | None]

#: Decisions the history can be searched by.
DECISIONS = (core.APPROVED, core.DENIED, core.EXPIRED)
#: How where a decision came from is named.
VIA_NAMES = {"console": "console", "slack": "Slack", "api": "approver API"}
#: Longest result cell shown (the session record keeps the whole value).
MAX_CELL_CHARS = 200


def utc(ms: int | None) -> str:
    """Epoch milliseconds as a readable UTC time.

    >>> utc(1_700_000_000_123), utc(None)
    ('2023-11-14 22:13:20 UTC', '-')
    """
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(ms: int | None) -> str:
    """Epoch milliseconds as ISO 8601 (for ``<time datetime>``).

    >>> iso(0)
    '1970-01-01T00:00:00.000Z'
    """
    return format_ms(ms) if ms is not None else ""


def describe_left(ms: int | None) -> str:
    """Time left before an expiry, in words.

    >>> describe_left(3_725_000), describe_left(59_400), describe_left(0), describe_left(None)
    ('1 h 2 min left', '59 s left', 'expired', 'no expiry')
    """
    if ms is None:
        return "no expiry"
    if ms <= 0:
        return "expired"
    seconds = ms // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min left"
    if minutes:
        return f"{minutes} min {secs} s left"
    return f"{secs} s left"


def via_name(via: str | None) -> str:
    """
    >>> via_name("slack"), via_name(None)
    ('Slack', '-')
    """
    return VIA_NAMES.get(via or "", via or "-")


# --------------------------------------------------------------------------- inbox


@dataclass(frozen=True)
class TableRef:
    """A table a request reads or writes, with the tier the policy gives its dataset."""

    fqn: str
    tier: str | None


def table_refs(tables: Sequence[str], tier_of: TierOf) -> tuple[TableRef, ...]:
    """
    >>> table_refs(["p.d.t", "weird"], lambda p, d: {"d": "prod"}.get(d))
    (TableRef(fqn='p.d.t', tier='prod'), TableRef(fqn='weird', tier=None))
    """
    out = []
    for fqn in tables:
        parts = str(fqn).rsplit(".", 2)
        tier = tier_of(parts[0], parts[1]) if len(parts) == 3 else None
        out.append(TableRef(str(fqn), tier))
    return tuple(out)


@dataclass(frozen=True)
class InboxItem:
    """One pending request the signed-in approver may decide."""

    job_id: str
    owner: str
    groups: tuple[str, ...]
    session_id: str
    tables: tuple[TableRef, ...]
    reasons: tuple[str, ...]
    bytes_estimate: int | None
    sql: str
    #: The statement that will run when it differs from ``sql`` (the masking rewrite).
    to_run: str | None
    statement_hash: str
    created_ms: int
    expire_at_ms: int | None
    approvals: tuple[core.Vote, ...]
    required: int
    #: What the executor measured each write would touch (see bqgate.sql.blast).
    blast_radius: tuple[str, ...] = ()
    #: Its group: the requester's pending requests of the same statement (this one is the
    #: newest; ``group_others`` are the rest, decidable with it in one go).
    group_size: int = 1
    group_others: tuple[str, ...] = ()

    @property
    def bytes_text(self) -> str:
        return human_bytes(self.bytes_estimate)

    def left_ms(self, now_ms: int) -> int | None:
        return None if self.expire_at_ms is None else self.expire_at_ms - now_ms


def blast_lines(record: Any) -> tuple[str, ...]:
    """The measured blast radius of a write, one line per target.

    >>> blast_lines([{"statement": 1, "target": "p.d.t", "touched": 1200, "total": 5000,
    ...               "limits": "at most 100 rows (above: approve)",
    ...               "over": "over the limit of 100 rows"}])
    ('touches 1,200 of 5,000 rows of p.d.t (24%): over the limit of 100 rows',)
    >>> blast_lines(None)
    ()
    """
    lines = []
    for entry in record or ():
        if not isinstance(entry, Mapping):
            continue
        touched, total = int(entry.get("touched") or 0), int(entry.get("total") or 0)
        share = f" ({touched / total:.0%})" if total else ""
        line = f"touches {touched:,} of {total:,} rows of {entry.get('target', '?')}{share}"
        if entry.get("over"):
            line += f": {entry['over']}"
        lines.append(line)
    return tuple(lines)


def _votes(raw: Any) -> tuple[core.Vote, ...]:
    return core.ApprovalRecord.from_doc({"approvals": raw or []}).votes


def inbox_items(pending: Sequence[Mapping[str, Any]], tier_of: TierOf) -> list[InboxItem]:
    """The approvals service's pending list as inbox items, newest first."""
    items = []
    for p in pending:
        sql = str(p.get("sql") or "")
        rewritten = p.get("rewritten_sql")  # the masking rewrite: the statement that runs
        items.append(
            InboxItem(
                job_id=str(p["job_id"]),
                owner=str(p.get("owner") or ""),
                groups=tuple(str(g) for g in p.get("groups") or ()),
                session_id=str(p.get("session_id") or f"job-{p['job_id']}"),
                tables=table_refs([str(t) for t in p.get("tables") or ()], tier_of),
                reasons=tuple(str(r) for r in p.get("reasons") or ()),
                bytes_estimate=p.get("bytes_estimate"),
                sql=sql,
                to_run=str(rewritten) if rewritten and str(rewritten) != sql else None,
                statement_hash=str(p.get("statement_hash") or ""),
                created_ms=int(p.get("created_ms") or 0),
                expire_at_ms=p.get("expire_at_ms"),
                approvals=_votes(p.get("approvals")),
                required=int(p.get("required") or 1),
                blast_radius=blast_lines(p.get("blast_radius")),
                group_size=int((p.get("group") or {}).get("size") or 1),
                group_others=tuple(
                    str(j)
                    for j in (p.get("group") or {}).get("job_ids") or ()
                    if str(j) != str(p["job_id"])
                ),
            )
        )
    items.sort(key=lambda i: (i.created_ms, i.job_id), reverse=True)
    return items


# --------------------------------------------------------------------------- history


@dataclass(frozen=True)
class HistoryRow:
    """A decided request: who decided, when, where and why, and what became of it."""

    job_id: str
    owner: str
    status: str
    deciders: tuple[str, ...]
    via: str | None
    votes: tuple[core.Vote, ...]
    decided_at_ms: int | None
    reason: str | None
    tables: tuple[str, ...]
    session_id: str
    sql: str
    outcome: str


def _outcome(job: Job, status: str) -> str:
    if status != core.APPROVED:
        return "not run"
    if job.state != DONE:
        return "approved, waiting to run"
    if job.error:
        return f"failed: {job.error.get('message', 'error')}"
    if job.num_dml_affected_rows is not None:
        return f"ran: {job.num_dml_affected_rows:,} rows changed"
    return f"ran: {job.total_rows or 0:,} rows"


def history_row(job: Job) -> HistoryRow:
    """
    >>> job = Job(job_id="j", project="p", location="US", sql="SELECT 1", owner="a@x",
    ...           state="DONE", error={"reason": "accessDenied", "message": "Denied by b@x: no"},
    ...           approval={"status": "denied", "denied_by": "b@x", "denied_via": "console",
    ...                     "reason": "no", "decided_at_ms": 5})
    >>> r = history_row(job)
    >>> r.status, r.deciders, via_name(r.via), r.reason, r.outcome
    ('denied', ('b@x',), 'console', 'no', 'not run')
    """
    rec = core.record_of(job)
    deciders = (rec.denied_by,) if rec.status == core.DENIED and rec.denied_by else rec.approvers
    return HistoryRow(
        job_id=job.job_id,
        owner=job.owner,
        status=rec.status,
        deciders=tuple(deciders),
        via=rec.decided_via,
        votes=rec.votes,
        decided_at_ms=rec.decided_at_ms,
        reason=rec.reason,
        tables=job.classification.tables,
        session_id=job.session_id or f"job-{job.job_id}",
        sql=job.sql,
        outcome=_outcome(job, rec.status),
    )


def parse_when(text: str, now_ms: int) -> int:
    """Epoch ms from a search field: a duration ago (``90m``, ``24h``, ``7d``) or an ISO
    date or time (UTC unless it names a zone).

    >>> parse_when("2h", now_ms=10_000_000)
    2800000
    >>> parse_when("2025-01-31", 0), parse_when("2025-01-31T00:00:01", 0)
    (1738281600000, 1738281601000)
    >>> parse_when("yesterday", 0)
    Traceback (most recent call last):
    ValueError: expected a duration (24h, 7d) or a date and time (2025-01-31T09:00), got 'yesterday'
    """
    text = text.strip()
    try:
        return now_ms - parse_duration(text) * 1000
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"expected a duration (24h, 7d) or a date and time (2025-01-31T09:00), got {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


@dataclass(frozen=True)
class HistorySearch:
    """The history page's search form, validated (``errors`` says what was wrong)."""

    principal: str = ""
    table: str = ""
    decision: str = ""
    since: str = ""
    until: str = ""
    before_ms: int | None = None
    errors: tuple[str, ...] = ()
    since_ms: int | None = None
    until_ms: int | None = None

    def query(self, limit: int) -> DecisionQuery:
        before = self.until_ms
        if self.before_ms is not None:
            before = self.before_ms if before is None else min(before, self.before_ms)
        return DecisionQuery(
            principal=self.principal.lower() or None,
            table=self.table or None,
            status=self.decision or None,
            since_ms=self.since_ms,
            before_ms=before,
            limit=limit,
        )

    def args(self, **change: Any) -> dict[str, str]:
        """The search as URL query arguments (for "older" links)."""
        values = {
            "principal": self.principal,
            "table": self.table,
            "decision": self.decision,
            "since": self.since,
            "until": self.until,
        }
        values.update({k: str(v) for k, v in change.items() if v is not None})
        return {k: v for k, v in values.items() if v}


def parse_history_search(args: Mapping[str, str], now_ms: int) -> HistorySearch:
    """
    >>> s = parse_history_search({"principal": " Alice@Example.com ", "decision": "denied",
    ...                           "since": "1h", "table": "p.d.t"}, now_ms=7_200_000)
    >>> s.query(50)
    DecisionQuery(principal='alice@example.com', table='p.d.t', status='denied', \
since_ms=3600000, before_ms=None, limit=50)
    >>> parse_history_search({"decision": "maybe", "until": "soon"}, 0).errors
    ("Decision: expected one of approved, denied, expired, got 'maybe'", \
"Until: expected a duration (24h, 7d) or a date and time (2025-01-31T09:00), got 'soon'")
    """

    def text(name: str, limit: int = 320) -> str:
        return " ".join(str(args.get(name) or "").split())[:limit]

    errors = []
    decision = text("decision")
    if decision and decision not in DECISIONS:
        errors.append(f"Decision: expected one of {', '.join(DECISIONS)}, got {decision!r}")
        decision = ""
    times: dict[str, int | None] = {}
    for name in ("since", "until"):
        value = text(name, 64)
        times[name] = None
        if value:
            try:
                times[name] = parse_when(value, now_ms)
            except ValueError as exc:
                errors.append(f"{name.title()}: {exc}")
    before = None
    if text("before"):
        try:
            before = int(text("before"))
        except ValueError:
            errors.append("Older than: not a time")
    return HistorySearch(
        principal=text("principal"),
        table=text("table", 1100),
        decision=decision,
        since=text("since", 64),
        until=text("until", 64),
        before_ms=before,
        errors=tuple(errors),
        since_ms=times["since"],
        until_ms=times["until"],
    )


# --------------------------------------------------------------------------- sessions


@dataclass(frozen=True)
class ChainCheck:
    """What verifying a session's chain said."""

    intact: bool
    text: str


def check_chain(
    session_id: str,
    head: SessionHead | None,
    events: Sequence[Event],
    *,
    keys: Keyring | None,
    anchors: Sequence[Checkpoint],
    now_ms: int,
) -> ChainCheck:
    """Verify a session's record: the console's one call into the session record's
    verification (MAC chain, head and the checkpoints kept outside Firestore).

    >>> from bqgate.chain import ChainKey
    >>> from dataclasses import replace
    >>> from bqgate.audit.chain import seal
    >>> key = ChainKey(b"k" * 32)
    >>> e = seal(session_id="s", seq=1, kind="request", at_ms=1, job_id="j",
    ...                principal="a@x", data={}, prev=None, expire_at_ms=10**15, key=key)
    >>> check_chain("s", None, [e], keys=Keyring([key]), anchors=(), now_ms=2).text
    'chain verified: 1 events, event 1 not yet checkpointed'
    >>> check_chain("s", None, [replace(e, data={"x": 1})], keys=Keyring([key]),
    ...             anchors=(), now_ms=2).text  # doctest: +ELLIPSIS
    'chain BROKEN: edited: event 00000001: ...'
    >>> check_chain("s", None, [e], keys=None, anchors=(), now_ms=2)
    ChainCheck(intact=False, text='chain not verified: the console has no chain key')
    """
    if keys is None:
        return ChainCheck(False, "chain not verified: the console has no chain key")
    report = verification.verify_session(
        session_id, head, events, keys=keys, anchors=anchors, now_ms=now_ms
    )
    if not report.ok:
        return ChainCheck(
            False, "chain BROKEN: " + "; ".join(f.describe() for f in report.findings)
        )
    parts = [f"{report.stored} events"]
    if report.expired:
        parts.append(f"events 1 to {report.expired} removed by retention")
    if report.anchored_seq:
        parts.append(f"checkpointed through event {report.anchored_seq}")
    if report.unanchored:
        first, last = report.unanchored
        span = f"event {first}" if first == last else f"events {first} to {last}"
        parts.append(f"{span} not yet checkpointed")
    return ChainCheck(True, "chain verified: " + ", ".join(parts))


@dataclass(frozen=True)
class ResultTable:
    """Masked result rows as the session recorded them."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    total_rows: int
    truncated: bool
    masked: tuple[str, ...]


@dataclass(frozen=True)
class Step:
    """One event of a statement's timeline."""

    seq: int
    kind: str
    label: str
    tone: str  # ok, bad, wait, info
    at_ms: int
    offset_ms: int
    summary: str
    details: tuple[tuple[str, str], ...] = ()
    result: ResultTable | None = None
    defect: str | None = None
    #: The statement that runs, when bqgate rewrote it (masking at the source).
    rewritten_sql: str | None = None


@dataclass(frozen=True)
class StatementBlock:
    """One request of the session and everything that happened to it."""

    number: int
    job_id: str
    principal: str
    at_ms: int
    sql: str | None
    decision: str | None
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Timeline:
    session_id: str
    principals: tuple[str, ...]
    issuer: str
    started_ms: int
    last_ms: int
    event_count: int
    statements: tuple[StatementBlock, ...]
    chain: ChainCheck
    counts: Mapping[str, int] = field(default_factory=dict)
    label: str = ""


_LABELS = {
    "request": ("Request", "info"),
    "classification": ("Classified", "info"),
    "blocked": ("Blocked", "bad"),
    "approval_requested": ("Approval requested", "wait"),
    "approval_decided": ("Approval", "ok"),
    "denied": ("Denied", "bad"),
    "expired": ("Expired", "bad"),
    "blast_radius": ("Blast radius measured", "info"),
    "execution_started": ("Execution started", "info"),
    "execution_finished": ("Execution finished", "ok"),
    "result": ("Result", "ok"),
}


def cell(value: Any) -> str:
    """
    >>> cell(None), cell([1, "a"]), cell(3.5), cell("x" * 300)[-3:]
    ('NULL', '[1,"a"]', '3.5', 'xx…')
    """
    if value is None:
        text = "NULL"
    elif isinstance(value, (list, dict)):
        text = canonical_json(value)
    else:
        text = str(value)
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def _result(d: Mapping[str, Any]) -> ResultTable:
    schema = [f for f in d.get("schema") or () if isinstance(f, Mapping)]
    rows = [r for r in d.get("rows") or () if isinstance(r, list)]
    return ResultTable(
        columns=tuple(str(f.get("name", "?")) for f in schema),
        rows=tuple(tuple(cell(v) for v in r) for r in rows),
        total_rows=int(d.get("total_rows") or 0),
        truncated=bool(d.get("truncated")),
        masked=tuple(
            f"{m.get('column')} ({m.get('strategy')})"
            for m in d.get("masking") or ()
            if isinstance(m, Mapping)
        ),
    )


def _details(e: Event) -> tuple[tuple[str, str], ...]:
    d = e.data
    pairs: list[tuple[str, Any]] = []
    if e.kind == "request":
        pairs = [
            ("Request", (d.get("client") or {}).get("request_kind")),
            ("Groups", ", ".join(d.get("groups") or ()) or None),
            ("Default dataset", d.get("default_dataset")),
        ]
    elif e.kind == "classification":
        pairs = [
            ("Decision", d.get("decision")),
            ("Reasons", "; ".join(d.get("reasons") or ()) or None),
            ("Tables", ", ".join(d.get("tables") or ()) or None),
        ]
    elif e.kind == "approval_requested":
        pairs = [
            ("Estimated bytes", human_bytes(d.get("bytes_estimate"))),
            ("Reasons", "; ".join(d.get("reasons") or ()) or None),
            ("Blast radius", "; ".join(blast_lines(d.get("blast_radius"))) or None),
        ]
    elif e.kind == "blast_radius":
        pairs = [("Writes", "; ".join(blast_lines(d.get("writes"))) or None)]
    elif e.kind == "approval_decided":
        pairs = [
            ("Outcome", d.get("outcome")),
            ("By", d.get("approver")),
            ("Via", via_name(d.get("via"))),
            ("Message", d.get("message")),
        ]
    elif e.kind == "denied":
        pairs = [
            ("By", d.get("approver")),
            ("Via", via_name(d.get("via"))),
            ("Reason", d.get("reason") or d.get("message")),
        ]
    elif e.kind in ("expired", "blocked"):
        pairs = [("Message", d.get("message"))]
    elif e.kind == "execution_started":
        pairs = [("BigQuery job", d.get("warehouse_job_id")), ("Attempt", d.get("attempt"))]
    elif e.kind == "execution_finished":
        err = d.get("error") or {}
        pairs = [
            (
                "Bytes processed",
                human_bytes(d.get("total_bytes_processed"))
                if d.get("total_bytes_processed") is not None
                else None,
            ),
            ("Duration", f"{d['duration_ms']} ms" if d.get("duration_ms") is not None else None),
            ("Error", f"{err.get('reason')}: {err.get('message')}" if err else None),
        ]
    return tuple((k, str(v)) for k, v in pairs if v not in (None, ""))


def _step(e: Event, start_ms: int) -> Step:
    label, tone = _LABELS.get(e.kind, (e.kind.replace("_", " ").capitalize(), "info"))
    if e.kind == "execution_finished" and e.data.get("error"):
        label, tone = "Execution failed", "bad"
    if e.kind == "approval_decided" and e.data.get("outcome") == "recorded":
        tone = "wait"
    return Step(
        seq=e.seq,
        kind=e.kind,
        label=label,
        tone="bad" if e.defect else tone,
        at_ms=e.at_ms,
        offset_ms=max(e.at_ms - start_ms, 0),
        summary=summarize(e),
        details=_details(e) if not e.defect else (),
        result=_result(e.data) if e.kind == "result" and not e.defect else None,
        defect=e.defect,
        rewritten_sql=str(e.data["rewritten_sql"]) if e.data.get("rewritten_sql") else None,
    )


def timeline(head: SessionHead | None, events: Sequence[Event], chain: ChainCheck) -> Timeline:
    """The session as statements in the order they arrived, each with its events.

    >>> from bqgate.chain import ChainKey
    >>> from bqgate.audit.chain import seal
    >>> key = ChainKey(b"k" * 32)
    >>> a = seal(session_id="s", seq=1, kind="request", at_ms=1000, job_id="j1",
    ...                principal="a@x", data={"statement": "SELECT 1"}, prev=None,
    ...                expire_at_ms=10**15, key=key)
    >>> b = seal(session_id="s", seq=2, kind="blocked", at_ms=1250, job_id="j1",
    ...                principal="a@x", data={"message": "no"}, prev=a, expire_at_ms=10**15,
    ...                key=key)
    >>> t = timeline(None, [a, b], ChainCheck(True, "chain verified: 2 events"))
    >>> [(s.label, s.offset_ms) for s in t.statements[0].steps], t.chain.intact
    ([('Request', 0), ('Blocked', 250)], True)
    """
    start = events[0].at_ms if events else 0
    blocks: dict[str, dict[str, Any]] = {}
    for e in events:
        block = blocks.setdefault(
            e.job_id,
            {
                "job_id": e.job_id,
                "principal": e.principal,
                "at_ms": e.at_ms,
                "sql": None,
                "decision": None,
                "steps": [],
            },
        )
        if e.kind == "request" and block["sql"] is None:
            block["sql"] = str(e.data.get("statement", ""))
            block["at_ms"] = e.at_ms
        if e.kind == "classification":
            block["decision"] = e.data.get("decision")
        block["steps"].append(_step(e, start))
    statements = tuple(
        StatementBlock(
            number=i,
            job_id=b["job_id"],
            principal=b["principal"],
            at_ms=b["at_ms"],
            sql=b["sql"],
            decision=b["decision"],
            steps=tuple(b["steps"]),
        )
        for i, b in enumerate(blocks.values(), start=1)
    )
    principals = head.principals if head else tuple(dict.fromkeys(e.principal for e in events))
    return Timeline(
        session_id=head.session_id if head else (events[0].session_id if events else ""),
        principals=tuple(principals),
        issuer=head.issuer if head else "",
        started_ms=head.started_ms if head else start,
        last_ms=head.last_ms if head else (events[-1].at_ms if events else 0),
        event_count=len(events),
        statements=statements,
        chain=chain,
        counts=dict(head.counts) if head else {},
        label=head.label if head else "",
    )


def export_jsonl(events: Sequence[Event]) -> str:
    """The session as ``bqgate sessions export --format jsonl`` writes it."""
    return "".join(canonical_json(e.to_export()) + "\n" for e in events)


__all__ = [
    "DECISIONS",
    "ChainCheck",
    "HistoryRow",
    "HistorySearch",
    "InboxItem",
    "ResultTable",
    "StatementBlock",
    "Step",
    "TableRef",
    "Timeline",
    "blast_lines",
    "check_chain",
    "describe_left",
    "export_jsonl",
    "history_row",
    "inbox_items",
    "parse_history_search",
    "parse_when",
    "table_refs",
    "timeline",
    "utc",
    "via_name",
]
