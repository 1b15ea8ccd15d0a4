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
from typing import Any

from bqgate import verification
from bqgate.anchors import AnchorIndex
from bqgate.audit.chain import Event, SessionHead, canonical_json
from bqgate.audit.record import format_ms
from bqgate.audit.rejudge import judge_under, rejudge
from bqgate.chain import ChainKey, ChainKeyError, Keyring
from bqgate.commands.session_views import render_rejudge, render_timeline, replay_steps
from bqgate.errors import InvalidRequest, NotFound
from bqgate.policy import parse_duration
from bqgate.ports import Evidence, SessionReader


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
        "verify",
        help="check MAC chains and checkpoints; exit 1 naming every edited, rewritten, "
        "truncated or deleted session",
    )
    verify.add_argument(
        "session", nargs="?", help="one session (default: every stored or checkpointed one)"
    )
    verify.add_argument("--file", type=Path, help="verify an exported .jsonl file instead")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument(
        "--strict",
        nargs="?",
        const="5m",
        default=None,
        metavar="AGE",
        help="also fail on events not checkpointed AGE after they were written (default 5m)",
    )
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
    parser.add_argument(
        "--anchor-bucket",
        default=None,
        metavar="BUCKET",
        help="Cloud Storage bucket of the checkpoints (with --project; default "
        "$BQGATE_ANCHOR_BUCKET)",
    )
    parser.add_argument(
        "--anchor-dir",
        type=Path,
        default=None,
        help="folder of the checkpoints (dev default: anchors/ in the dev state folder)",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        action="append",
        default=[],
        help="file holding a chain key (repeatable: old keys after a rotation); default "
        "$BQGATE_AUDIT_KEY, in dev the dev stack's key",
    )


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


class _Evidence:
    def __init__(self, keys: Keyring | None, anchors: AnchorIndex) -> None:
        self.keys = keys
        self.anchors = anchors


def _dev_dir(args: argparse.Namespace) -> Path | None:
    if args.project:
        return None
    from bqgate.dev import issuer

    try:
        endpoints = issuer.read_endpoints(issuer.find_dev_dir(args.dev_dir))
    except issuer.DevStackNotFound:
        return None
    state = endpoints.get("state_dir")
    return Path(state) if state else issuer.find_dev_dir(args.dev_dir)


def open_evidence(args: argparse.Namespace) -> Evidence:
    """The chain keys and every checkpoint, from the dev stack or the given places."""
    import os

    from bqgate.chain import DEV_KEY_FILE

    dev = _dev_dir(args)
    texts = [p.read_text(encoding="utf-8") for p in args.key_file]
    if not texts and os.environ.get("BQGATE_AUDIT_KEY"):
        texts.append(os.environ["BQGATE_AUDIT_KEY"])
    if not texts and dev is not None and (dev / DEV_KEY_FILE).exists():
        texts.append((dev / DEV_KEY_FILE).read_text())
    try:
        keys = Keyring(ChainKey.from_text(t) for t in texts) if texts else None
    except ChainKeyError as exc:
        raise InvalidRequest(str(exc)) from None
    if keys is None:
        return _Evidence(None, AnchorIndex())
    bucket = args.anchor_bucket or (
        os.environ.get("BQGATE_ANCHOR_BUCKET") if args.project else None
    )
    folder = args.anchor_dir or (dev / "anchors" if dev is not None else None)
    if bucket:
        from bqgate.adapters.anchor_sinks import open_gcs_sink

        anchors = AnchorIndex.read(open_gcs_sink(args.project, bucket).read(), keys)
    elif folder is not None:
        from bqgate.adapters.anchor_sinks import FolderSink

        anchors = AnchorIndex.read(FolderSink(folder).read(), keys)
    else:
        anchors = AnchorIndex()
    return _Evidence(keys, anchors)


def resolve(reader: SessionReader, name: str) -> str:
    """The stored id of a session given by its id or by its client label."""
    if reader.head(name) is not None or reader.events(name):
        return name
    heads = reader.by_label(name)
    if len(heads) == 1:
        return heads[0].session_id
    if len(heads) > 1:
        owners = ", ".join(f"{h.session_id} ({', '.join(h.principals)})" for h in heads)
        raise InvalidRequest(f"several sessions use the label {name!r}: {owners}; name one")
    return name


