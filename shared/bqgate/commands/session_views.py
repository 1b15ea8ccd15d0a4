"""What ``bqgate sessions`` prints: timelines, result tables, replays and re-judgings.

Pure text from the session record (:mod:`bqgate.audit`); :mod:`bqgate.commands.sessions`
reads the record and prints these lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bqgate.audit.chain import Event, SessionHead, canonical_json
from bqgate.audit.record import format_ms, one_line, summarize
from bqgate.audit.rejudge import Rejudged

__all__ = ["Step", "render_rejudge", "render_rows", "render_timeline", "replay_steps"]


def render_timeline(head: SessionHead | None, events: Sequence[Event]) -> list[str]:
    """A session as readable lines: a header, then one line per event.

    >>> from bqgate.audit.chain import seal
    >>> from bqgate.chain import ChainKey
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
    return one_line(text, width)


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

    >>> from bqgate.audit.chain import seal
    >>> from bqgate.chain import ChainKey
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


def render_rejudge(results: Sequence[Rejudged], policy_name: str = "the new policy") -> list[str]:
    """What would change under another policy, statement by statement.

    >>> from bqgate.audit.rejudge import RecordedRequest
    >>> req = RecordedRequest("j1", 0, "SELECT 1", "a@x", (), "p", None, "allow", ())
    >>> print("\\n".join(render_rejudge([Rejudged(req, "block", ("stricter",))], "new.yaml")))
    statement 1 (job j1): allow -> block: SELECT 1
        now: stricter
    1 of 1 statements would be judged differently under new.yaml
    """
    lines = []
    for i, r in enumerate(results, start=1):
        mark = f"{r.request.decision} -> {r.decision}" if r.changed else f"{r.decision} (unchanged)"
        sql = one_line(r.request.sql, 80)
        lines.append(f"statement {i} (job {r.request.job_id}): {mark}: {sql}")
        if r.changed:
            lines.append("    now: " + ("; ".join(r.reasons) or "no reason given"))
    changed = sum(r.changed for r in results)
    lines.append(
        f"{changed} of {len(results)} statements would be judged differently under {policy_name}"
    )
    return lines
