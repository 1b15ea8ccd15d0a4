"""The session record on Firestore.

Layout (both collection groups carry an ``expire_at`` timestamp for Firestore TTL)::

    sessions/{session}                 head: principals, issuer, label, started/last times,
                                       last_seq, last_mac, counts, expire_at
    sessions/{session}/events/{seq:08d}  one event (bqgate.audit.chain.Event.to_doc) + expire_at

An append is an optimistic transaction on the head: it reads the head, then commits
the next event and the new head in one atomic write that holds only if the event's
slot is still free and the head has not changed since it was read (its
``update_time``). Concurrent appends to one session therefore serialise into one
chain; a loser writes nothing and starts over from a fresh read, after a jittered
backoff. (Firestore's pessimistic transactions deadlock on the read-then-write of a
hot document and, on the emulator, wait out a lock timeout each time: with a handful
of writers they livelock.) Appends from one process also take turns on a local lock.

A job store commits a job's state change and the session events about it together: it
has the recorder prepare the events (``prepare``) and stage them into its own batch
(``stage``: conditioned on the head as it read it, or as this process last committed it),
and reports the commit back (``committed``).

Events are sealed with the chain key (:mod:`bqgate.chain`). After each commit the new
head goes to ``checkpoint`` (a :class:`bqgate.adapters.anchor_sinks.Checkpointer`), which
keeps it outside Firestore; a checkpoint that cannot be written never fails the append.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import os
import random
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from bqgate.adapters.firestore_writes import FastBatch
from bqgate.adapters.google_errors import outage_as_unavailable, retry, unavailable
from bqgate.anchors import Checkpoint
from bqgate.audit.chain import Event, SessionHead, seal, session_doc_id, to_plain
from bqgate.audit.record import EventKind, event_data
from bqgate.chain import ChainKey
from bqgate.jobs import Job

#: Collection (group) of session heads.
SESSIONS = "sessions"
#: Subcollection (group) of a session's events.
EVENTS = "events"
EMULATOR_ENV = "FIRESTORE_EMULATOR_HOST"
#: What a lost race looks like: the head moved, or the event slot was taken.
CONTENTION = (gexc.FailedPrecondition, gexc.AlreadyExists, gexc.Aborted, gexc.Conflict)
#: Longest an append keeps retrying on contention before it fails (and the request with it).
APPEND_DEADLINE_S = 60.0
#: In-process lock stripes: appends to one session from one process never race each other.
LOCK_STRIPES = 64
#: Deadline of reading a whole session or the session list back (the CLI, verification).
READ_DEADLINE_S = 120.0
#: Session heads this process remembers having committed or been handed (``known_head``).
KNOWN_HEADS = 1024
#: How long a remembered head is tried before reading it again: a commit conditioned on a
#: head that moved meanwhile fails (and the writer reads it), so this bounds waste only.
KNOWN_HEAD_AGE_S = 5.0
#: Longest head hint accepted (a head is a few hundred bytes).
MAX_HINT_BYTES = 16 * 1024


_ENV_LOCK = threading.Lock()
log = logging.getLogger("bqgate.audit")


def open_client(
    project: str, *, database: str | None = None, emulator_host: str | None = None
) -> firestore.Client:
    """A Firestore client for the CLI: the emulator at ``emulator_host`` (dev), else the
    real Firestore of ``project`` with the caller's application default credentials."""
    if emulator_host is None:
        return firestore.Client(project=project, database=database)
    from google.auth.credentials import AnonymousCredentials

    # The client reads FIRESTORE_EMULATOR_HOST once, when it is built.
    with _ENV_LOCK:
        saved = os.environ.get(EMULATOR_ENV)
        os.environ[EMULATOR_ENV] = emulator_host
        try:
            return firestore.Client(
                project=project,
                database=database,
                credentials=AnonymousCredentials(),
            )
        finally:
            if saved is None:
                os.environ.pop(EMULATOR_ENV, None)
            else:
                os.environ[EMULATOR_ENV] = saved


@dataclass(frozen=True)
class Append:
    """Events to append to one session, as they will be sealed (``data`` plain)."""

    session_id: str
    items: list[tuple[str, Any]]
    job_id: str
    principal: str
    issuer: str
    label: str = ""


