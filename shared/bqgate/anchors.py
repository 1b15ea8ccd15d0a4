"""Checkpoints: the session heads, kept outside Firestore where its writers cannot reach.

After every append the recorder makes a :class:`Checkpoint` of the session's new head:
which session, how many events, the MAC of the last one, when, and whose. Checkpoints go
to append-only sinks (a Cloud Storage bucket with a retention policy and Cloud Logging in
the cloud; a folder of the dev state dir locally), one JSON line each, each line sealed
with a checkpoint MAC (a key derived from the chain key), so a line that someone who may
create objects in the bucket adds is recognised as forged.

Read back, all checkpoints together are the *global index* of sessions
(:class:`AnchorIndex`): every session the gateway ever recorded, with the heads it reached.
A session that Firestore no longer holds, or holds fewer events of than a checkpoint
names, or whose event at a checkpointed position has another MAC, was deleted, truncated
or rewritten (:mod:`bqgate.verification`).

Pure: stdlib only.

>>> key = ChainKey(b"k" * 32)
>>> cp = Checkpoint("s-1", 3, "ab" * 32, 1000, 9000, "a@x", "dev")
>>> line = encode_line(cp, key)
>>> parse_line(line, Keyring([key])) == cp
True
>>> parse_line(line.replace('"seq":3', '"seq":2'), Keyring([key]))
'its checkpoint MAC does not match (forged or altered)'
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bqgate.audit.chain import canonical_json
from bqgate.chain import ChainKey, Keyring

#: The JSON key a checkpoint line (or Cloud Logging entry payload) holds its record under.
RECORD_KEY = "bqgate_anchor"
#: What the checkpoint MAC key is derived for (see :meth:`ChainKey.derive`).
PURPOSE = "bqgate checkpoint v1"

__all__ = [
    "PURPOSE",
    "RECORD_KEY",
    "AnchorIndex",
    "Checkpoint",
    "encode_line",
    "parse_line",
    "read_text",
]


@dataclass(frozen=True)
class Checkpoint:
    """One checkpointed session head: event ``seq`` of ``session_id`` has MAC ``mac``.

    ``expire_at_ms`` is when that event's retention ends: after it, its absence (and that
    of the events before it) is retention, not tampering.
    """

    session_id: str
    seq: int
    mac: str
    at_ms: int
    expire_at_ms: int
    principal: str
    issuer: str
    label: str = ""

    def to_doc(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "seq": self.seq,
            "mac": self.mac,
            "at_ms": self.at_ms,
            "expire_at_ms": self.expire_at_ms,
            "principal": self.principal,
            "issuer": self.issuer,
            "label": self.label,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Checkpoint:
        """Raises ValueError if a field is missing or of the wrong type."""

        def text(name: str) -> str:
            value = doc.get(name)
            if not isinstance(value, str):
                raise ValueError(f"{name} is not a string")
            return value

        def integer(name: str) -> int:
            value = doc.get(name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} is not an integer")
            return value

        return cls(
            session_id=text("session_id"),
            seq=integer("seq"),
            mac=text("mac"),
            at_ms=integer("at_ms"),
            expire_at_ms=integer("expire_at_ms"),
            principal=text("principal"),
            issuer=text("issuer"),
            label=str(doc.get("label") or ""),
        )


def encode_line(cp: Checkpoint, key: ChainKey) -> str:
    """One sealed checkpoint as a JSON line (no newline): ``{bqgate_anchor, key_id, mac}``."""
    body = cp.to_doc()
    mac = key.derive(PURPOSE).mac(canonical_json(body))
    return canonical_json({RECORD_KEY: body, "key_id": key.key_id, "anchor_mac": mac})


def parse_line(line: str | Mapping[str, Any], keys: Keyring) -> Checkpoint | str:
    """The checkpoint a line holds, or why it cannot be trusted (a string).

    Accepts the line itself or an object holding it: a Cloud Logging entry exported by a
    log sink carries the record in ``jsonPayload``.
    """
    doc: Any = line
    if isinstance(line, str):
        try:
            doc = json.loads(line)
        except ValueError:
            return "not a JSON line"
    if isinstance(doc, Mapping) and isinstance(doc.get("jsonPayload"), Mapping):
        doc = doc["jsonPayload"]
    if not isinstance(doc, Mapping) or not isinstance(doc.get(RECORD_KEY), Mapping):
        return "not a checkpoint record"
    key = keys.get(str(doc.get("key_id") or ""))
    if key is None:
        return "sealed with an unknown key"
    body = doc[RECORD_KEY]
    if key.derive(PURPOSE).mac(canonical_json(body)) != doc.get("anchor_mac"):
        return "its checkpoint MAC does not match (forged or altered)"
    try:
        return Checkpoint.from_doc(body)
    except ValueError as exc:
        return f"malformed checkpoint: {exc}"


def read_text(source: str, text: str, keys: Keyring) -> tuple[list[Checkpoint], list[str]]:
    """Every checkpoint in one sink object (JSON lines), and the problems of the rest.

    Lines that are not checkpoint records at all (other log entries a sink may carry) are
    skipped; a record that does not verify is a problem naming ``source`` and its line.
    """
    found: list[Checkpoint] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        got = parse_line(line, keys)
        if isinstance(got, Checkpoint):
            found.append(got)
        elif got not in ("not a checkpoint record", "not a JSON line") or RECORD_KEY in line:
            problems.append(f"{source} line {number}: {got}")
    return found, problems


@dataclass
class AnchorIndex:
    """Every checkpoint read back, by session: the global index of sessions.

    >>> a = Checkpoint("s", 2, "m2", 20, 90, "a@x", "dev")
    >>> b = Checkpoint("s", 5, "m5", 50, 95, "a@x", "dev")
    >>> idx = AnchorIndex.build([b, a, a])
    >>> [c.seq for c in idx.of("s")], idx.latest("s") == b, idx.latest("t")
    ([2, 5], True, None)
    >>> idx.sessions(principal="a@x", since_ms=40), idx.sessions(since_ms=60)
    (['s'], [])
    """

    by_session: dict[str, list[Checkpoint]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    sources: int = 0

    @classmethod
    def build(
        cls, checkpoints: Iterable[Checkpoint], problems: Sequence[str] = (), sources: int = 0
    ) -> AnchorIndex:
        by: dict[str, dict[tuple[int, str], Checkpoint]] = {}
        for cp in checkpoints:
            by.setdefault(cp.session_id, {})[(cp.seq, cp.mac)] = cp
        return cls(
            {sid: sorted(cps.values(), key=lambda c: (c.seq, c.mac)) for sid, cps in by.items()},
            list(problems),
            sources,
        )

    @classmethod
    def read(cls, sources: Iterable[tuple[str, str]], keys: Keyring) -> AnchorIndex:
        """The index of every ``(name, text)`` sink object (see :func:`read_text`)."""
        found: list[Checkpoint] = []
        problems: list[str] = []
        count = 0
        for name, text in sources:
            count += 1
            cps, probs = read_text(name, text, keys)
            found += cps
            problems += probs
        return cls.build(found, problems, count)

    def of(self, session_id: str) -> list[Checkpoint]:
        """The distinct checkpoints of one session, by position."""
        return list(self.by_session.get(session_id, ()))

    def latest(self, session_id: str) -> Checkpoint | None:
        cps = self.by_session.get(session_id)
        return cps[-1] if cps else None

    def sessions(self, *, principal: str | None = None, since_ms: int | None = None) -> list[str]:
        """Checkpointed sessions (of ``principal``, active since ``since_ms``)."""
        out = []
        for sid, cps in self.by_session.items():
            if principal is not None and all(c.principal != principal for c in cps):
                continue
            if since_ms is not None and cps[-1].at_ms < since_ms:
                continue
            out.append(sid)
        return sorted(out)