def _load(reader: SessionReader, name: str) -> tuple[str, SessionHead | None, list[Event]]:
    session_id = resolve(reader, name)
    head = reader.head(session_id)
    events = reader.events(session_id)
    if head is None and not events:
        raise NotFound(f"no session {name!r} in the session record")
    return session_id, head, events


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
            h.label or "-",
            ", ".join(h.principals),
            format_ms(h.started_ms),
            format_ms(h.last_ms),
            str(h.last_seq),
            str(h.counts.get("request", 0)),
            str(h.counts.get("blocked", 0) + h.counts.get("denied", 0)),
        ]
        for h in heads
    ]
    header = [
        "SESSION",
        "LABEL",
        "PRINCIPALS",
        "STARTED",
        "LAST ACTIVITY",
        "EVENTS",
        "REQUESTS",
        "REFUSED",
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _chain_line(
    args: argparse.Namespace,
    session_id: str,
    head: SessionHead | None,
    events: Sequence[Event],
) -> str:
    evidence = open_evidence(args)
    if evidence.keys is None:
        return "chain: not verified (no chain key: set BQGATE_AUDIT_KEY or pass --key-file)"
    now = _now_ms()
    report = verification.verify_session(
        session_id,
        head,
        events,
        keys=evidence.keys,
        anchors=evidence.anchors.of(session_id),
        now_ms=now,
    )
    if not report.ok:
        return "chain: BROKEN: " + "; ".join(f.describe() for f in report.findings)
    line = report.describe(now).split(": ", 1)[1]
    return f"chain: intact ({line})"


def run_show(args: argparse.Namespace) -> int:
    """``sessions show``."""
    sid, head, events = _load(open_reader(args), args.session)
    _print(render_timeline(head, events))
    print(_chain_line(args, sid, head, events))
    return 0


def run_replay(args: argparse.Namespace) -> int:
    """``sessions replay``: the timeline as it happened, or re-judged under ``--policy``."""
    if args.speed <= 0:
        raise InvalidRequest("--speed must be above 0")
    sid, head, events = _load(open_reader(args), args.session)
    if args.policy is not None:
        return _rejudge(args, events)
    print(f"replaying session {sid}: {len(events)} events")
    for step in replay_steps(events):
        if not args.no_wait and step.delay_ms:
            time.sleep(min(step.delay_ms / 1000 / args.speed, args.max_gap))
        _print(step.lines)
        sys.stdout.flush()
    print()
    print(_chain_line(args, sid, head, events))
    return 0


def _rejudge(args: argparse.Namespace, events: Sequence[Event]) -> int:
    from bqgate.policy import load_policy

    results = rejudge(events, judge_under(load_policy(args.policy)))
    _print(render_rejudge(results, str(args.policy)))
    return 1 if args.fail_on_change and any(r.changed for r in results) else 0


def run_export(args: argparse.Namespace) -> int:
    """``sessions export --format jsonl``: one event per line, hashes included."""
    _, _, events = _load(open_reader(args), args.session)
    lines = [canonical_json(e.to_export()) + "\n" for e in events]
    if args.output is not None:
        args.output.write_text("".join(lines), encoding="utf-8")
        print(f"wrote {len(lines)} events to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write("".join(lines))
    return 0


def events_from_jsonl(text: str) -> list[Event]:
    """Events back from an ``export`` (a line that is not an object becomes a defect).

    >>> from bqgate.audit.chain import seal
    >>> e = seal(session_id="s", seq=1, kind="k", at_ms=1, job_id="j", principal="p",
    ...          data={"a": [1]}, prev=None, expire_at_ms=2, key=ChainKey(b"k" * 32))
    >>> events_from_jsonl(canonical_json(e.to_export()) + "\\n") == [e]
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
            events.append(Event("", 0, "", 0, "", "", {}, "", 0, defect=defect))
            continue
        if not isinstance(doc.get("data"), str):
            doc["data"] = canonical_json(doc.get("data"))
        events.append(Event.from_doc(str(doc.get("event_id") or ""), doc))
    return events


def run_verify(args: argparse.Namespace) -> int:
    """``sessions verify``: exit 1 if any session fails (or a checkpoint is forged)."""
    evidence = open_evidence(args)
    if evidence.keys is None:
        raise InvalidRequest(
            "no chain key to verify with: set BQGATE_AUDIT_KEY or pass --key-file "
            "(in dev, the dev stack's state folder holds it)"
        )
    now = _now_ms()
    stale = parse_duration(args.strict) * 1000 if args.strict else None
    if args.file is not None:
        events = events_from_jsonl(args.file.read_text(encoding="utf-8"))
        sid = events[0].session_id if events else str(args.file)
        report = verification.Report(
            (
                verification.verify_session(
                    sid,
                    None,
                    events,
                    keys=evidence.keys,
                    anchors=evidence.anchors.of(sid),
                    now_ms=now,
                    stale_after_ms=stale,
                ),
            ),
            tuple(evidence.anchors.problems),
        )
        return _print_report(args, report, now, label=str(args.file))
    reader = open_reader(args)
    if args.session:
        sid = resolve(reader, args.session)
        if reader.head(sid) is None and not reader.events(sid) and not evidence.anchors.of(sid):
            raise NotFound(f"no session {args.session!r} in the session record or checkpoints")
        ids = [sid]
    else:
        since = parse_since(args.since, now) if args.since else None
        heads = reader.list_sessions(principal=args.principal, since_ms=since, limit=100_000)
        ids = [h.session_id for h in heads]
        ids += evidence.anchors.sessions(principal=args.principal, since_ms=since)
        if not ids:
            print("no sessions to verify", file=sys.stderr)
            return (
                0
                if not evidence.anchors.problems
                else _print_report(
                    args, verification.Report((), tuple(evidence.anchors.problems)), now
                )
            )

    def load(sid: str) -> tuple[SessionHead | None, list[Event]]:
        return reader.head(sid), reader.events(sid)

    report = verification.verify(
        ids, load, keys=evidence.keys, anchors=evidence.anchors, now_ms=now, stale_after_ms=stale
    )
    return _print_report(args, report, now)


def _print_report(
    args: argparse.Namespace, report: verification.Report, now: int, label: str | None = None
) -> int:
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.ok else 1
    for s in report.sessions:
        line = s.describe(now)
        if label is not None:
            line = line.replace(f"session {s.session_id}", label, 1)
        print(line)
    for problem in report.problems:
        print(f"FORGED  checkpoint {problem}")
    if len(report.sessions) > 1 or report.problems:
        intact = sum(s.ok for s in report.sessions)
        print(f"{intact} of {len(report.sessions)} sessions intact")
    return 0 if report.ok else 1