@dataclass(frozen=True)
class HeadState:
    """A session head and the update time a commit is conditioned on (None: no head yet)."""

    head: SessionHead
    update_time: Any


@dataclass(frozen=True)
class Staged:
    """An append added to a batch, not yet committed."""

    append: Append
    sealed: list[Event]
    head: SessionHead


def timestamp(ms: int) -> dt.datetime:
    """A UTC datetime for a Firestore timestamp field (what TTL policies read)."""
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


class FirestoreRecorder:
    """Records session events (the gateway's ``Recorder``) and reads them back.

    Args:
        client: a ``google.cloud.firestore.Client``.
        key: the chain key events are sealed with (None: read only).
        checkpoint: called with each new session head after its commit.
        retention_seconds: how long each event (and a session after its last event) is kept.
        record_rows: masked result rows kept per ``result`` event.
        clock: seconds since the epoch (tests pass a fake).
        rpc_timeout_s: timeout of each Firestore call.
        deadline_s: how long an append retries on contention before it raises.
    """

    def __init__(
        self,
        client: firestore.Client,
        *,
        key: ChainKey | None = None,
        checkpoint: Callable[[Checkpoint], None] | None = None,
        retention_seconds: int,
        record_rows: int,
        clock: Callable[[], float] = time.time,
        rpc_timeout_s: float = 30.0,
        deadline_s: float = APPEND_DEADLINE_S,
        collection: str = SESSIONS,
    ) -> None:
        self.client = client
        self.key = key
        self.checkpoint = checkpoint
        self.retention_ms = retention_seconds * 1000
        self.record_rows = record_rows
        self.clock = clock
        self.rpc_timeout_s = rpc_timeout_s
        self.sessions = client.collection(collection)
        self.deadline_s = deadline_s
        self._rng = random.Random()
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._heads: OrderedDict[str, tuple[HeadState, float]] = OrderedDict()
        self._heads_lock = threading.Lock()

    # --- writing -----------------------------------------------------------------

    def record(self, job: Job, kind: EventKind, data: Mapping[str, Any]) -> None:
        """Append one event about ``job`` to its session. Raises if it cannot be stored."""
        self.record_many(job, [(kind, data)])

    def record_many(self, job: Job, items: Sequence[tuple[EventKind, Mapping[str, Any]]]) -> None:
        """Append several events about ``job``, in order, in one atomic commit."""
        self.append_prepared(self.prepare(job, items))

    @staticmethod
    def session_of(job: Job) -> str:
        """The session events about ``job`` go to."""
        return job.session_id or f"job-{job.job_id}"

    def prepare(self, job: Job, items: Sequence[tuple[EventKind, Mapping[str, Any]]]) -> Append:
        """The events about ``job`` as they will be recorded, ready to :meth:`stage` into a
        commit (a job store commits them with the job's own write)."""
        return Append(
            session_id=self.session_of(job),
            items=[
                (
                    kind,
                    to_plain(event_data(job, kind, data, record_rows=self.record_rows)),
                )
                for kind, data in items
            ],
            job_id=job.job_id,
            principal=job.owner,
            issuer=job.issuer,
            label=str(job.labels.get("session_id") or ""),
        )

    def append_prepared(self, append: Append) -> list[Event]:
        """Commit ``append`` on its own (read the head, then one conditional commit)."""

        def attempt() -> list[Event]:
            head = self.read_head(append.session_id)
            batch = FastBatch(self.client.batch())
            staged = self.stage(batch, append, head)
            results = batch.commit(retry=None, timeout=self.rpc_timeout_s)
            self.committed(staged, results[-1].update_time if results else None)
            return staged.sealed

        deadline = time.monotonic() + self.deadline_s
        tries = 0
        with self.lock(append.session_id), outage_as_unavailable("Firestore"):
            while True:
                try:
                    return attempt()
                except CONTENTION:
                    if time.monotonic() >= deadline:
                        raise unavailable("Firestore", TimeoutError()) from None
                    # Jittered exponential backoff spreads out the next round of contenders.
                    tries += 1
                    pause = self._rng.uniform(0, min(0.01 * 2**tries, 1.0))
                    time.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))

    # --- writing inside another commit (the job store's) ---------------------------

    def head_ref(self, session_id: str) -> Any:
        """The head document of ``session_id``."""
        return self.sessions.document(session_doc_id(session_id))

    def lock(self, session_id: str) -> threading.Lock:
        """The in-process lock appends to ``session_id`` take turns on."""
        return self._locks[zlib.crc32(session_id.encode("utf-8")) % LOCK_STRIPES]

    def read_head(self, session_id: str) -> HeadState:
        """The head as stored now (one read)."""
        snap = self.head_ref(session_id).get(
            retry=retry(self.rpc_timeout_s), timeout=self.rpc_timeout_s
        )
        return self.head_state(session_id, snap)

    @staticmethod
    def empty_head(session_id: str) -> SessionHead:
        return SessionHead(session_id)

    def head_state(self, session_id: str, snap: Any) -> HeadState:
        """A read head snapshot as the state a commit is conditioned on."""
        if not snap.exists:
            return HeadState(self.empty_head(session_id), None)
        return HeadState(SessionHead.from_doc(snap.to_dict() or {}), snap.update_time)

    def known_head(self, session_id: str) -> HeadState | None:
        """The head as this process last committed it, or was handed it (:meth:`learn`),
        within :data:`KNOWN_HEAD_AGE_S` (None: not known). A commit conditioned on it
        fails if the head moved since, and the writer then reads it."""
        with self._heads_lock:
            hit = self._heads.get(session_id)
        if hit is None or time.monotonic() - hit[1] > KNOWN_HEAD_AGE_S:
            return None
        return hit[0]

    def forget_head(self, session_id: str) -> None:
        with self._heads_lock:
            self._heads.pop(session_id, None)

    def _keep_head(self, session_id: str, state: HeadState) -> None:
        with self._heads_lock:
            self._heads[session_id] = (state, time.monotonic())
            self._heads.move_to_end(session_id)
            while len(self._heads) > KNOWN_HEADS:
                self._heads.popitem(last=False)

    def hint(self, session_id: str) -> str | None:
        """The known head of ``session_id`` as text another process can :meth:`learn`
        (the ingress and the executor hand it to each other on the direct call, so the
        next commit to the session needs no read). None: not known."""
        known = self.known_head(session_id)
        if known is None or known.update_time is None:
            return None
        stamp = known.update_time
        text = stamp.rfc3339() if hasattr(stamp, "rfc3339") else stamp.isoformat()
        raw = json.dumps(
            {"s": session_id, "h": known.head.to_doc(), "t": text}, separators=(",", ":")
        )
        return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii")

    def learn(self, hint: str | None) -> None:
        """Remember a head another process committed (from :meth:`hint`). Only ever a
        commit's condition: a wrong one fails that commit, which then reads the head."""
        if not hint or len(hint) > MAX_HINT_BYTES:
            return
        try:
            doc = json.loads(base64.urlsafe_b64decode(hint.encode("ascii")))
            session_id, head, stamp = str(doc["s"]), doc["h"], str(doc["t"])
            state = HeadState(
                SessionHead.from_doc(head), DatetimeWithNanoseconds.from_rfc3339(stamp)
            )
        except (KeyError, TypeError, ValueError, UnicodeError, binascii.Error):
            return
        if state.head.session_id == session_id:
            self._keep_head(session_id, state)

    def stage(self, batch: Any, append: Append, head: HeadState) -> Staged:
        """Add ``append``'s sealed events and the new head to ``batch``, on the condition
        that the head is still ``head`` (its update time) and every event slot is free.
        The head is the batch's last write (see :meth:`committed`)."""
        key = self.key
        if key is None:
            raise RuntimeError("this recorder has no chain key: it cannot append")
        head_ref = self.head_ref(append.session_id)
        events = head_ref.collection(EVENTS)
        # Keep times non-decreasing along the chain even if writers' clocks differ.
        at_ms = max(int(self.clock() * 1000), head.head.last_ms)
        sealed: list[Event] = []
        new_head = head.head
        for kind, plain in append.items:
            event = seal(
                session_id=append.session_id,
                seq=new_head.last_seq + 1,
                kind=kind,
                at_ms=at_ms,
                job_id=append.job_id,
                principal=append.principal,
                data=plain,
                prev=None,
                prev_mac=new_head.last_mac,
                prev_expire_at_ms=new_head.last_expire_at_ms,
                expire_at_ms=at_ms + self.retention_ms,
                key=key,
            )
            new_head = new_head.advanced(event, append.issuer, append.label)
            sealed.append(event)
            # Every event slot must be free (create), or nothing is written.
            batch.create(
                events.document(event.event_id),
                {**event.to_doc(), "expire_at": timestamp(event.expire_at_ms)},
            )
        head_doc = {**new_head.to_doc(), "expire_at": timestamp(new_head.expire_at_ms)}
        # One atomic commit: the head must be unchanged since it was read, or nothing
        # is written and the append starts over.
        if head.update_time is not None:
            option = self.client.write_option(last_update_time=head.update_time)
            batch.update(head_ref, head_doc, option=option)
        else:
            batch.create(head_ref, head_doc)
        return Staged(append, sealed, new_head)

    def committed(self, staged: Staged, head_update_time: Any) -> None:
        """After the commit holding ``staged``: remember the head, checkpoint it."""
        if staged.sealed and head_update_time is not None:
            self._keep_head(staged.append.session_id, HeadState(staged.head, head_update_time))
        if staged.sealed:
            a = staged.append
            self._checkpoint(
                staged.sealed[-1], principal=a.principal, issuer=a.issuer, label=a.label
            )

    def _checkpoint(self, last: Event, *, principal: str, issuer: str, label: str) -> None:
        if self.checkpoint is None:
            return
        try:
            self.checkpoint(
                Checkpoint(
                    session_id=last.session_id,
                    seq=last.seq,
                    mac=last.mac,
                    at_ms=last.at_ms,
                    expire_at_ms=last.expire_at_ms,
                    principal=principal,
                    issuer=issuer,
                    label=label,
                )
            )
        except Exception:
            log.exception("checkpointing session %s failed", last.session_id)

    # --- reading -----------------------------------------------------------------

    def head(self, session_id: str) -> SessionHead | None:
        """The session's head document, or ``None`` if there is no such session."""
        snap = self.sessions.document(session_doc_id(session_id)).get(
            retry=retry(self.rpc_timeout_s), timeout=self.rpc_timeout_s
        )
        return SessionHead.from_doc(snap.to_dict() or {}) if snap.exists else None

    def events(self, session_id: str) -> list[Event]:
        """Every stored event of the session, in chain order (malformed ones included)."""
        ref = self.sessions.document(session_doc_id(session_id)).collection(EVENTS)
        stored = [
            (snap.id, snap.to_dict() or {})
            for snap in ref.stream(retry=retry(READ_DEADLINE_S), timeout=READ_DEADLINE_S)
        ]
        events = [Event.from_doc(doc_id, doc) for doc_id, doc in stored]
        return sorted(events, key=lambda e: e.event_id)

    def by_label(self, label: str, limit: int = 20) -> list[SessionHead]:
        """Sessions grouping the client label ``label`` (one per principal that used it)."""
        query = self.sessions.where(filter=FieldFilter("label", "==", label)).limit(limit)
        return [
            SessionHead.from_doc(s.to_dict() or {})
            for s in query.stream(retry=retry(READ_DEADLINE_S), timeout=READ_DEADLINE_S)
        ]

    def list_sessions(
        self, *, principal: str | None = None, since_ms: int | None = None, limit: int = 100
    ) -> list[SessionHead]:
        """Sessions with activity since ``since_ms`` (of ``principal``), latest first.

        Uses single-field indexes only (no composite index to deploy): the principal
        filter runs in Firestore, the time filter too when it is the only one.
        """
        query: Any = self.sessions
        if principal:
            query = query.where(filter=FieldFilter("principals", "array_contains", principal))
        elif since_ms is not None:
            query = query.where(filter=FieldFilter("last_ms", ">=", since_ms))
        heads = [
            SessionHead.from_doc(s.to_dict() or {})
            for s in query.stream(retry=retry(READ_DEADLINE_S), timeout=READ_DEADLINE_S)
        ]
        if since_ms is not None:
            heads = [h for h in heads if h.last_ms >= since_ms]
        heads.sort(key=lambda h: (h.last_ms, h.session_id), reverse=True)
        return heads[:limit]


__all__ = [
    "EVENTS",
    "SESSIONS",
    "Append",
    "FirestoreRecorder",
    "HeadState",
    "Staged",
    "open_client",
    "timestamp",
]
