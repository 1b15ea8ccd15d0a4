"""Verifying the session record: MAC chains against the checkpoints kept outside Firestore.

:func:`verify_session` checks one session and :func:`verify` a set of them; both return
plain values (:class:`SessionReport`, :class:`Report`, with ``to_dict()`` for a web view)
and name every problem they find:

``edited``     an event's content no longer matches its MAC (edited, whether or not someone
               recomputed the later links: without the chain key no MAC can be recomputed)
``rewritten``  an event is not the one a checkpoint recorded at its position (the chain was
               rebuilt from there or before: only someone holding the chain key could)
``truncated``  events are missing at the end (or the start) of a session, and a checkpoint
               or the session head says they existed and had not expired
``deleted``    a checkpoint names the session and Firestore holds nothing of it
``broken``     any other break: an unreadable, moved, duplicated or foreign event, a link
               to the wrong event, a key the verifier does not hold
``unanchored`` (only with ``stale_after_ms``) events written longer ago than that and still
               not checkpointed

Events written after a session's last checkpoint are reported as its *unanchored tail*
(:attr:`SessionReport.unanchored`); they verify like any other event, but until they are
checkpointed someone who can write Firestore could remove them without a trace.

Pure: plain values in, plain values out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bqgate.anchors import AnchorIndex, Checkpoint
from bqgate.audit.chain import Event, SessionHead, event_id_for, event_mac
from bqgate.audit.record import format_ms
from bqgate.chain import GENESIS, Keyring

FindingKind = Literal["edited", "rewritten", "truncated", "deleted", "broken", "unanchored"]
Status = Literal[
    "intact", "expired", "edited", "rewritten", "truncated", "deleted", "broken", "unanchored"
]

__all__ = [
    "Finding",
    "FindingKind",
    "Report",
    "SessionReport",
    "Status",
    "expired_prefix",
    "verify",
    "verify_chain",
    "verify_session",
]


@dataclass(frozen=True)
class Finding:
    """One problem: what kind, at which stored event (``""``: the session), and why."""

    kind: FindingKind
    event_id: str
    message: str

    def describe(self) -> str:
        where = f"event {self.event_id}: " if self.event_id else ""
        return f"{self.kind}: {where}{self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "event_id": self.event_id, "message": self.message}


@dataclass(frozen=True)
class SessionReport:
    """What verification found about one session."""

    session_id: str
    status: Status
    stored: int
    expired: int = 0
    anchored_seq: int = 0
    anchored_at_ms: int | None = None
    unanchored: tuple[int, int] | None = None
    unanchored_since_ms: int | None = None
    findings: tuple[Finding, ...] = ()
    principal: str = ""
    label: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("intact", "expired")

    def describe(self, now_ms: int | None = None) -> str:
        """One line: ``ok``/``BROKEN``, the session, and what holds or what broke.

        >>> SessionReport("s", "intact", 3, anchored_seq=3, anchored_at_ms=0).describe()
        'ok      session s: 3 events, chain intact, checkpointed through event 3'
        >>> r = SessionReport("s", "deleted", 0, findings=(Finding("deleted", "", "gone"),))
        >>> r.describe()
        'BROKEN  session s: deleted: gone'
        """
        if not self.ok:
            return f"BROKEN  session {self.session_id}: " + "; ".join(
                f.describe() for f in self.findings
            )
        if self.status == "expired":
            return f"ok      session {self.session_id}: removed by retention (expired)"
        parts = [f"{self.stored} events, chain intact"]
        if self.expired:
            parts.append(f"events 1 to {self.expired} removed by retention")
        if self.anchored_seq:
            parts.append(f"checkpointed through event {self.anchored_seq}")
        if self.unanchored:
            first, last = self.unanchored
            span = f"event {first}" if first == last else f"events {first}-{last}"
            age = ""
            if now_ms is not None and self.unanchored_since_ms is not None:
                age = (
                    f", oldest written {max(now_ms - self.unanchored_since_ms, 0) / 1000:.1f} s ago"
                )
            parts.append(f"{span} not yet checkpointed{age}")
        return f"ok      session {self.session_id}: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "status": self.status,
            "ok": self.ok,
            "stored": self.stored,
            "expired": self.expired,
            "anchored_seq": self.anchored_seq,
            "anchored_at_ms": self.anchored_at_ms,
            "unanchored": list(self.unanchored) if self.unanchored else None,
            "unanchored_since_ms": self.unanchored_since_ms,
            "findings": [f.to_dict() for f in self.findings],
            "principal": self.principal,
            "label": self.label,
        }


@dataclass(frozen=True)
class Report:
    """Verification of a set of sessions; ``problems`` are checkpoint lines that do not
    verify (someone added or altered them)."""

    sessions: tuple[SessionReport, ...]
    problems: tuple[str, ...] = ()
    checkpoints_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and all(s.ok for s in self.sessions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sessions": [s.to_dict() for s in self.sessions],
            "problems": list(self.problems),
            "checkpoints_read": self.checkpoints_read,
        }


# --------------------------------------------------------------------------- the chain


def expired_prefix(events: Sequence[Event], now_ms: int) -> int:
    """How many leading events are missing because retention removed them (0 if none).

    The first stored event names its predecessor's expiry; if that has passed, the
    events before it may legitimately be gone.

    >>> e = Event("s", 4, "k", 10, "j", "p", {}, "ab", 99, prev_expire_at_ms=50)
    >>> expired_prefix([e], now_ms=60), expired_prefix([e], now_ms=40)
    (3, 0)
    """
    if not events or events[0].seq <= 1 or events[0].defect:
        return 0
    before = events[0].prev_expire_at_ms
    return events[0].seq - 1 if before is not None and before <= now_ms else 0


def verify_chain(
    events: Sequence[Event],
    *,
    keys: Keyring,
    head: SessionHead | None = None,
    now_ms: int = 0,
    session_id: str | None = None,
) -> Finding | None:
    """Recompute a session's MAC chain; return its first problem, ``None`` if intact.

    Checks, event by event: the document is readable, it sits at the place its ``seq``
    says, belongs to the session, was sealed with a key the verifier holds, its content
    still matches its MAC, and it links to the MAC of the event before. With ``head``,
    also that no event is missing at the end. Leading events removed by retention (see
    :func:`expired_prefix`) are not a problem.

    >>> from dataclasses import replace
    >>> from bqgate.audit.chain import seal
    >>> from bqgate.chain import ChainKey
    >>> k = ChainKey(b"k" * 32); ring = Keyring([k])
    >>> a = seal(session_id="s", seq=1, kind="k", at_ms=1, job_id="j", principal="p",
    ...          data={}, prev=None, expire_at_ms=9, key=k)
    >>> b = seal(session_id="s", seq=2, kind="k", at_ms=2, job_id="j", principal="p",
    ...          data={}, prev=a, expire_at_ms=9, key=k)
    >>> verify_chain([a, b], keys=ring) is None
    True
    >>> verify_chain([replace(a, data={"x": 1}), b], keys=ring).describe()
    'edited: event 00000001: its content does not match its MAC (edited after it was written)'
    >>> verify_chain([b], keys=ring, now_ms=5).describe()
    'truncated: event 00000002: events 1 to 1 are missing before it (not expired)'
    >>> verify_chain([a, b], keys=ring, head=SessionHead("s", last_seq=3)).describe()
    'truncated: event 00000003: the session head records 3 events, 2 are stored'
    """
    start = expired_prefix(events, now_ms)
    expected_seq = start + 1
    prev_mac: str | None = None if start else GENESIS
    session = session_id or (
        head.session_id if head is not None else (events[0].session_id if events else "")
    )
    for index, event in enumerate(events):
        eid = event.event_id or event_id_for(event.seq)
        if event.defect:
            return Finding("broken", eid, event.defect)
        if event.seq != expected_seq:
            if index == 0 and event.seq > 1:
                return Finding(
                    "truncated",
                    eid,
                    f"events 1 to {event.seq - 1} are missing before it (not expired)",
                )
            if event.seq > expected_seq:
                return Finding(
                    "broken", eid, f"event {event_id_for(expected_seq)} is missing before it"
                )
            return Finding(
                "broken",
                eid,
                f"it says it is event {event.seq}, expected {expected_seq} "
                "(reordered or duplicated)",
            )
        if event.event_id and event.event_id != event_id_for(event.seq):
            return Finding(
                "broken", eid, f"it is stored as {event.event_id} but says it is event {event.seq}"
            )
        if session and event.session_id != session:
            return Finding(
                "broken", eid, f"it belongs to session {event.session_id!r}, not {session!r}"
            )
        key = keys.get(event.key_id)
        if key is None:
            return Finding(
                "broken",
                eid,
                f"it is sealed with key {event.key_id or '(none)'!s}, which this verifier "
                "does not hold (forged, or sealed before a key rotation: pass the old key)",
            )
        if event_mac(key, event) != event.mac:
            return Finding(
                "edited", eid, "its content does not match its MAC (edited after it was written)"
            )
        if prev_mac is not None and event.prev_mac != prev_mac:
            which = "the genesis value" if index == 0 else "the MAC of the event before"
            return Finding(
                "broken",
                eid,
                f"its prev_mac is not {which} (an event before it was removed or replaced)",
            )
        prev_mac = event.mac
        expected_seq += 1
    if head is not None:
        stored = expected_seq - 1
        if head.last_seq > stored:
            return Finding(
                "truncated",
                event_id_for(stored + 1),
                f"the session head records {head.last_seq} events, {len(events)} are stored",
            )
        if head.last_seq < stored:
            last = events[-1]
            return Finding(
                "broken",
                last.event_id or event_id_for(last.seq),
                f"the session head records only {head.last_seq} events",
            )
        if events and head.last_mac != events[-1].mac:
            last = events[-1]
            return Finding(
                "broken",
                last.event_id or event_id_for(last.seq),
                "its MAC is not the one the session head records",
            )
    return None


# --------------------------------------------------------------------------- with anchors


def _anchor_findings(
    head: SessionHead | None,
    events: Sequence[Event],
    anchors: Sequence[Checkpoint],
    now_ms: int,
) -> list[Finding]:
    """What the checkpoints (those still within retention) say is missing or different."""
    live = [cp for cp in anchors if cp.expire_at_ms > now_ms]
    if not live:
        return []
    by_seq = {e.seq: e for e in events if not e.defect}
    stored_max = max(by_seq, default=0)
    out: list[Finding] = []
    last = max(live, key=lambda c: c.seq)
    if not events and head is None:
        out.append(
            Finding(
                "deleted",
                "",
                f"the session is gone: a checkpoint of {format_ms(last.at_ms)} names "
                f"{last.seq} events of {last.principal or 'its principal'}, Firestore holds "
                "none of them (and no session head)",
            )
        )
        return out
    if last.seq > stored_max:
        out.append(
            Finding(
                "truncated",
                event_id_for(stored_max + 1),
                f"events {stored_max + 1} to {last.seq} are missing at the end: the checkpoint "
                f"of {format_ms(last.at_ms)} names {last.seq} events, {stored_max} are stored",
            )
        )
    for cp in sorted(live, key=lambda c: c.seq):
        event = by_seq.get(cp.seq)
        if event is not None and event.mac != cp.mac:
            out.append(
                Finding(
                    "rewritten",
                    event.event_id or event_id_for(event.seq),
                    f"it is not the event checkpointed at {format_ms(cp.at_ms)} (its MAC "
                    "differs: the session was rebuilt from here or before with the chain key)",
                )
            )
            break
    return out


def verify_session(
    session_id: str,
    head: SessionHead | None,
    events: Sequence[Event],
    *,
    keys: Keyring,
    anchors: Sequence[Checkpoint] = (),
    now_ms: int,
    stale_after_ms: int | None = None,
) -> SessionReport:
    """Verify one session's chain, its head and its checkpoints (see the module docs).

    ``events`` in stored order (by event id), ``anchors`` every checkpoint of this
    session. With ``stale_after_ms``, events still not checkpointed that long after
    they were written are a problem (``unanchored``), not just reported.
    """
    events = sorted(events, key=lambda e: e.event_id or event_id_for(e.seq))
    principal = (head.principals[0] if head and head.principals else "") or next(
        (e.principal for e in events if e.principal), ""
    )
    label = head.label if head else ""
    if not principal and anchors:
        principal, label = anchors[-1].principal, anchors[-1].label
    findings: list[Finding] = []
    all_gone = not events and (
        head is None or (head.last_expire_at_ms is not None and head.last_expire_at_ms <= now_ms)
    )
    if not all_gone:
        chain = verify_chain(events, keys=keys, head=head, now_ms=now_ms, session_id=session_id)
        if chain is not None:
            findings.append(chain)
    for f in _anchor_findings(head, events, anchors, now_ms):
        if not any(g.kind == f.kind for g in findings):
            findings.append(f)
    latest = max(anchors, key=lambda c: c.seq) if anchors else None
    readable = [e for e in events if not e.defect]
    stored_max = max((e.seq for e in readable), default=0)
    anchored = latest.seq if latest else 0
    unanchored: tuple[int, int] | None = None
    since: int | None = None
    if stored_max > anchored:
        first = max(anchored, expired_prefix(events, now_ms)) + 1
        unanchored = (first, stored_max)
        since = next((e.at_ms for e in readable if e.seq >= first), None)
        if (
            stale_after_ms is not None
            and since is not None
            and now_ms - since > stale_after_ms
            and not findings
        ):
            findings.append(
                Finding(
                    "unanchored",
                    event_id_for(first),
                    f"events {first} to {stored_max} were written at {format_ms(since)} and "
                    "are still not checkpointed (a lost checkpoint, or events added without "
                    "the gateway)",
                )
            )
    status: Status
    if findings:
        status = findings[0].kind
    elif all_gone:
        status = "expired"
    else:
        status = "intact"
    return SessionReport(
        session_id=session_id,
        status=status,
        stored=len(events),
        expired=expired_prefix(events, now_ms),
        anchored_seq=anchored,
        anchored_at_ms=latest.at_ms if latest else None,
        unanchored=unanchored,
        unanchored_since_ms=since,
        findings=tuple(findings),
        principal=principal,
        label=label,
    )


Loader = Callable[[str], tuple[SessionHead | None, Sequence[Event]]]


def verify(
    session_ids: Iterable[str],
    load: Loader,
    *,
    keys: Keyring,
    anchors: AnchorIndex,
    now_ms: int,
    stale_after_ms: int | None = None,
) -> Report:
    """Verify every session in ``session_ids`` (pass the union of the stored sessions and
    ``anchors.sessions()``, so deleted ones are included); ``load(id)`` returns its head
    (or None) and its stored events.

    >>> from bqgate.audit.chain import seal
    >>> from bqgate.anchors import Checkpoint
    >>> from bqgate.chain import ChainKey
    >>> k = ChainKey(b"k" * 32)
    >>> e = seal(session_id="a", seq=1, kind="k", at_ms=1, job_id="j", principal="p",
    ...          data={}, prev=None, expire_at_ms=99, key=k)
    >>> idx = AnchorIndex.build([Checkpoint("a", 1, e.mac, 1, 99, "p", "dev"),
    ...                          Checkpoint("gone", 4, "ff", 1, 99, "p", "dev")])
    >>> stored = {"a": (SessionHead("a", last_seq=1, last_mac=e.mac), [e])}
    >>> report = verify(sorted(set(stored) | set(idx.sessions())),
    ...                 lambda s: stored.get(s, (None, [])), keys=Keyring([k]),
    ...                 anchors=idx, now_ms=50)
    >>> [(s.session_id, s.status) for s in report.sessions], report.ok
    ([('a', 'intact'), ('gone', 'deleted')], False)
    """
    reports = []
    for sid in dict.fromkeys(session_ids):
        head, events = load(sid)
        reports.append(
            verify_session(
                sid,
                head,
                events,
                keys=keys,
                anchors=anchors.of(sid),
                now_ms=now_ms,
                stale_after_ms=stale_after_ms,
            )
        )
    return Report(tuple(reports), tuple(anchors.problems), anchors.sources)
