"""The session record's chain: MAC-chained events and the session head.

A *session* groups one principal's requests (see :func:`bqgate.service.gateway.session_id_for`).
Each session is an append-only list of :class:`Event`; every event carries the MAC of the
one before it (``prev_mac``) and its own ``mac``: HMAC-SHA256 under the chain key
(:mod:`bqgate.chain`) over a canonical encoding of everything it says. Editing, removing or
reordering a stored event breaks the chain at that event, and without the key nobody can
re-seal it; :mod:`bqgate.verification` checks chains against the checkpoints kept outside
Firestore (:mod:`bqgate.anchors`), which also show truncated and deleted sessions.

Pure: plain values in, plain values out. What each kind of event records is
:mod:`bqgate.audit.record`; ``bqgate.adapters.firestore_audit`` stores the events.

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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from bqgate.chain import GENESIS, ChainKey

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.@:+=-]{1,200}$")

__all__ = [
    "Event",
    "SessionHead",
    "canonical_json",
    "event_id_for",
    "event_mac",
    "seal",
    "session_doc_id",
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
