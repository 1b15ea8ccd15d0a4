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

Events are sealed with the chain key (:mod:`bqgate.chain`). After each commit the new
head goes to ``checkpoint`` (a :class:`bqgate.adapters.anchor_sinks.Checkpointer`), which
keeps it outside Firestore; a checkpoint that cannot be written never fails the append.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

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

    # --- writing -----------------------------------------------------------------

    def record(self, job: Job, kind: EventKind, data: Mapping[str, Any]) -> None:
        """Append one event about ``job`` to its session. Raises if it cannot be stored."""
        self.record_many(job, [(kind, data)])

    def record_many(self, job: Job, items: Sequence[tuple[EventKind, Mapping[str, Any]]]) -> None:
        """Append several events about ``job``, in order, in one atomic commit."""
        self.append_many(
            job.session_id or f"job-{job.job_id}",
            [
                (kind, event_data(job, kind, data, record_rows=self.record_rows))
                for kind, data in items
            ],
            job_id=job.job_id,
            principal=job.owner,
            issuer=job.issuer,
            label=str(job.labels.get("session_id") or ""),
        )

    def append_many(
        self,
        session_id: str,
        items: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        job_id: str,
        principal: str,
        issuer: str,
        label: str = "",
    ) -> list[Event]:
        """Append events to ``session_id`` in one atomic commit; return the stored events."""
        key = self.key
        if key is None:
            raise RuntimeError("this recorder has no chain key: it cannot append")
        head_ref = self.sessions.document(session_doc_id(session_id))
        events = head_ref.collection(EVENTS)
        plain_items = [(kind, to_plain(data)) for kind, data in items]
        # Every call within rpc_timeout_s: an outage fails the append in seconds.
        bounded = retry(self.rpc_timeout_s)

        def attempt() -> list[Event]:
            snap = head_ref.get(retry=bounded, timeout=self.rpc_timeout_s)
            head = (
                SessionHead.from_doc(snap.to_dict() or {})
                if snap.exists
                else SessionHead(session_id)
            )
            # Keep times non-decreasing along the chain even if writers' clocks differ.
            at_ms = max(int(self.clock() * 1000), head.last_ms)
            batch = self.client.batch()
            sealed: list[Event] = []
            new_head = head
            for kind, plain in plain_items:
                event = seal(
                    session_id=session_id,
                    seq=new_head.last_seq + 1,
                    kind=kind,
                    at_ms=at_ms,
                    job_id=job_id,
                    principal=principal,
                    data=plain,
                    prev=None,
                    prev_mac=new_head.last_mac,
                    prev_expire_at_ms=new_head.last_expire_at_ms,
                    expire_at_ms=at_ms + self.retention_ms,
                    key=key,
                )
                new_head = new_head.advanced(event, issuer, label)
                sealed.append(event)
                # Every event slot must be free (create), or nothing is written.
                batch.create(
                    events.document(event.event_id),
                    {**event.to_doc(), "expire_at": timestamp(event.expire_at_ms)},
                )
            head_doc = {**new_head.to_doc(), "expire_at": timestamp(new_head.expire_at_ms)}
            # One atomic commit: the head must be unchanged since it was read, or nothing
            # is written and the append starts over.
            if snap.exists:
                option = self.client.write_option(last_update_time=snap.update_time)
                batch.update(head_ref, head_doc, option=option)
            else:
                batch.create(head_ref, head_doc)
            batch.commit(retry=None, timeout=self.rpc_timeout_s)
            return sealed

        # Writers in this process take turns (no point racing each other in Firestore);
        # writers in other processes are serialised by the commit's preconditions.
        lock = self._locks[zlib.crc32(session_id.encode("utf-8")) % LOCK_STRIPES]
        deadline = time.monotonic() + self.deadline_s
        tries = 0
        with lock, outage_as_unavailable("Firestore"):
            while True:
                try:
                    sealed = attempt()
                except CONTENTION:
                    if time.monotonic() >= deadline:
                        raise unavailable("Firestore", TimeoutError()) from None
                    # Jittered exponential backoff spreads out the next round of contenders.
                    tries += 1
                    pause = self._rng.uniform(0, min(0.01 * 2**tries, 1.0))
                    time.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
                    continue
                self._checkpoint(sealed[-1], principal=principal, issuer=issuer, label=label)
                return sealed

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


__all__ = ["EVENTS", "SESSIONS", "FirestoreRecorder", "open_client", "timestamp"]
