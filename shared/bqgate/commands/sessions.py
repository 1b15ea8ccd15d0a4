"""``bqgate sessions``: list, show, replay, export and verify recorded agent sessions.

::

    bqgate sessions list [--principal EMAIL] [--since 24h|2025-01-31]
    bqgate sessions show SESSION
    bqgate sessions replay SESSION [--no-wait | --speed 10]
    bqgate sessions replay SESSION --policy NEW.yaml    # what would a new policy change?
    bqgate sessions export SESSION --format jsonl > session.jsonl
    bqgate sessions verify [SESSION | --file session.jsonl]

In dev the session record is read from the running dev stack's Firestore emulator
(``--dev-dir``, default ``$BQGATE_DEV_DIR`` or ``.bqgate-dev``); pass ``--project``
(and ``--database``) to read the real Firestore with your application default
credentials. ``verify`` exits 1 when a chain is broken and names the first broken
event; every command exits 2 on a usage error or an unknown session.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from bqgate import audit
from bqgate.errors import InvalidRequest, NotFound
from bqgate.policy import parse_duration


class SessionReader(Protocol):
    """What the commands read (``FirestoreRecorder`` implements it)."""

    def head(self, session_id: str) -> audit.SessionHead | None: ...

    def events(self, session_id: str) -> list[audit.Event]: ...

    def list_sessions(
        self, *, principal: str | None = None, since_ms: int | None = None, limit: int = 100
    ) -> list[audit.SessionHead]: ...


def register(subparsers: Any) -> None:
    """Add ``sessions`` and its actions to the ``bqgate`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sessions",
        help="list, show, replay, export and verify recorded agent sessions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inner = parser.add_subparsers(dest="sessions_command", metavar="ACTION")

    listing = inner.add_parser("list", help="sessions, latest activity first")
    _filters(listing)
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    _source(listing)
    listing.set_defaults(func=run_list)

    show = inner.add_parser("show", help="a session's timeline")
    show.add_argument("session")
    _source(show)
    show.set_defaults(func=run_show)

    replay = inner.add_parser(
        "replay", help="step through a session as it happened (or re-judge it: --policy)"
    )
    replay.add_argument("session")
    replay.add_argument("--no-wait", action="store_true", help="do not pause between steps")
    replay.add_argument(
        "--speed", type=float, default=1.0, help="replay this many times faster (default 1)"
    )
    replay.add_argument(
        "--max-gap",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="longest pause between two steps (default 10)",
    )
    replay.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="re-judge every recorded statement under this policy and print what changes",
    )
    replay.add_argument(
        "--fail-on-change",
        action="store_true",
        help="with --policy: exit 1 if any decision would change",
    )
    _source(replay)
    replay.set_defaults(func=run_replay)

    export = inner.add_parser("export", help="every event with its hashes, one JSON per line")
    export.add_argument("session")
    export.add_argument("--format", choices=["jsonl"], default="jsonl")
    export.add_argument("--output", type=Path, help="write here instead of stdout")
    _source(export)
    export.set_defaults(func=run_export)

    verify = inner.add_parser(
        "verify", help="recompute hash chains; exit 1 naming the first broken event"
    )
    verify.add_argument("session", nargs="?", help="one session (default: every listed one)")
    verify.add_argument("--file", type=Path, help="verify an exported .jsonl file instead")
    _filters(verify)
    _source(verify)
    verify.set_defaults(func=run_verify)

    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--principal", metavar="EMAIL", help="only sessions of this principal")
    parser.add_argument(
        "--since",
        metavar="WHEN",
        help="only sessions active since: a duration ago (90m, 24h, 7d) or a date/time "
        "(2025-01-31, 2025-01-31T09:00:00Z)",
    )


def _source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dev-dir",
        type=Path,
        default=None,
        help="dev state folder (default $BQGATE_DEV_DIR, else .bqgate-dev)",
    )
    parser.add_argument(
        "--project", help="read the real Firestore of this project (not the dev stack)"
    )
    parser.add_argument("--database", default=None, help="Firestore database id (with --project)")


# --------------------------------------------------------------------------- helpers


def parse_since(text: str, now_ms: int) -> int:
    """Epoch milliseconds from ``--since``: a duration ago, or an ISO date/time (UTC if
    no zone is given).

    >>> parse_since("2h", now_ms=10_000_000)
    2800000
    >>> parse_since("2025-01-31", now_ms=0), parse_since("2025-01-31T00:00:01Z", now_ms=0)
    (1738281600000, 1738281601000)
    >>> parse_since("yesterday", now_ms=0)
    Traceback (most recent call last):
    ...
    bqgate.errors.InvalidRequest: --since: expected a duration (24h, 7d) or a date, got 'yesterday'
    """
    try:
        return now_ms - parse_duration(text.strip()) * 1000
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"--since: expected a duration (24h, 7d) or a date, got {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def _now_ms() -> int:
    return int(time.time() * 1000)


def open_reader(args: argparse.Namespace) -> SessionReader:
    """The session record: real Firestore with ``--project``, else the dev stack's emulator."""
    from bqgate.adapters.firestore_audit import FirestoreRecorder, open_client

    if args.project:
        client = open_client(args.project, database=args.database)
    else:
        from bqgate.dev import issuer

        try:
            endpoints = issuer.read_endpoints(issuer.find_dev_dir(args.dev_dir))
        except issuer.DevStackNotFound as exc:
            raise InvalidRequest(f"{exc} (or pass --project to read the real Firestore)") from None
        if not endpoints.get("firestore"):
            raise InvalidRequest("the dev stack's endpoints.json has no firestore endpoint")
        client = open_client(
            endpoints.get("project") or "demo-project",
            database=args.database,
            emulator_host=endpoints["firestore"],
        )
    # Reading only: retention and record_rows do not matter here.
    return FirestoreRecorder(client, retention_seconds=0, record_rows=0)


def _load(
    reader: SessionReader, session_id: str
) -> tuple[audit.SessionHead | None, list[audit.Event]]:
    head = reader.head(session_id)
    events = reader.events(session_id)
    if head is None and not events:
        raise NotFound(f"no session {session_id!r} in the session record")
    return head, events


def _print(lines: Sequence[str]) -> None:
    for line in lines:
        print(line)


# --------------------------------------------------------------------------- actions


def run_list(args: argparse.Namespace) -> int:
    """``sessions list``."""
    since = parse_since(args.since, _now_ms()) if args.since else None
    heads = open_reader(args).list_sessions(
        principal=args.principal, since_ms=since, limit=args.limit
    )
    if not heads:
        print("no sessions", file=sys.stderr)
        return 0
    rows = [
        [
            h.session_id,
            ", ".join(h.principals),
            audit.format_ms(h.started_ms),
            audit.format_ms(h.last_ms),
            str(h.last_seq),
            str(h.counts.get("request", 0)),
            str(h.counts.get("blocked", 0) + h.counts.get("denied", 0)),
        ]
        for h in heads
    ]
    header = ["SESSION", "PRINCIPALS", "STARTED", "LAST ACTIVITY", "EVENTS", "REQUESTS", "REFUSED"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _chain_line(head: audit.SessionHead | None, events: Sequence[audit.Event]) -> str:
    now = _now_ms()
    broken = audit.verify_chain(events, head=head, now_ms=now)
    if broken is not None:
        return f"chain: BROKEN at {broken.describe()}"
    expired = audit.expired_prefix(events, now)
    note = f"; events 1 to {expired} removed by retention" if expired else ""
    return f"chain: intact ({len(events)} events{note})"


def run_show(args: argparse.Namespace) -> int:
    """``sessions show``."""
    head, events = _load(open_reader(args), args.session)
    _print(audit.render_timeline(head, events))
    print(_chain_line(head, events))
    return 0


def run_replay(args: argparse.Namespace) -> int:
    """``sessions replay``: the timeline as it happened, or re-judged under ``--policy``."""
    if args.speed <= 0:
        raise InvalidRequest("--speed must be above 0")
    head, events = _load(open_reader(args), args.session)
    if args.policy is not None:
        return _rejudge(args, events)
    print(f"replaying session {args.session}: {len(events)} events")
    for step in audit.replay_steps(events):
        if not args.no_wait and step.delay_ms:
            time.sleep(min(step.delay_ms / 1000 / args.speed, args.max_gap))
        _print(step.lines)
        sys.stdout.flush()
    print()
    print(_chain_line(head, events))
    return 0


def _rejudge(args: argparse.Namespace, events: Sequence[audit.Event]) -> int:
    from bqgate.policy import load_policy
    from bqgate.sql.classify import classify

    policy = load_policy(args.policy)

    def judge(req: audit.RecordedRequest) -> tuple[str, Sequence[str]]:
        verdict = classify(
            req.sql,
            policy=policy,
            principal=req.principal,
            groups=req.groups,
            default_project=req.default_project,
            default_dataset=req.default_dataset,
        )
        return verdict.decision, verdict.reasons

    results = audit.rejudge(events, judge)
    _print(audit.render_rejudge(results, str(args.policy)))
    return 1 if args.fail_on_change and any(r.changed for r in results) else 0


def run_export(args: argparse.Namespace) -> int:
    """``sessions export --format jsonl``: one event per line, hashes included."""
    _, events = _load(open_reader(args), args.session)
    lines = [audit.canonical_json(e.to_export()) + "\n" for e in events]
    if args.output is not None:
        args.output.write_text("".join(lines), encoding="utf-8")
        print(f"wrote {len(lines)} events to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write("".join(lines))
    return 0


def events_from_jsonl(text: str) -> list[audit.Event]:
    """Events back from an ``export`` (a line that is not an object becomes a defect).

    >>> e = audit.seal(session_id="s", seq=1, kind="k", at_ms=1, job_id="j", principal="p",
    ...                data={"a": [1]}, prev=None, expire_at_ms=2)
    >>> events_from_jsonl(audit.canonical_json(e.to_export()) + "\\n") == [e]
    True
    """
    events = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            defect = f"line {number} is not a JSON object"
            events.append(audit.Event("", 0, "", 0, "", "", {}, "", 0, defect=defect))
            continue
        if not isinstance(doc.get("data"), str):
            doc["data"] = audit.canonical_json(doc.get("data"))
        events.append(audit.Event.from_doc(str(doc.get("event_id") or ""), doc))
    return events


def _verify_one(label: str, head: audit.SessionHead | None, events: Sequence[audit.Event]) -> bool:
    now = _now_ms()
    broken = audit.verify_chain(events, head=head, now_ms=now)
    if broken is None:
        expired = audit.expired_prefix(events, now)
        note = f", events 1 to {expired} removed by retention" if expired else ""
        tip = events[-1].hash[:16] if events else "-"
        print(f"ok      {label}: {len(events)} events, chain intact (tip {tip}{note})")
        return True
    print(f"BROKEN  {label}: {broken.describe()}")
    return False


def run_verify(args: argparse.Namespace) -> int:
    """``sessions verify``: exit 1 if any chain is broken."""
    if args.file is not None:
        events = events_from_jsonl(args.file.read_text(encoding="utf-8"))
        return 0 if _verify_one(str(args.file), None, events) else 1
    reader = open_reader(args)
    if args.session:
        head, events = _load(reader, args.session)
        return 0 if _verify_one(f"session {args.session}", head, events) else 1
    since = parse_since(args.since, _now_ms()) if args.since else None
    heads = reader.list_sessions(principal=args.principal, since_ms=since, limit=10_000)
    if not heads:
        print("no sessions to verify", file=sys.stderr)
        return 0
    ok = [_verify_one(f"session {h.session_id}", h, reader.events(h.session_id)) for h in heads]
    print(f"{sum(ok)} of {len(ok)} sessions intact")
    return 0 if all(ok) else 1
