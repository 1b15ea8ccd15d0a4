"""Where checkpoints go (:mod:`bqgate.anchors`): append-only sinks outside Firestore.

* :class:`GcsSink` - a Cloud Storage bucket with a retention policy (infra/terraform
  ``audit.tf``): every batch is a new object, created with ``ifGenerationMatch=0`` so
  nothing is ever overwritten, and the retention policy keeps anyone from deleting or
  replacing it until it expires (locked: not even the project owner).
* :class:`LogSink` - Cloud Logging: one structured log line per checkpoint on stdout,
  which Cloud Functions ships to Cloud Logging without a network call from the function;
  a log sink routes the lines into a locked log bucket and into the checkpoint bucket.
* :class:`FolderSink` - the dev stack: each batch a new read-only file in a folder of the
  state dir.

:class:`Checkpointer` takes the recorder's checkpoints off the request path: the log line
is written at once, the bucket gets one object per batch from a background thread
(``interval_s``, default 1 s), and whatever is pending is flushed at exit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from bqgate.anchors import Checkpoint, encode_line
from bqgate.chain import ChainKey
from bqgate.ports import CheckpointSink

log = logging.getLogger("bqgate.anchors")

#: Object-name prefix of the batches the functions write.
CHECKPOINT_PREFIX = "checkpoints/"

__all__ = [
    "CHECKPOINT_PREFIX",
    "Checkpointer",
    "FolderSink",
    "GcsSink",
    "LogSink",
    "open_gcs_sink",
]


def _batch_name(now_ms: int) -> str:
    stamp = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC)
    return f"{stamp:%Y/%m/%d}/{now_ms:013d}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"


class FolderSink:
    """Dev: each batch is a new file ``<folder>/YYYY/MM/DD/<ms>-<pid>-<random>.jsonl``,
    created exclusively and left read-only."""

    def __init__(self, folder: Path, clock: Callable[[], float] = time.time) -> None:
        self.folder = Path(folder)
        self.clock = clock

    def write(self, lines: Sequence[str]) -> None:
        if not lines:
            return
        path = self.folder / _batch_name(int(self.clock() * 1000))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())

    def read(self) -> Iterator[tuple[str, str]]:
        """Every batch as ``(name, text)``, oldest first."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.rglob("*.jsonl")):
            yield str(path.relative_to(self.folder)), path.read_text(encoding="utf-8")


class GcsSink:
    """A Cloud Storage bucket: batches under ``checkpoints/``; :meth:`read` also reads what
    the Cloud Logging sink exports into the same bucket (any other prefix)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._connect: Callable[[], Any] | None = None
        self.bucket_name = bucket
        self.timeout_s = timeout_s
        self.clock = clock

    @classmethod
    def connecting(cls, connect: Callable[[], Any], bucket: str) -> GcsSink:
        """A sink that builds its storage client with its first batch (a function that
        only records never imports google-cloud-storage before it has to)."""
        sink = cls(None, bucket)
        sink._connect = connect
        return sink

    @property
    def client(self) -> Any:
        if self._client is None and self._connect is not None:
            self._client = self._connect()
        return self._client

    def write(self, lines: Sequence[str]) -> None:
        if not lines:
            return
        blob = self.client.bucket(self.bucket_name).blob(
            CHECKPOINT_PREFIX + _batch_name(int(self.clock() * 1000))
        )
        blob.upload_from_string(
            "".join(line + "\n" for line in lines),
            content_type="application/x-ndjson",
            if_generation_match=0,  # a new object, never a replacement
            timeout=self.timeout_s,
        )

    def read(self, prefix: str | None = None) -> Iterator[tuple[str, str]]:
        for blob in self.client.list_blobs(self.bucket_name, prefix=prefix, timeout=60):
            if blob.name.endswith("/"):
                continue
            yield blob.name, blob.download_as_text(timeout=60)


def open_gcs_sink(project: str | None, bucket: str) -> GcsSink:
    """A :class:`GcsSink` with the caller's application default credentials (the CLI)."""
    # google-cloud-storage ships no py.typed: mypy sees no storage in google.cloud.
    from google.cloud import storage  # type: ignore[attr-defined]

    return GcsSink(storage.Client(project=project), bucket)


class LogSink:
    """Cloud Logging: one structured JSON line per checkpoint on ``stream`` (stdout).

    Cloud Functions turns each line into a log entry whose ``jsonPayload`` holds the
    sealed checkpoint; ``infra/terraform/audit.tf`` routes them (filter
    ``jsonPayload.bqgate_anchor:*``) into a locked log bucket and the checkpoint bucket.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def write(self, lines: Sequence[str]) -> None:
        out = self.stream or sys.stdout
        text = "".join(
            json.dumps(
                {"severity": "NOTICE", "message": "bqgate checkpoint", **json.loads(line)},
                separators=(",", ":"),
                ensure_ascii=False,
            )
            + "\n"
            for line in lines
        )
        with self._lock:
            out.write(text)
            out.flush()


class Checkpointer:
    """Checkpoints the recorder's session heads into the sinks, off the request path.

    :meth:`note` writes the checkpoint to the ``immediate`` sinks (the log line) and
    queues it for the ``batched`` ones (the bucket); only the newest checkpoint of each
    session is kept while it waits, since a later head covers every event before it
    through the chain. A background thread writes the queue as one batch every
    ``interval_s`` (``0``: at once, in the caller's thread); a failed batch stays queued
    for the next round. :meth:`close` (registered at exit) flushes what is left.
    """

    def __init__(
        self,
        key: ChainKey,
        *,
        immediate: Sequence[CheckpointSink] = (),
        batched: Sequence[CheckpointSink] = (),
        interval_s: float = 1.0,
    ) -> None:
        self.key = key
        self.immediate = list(immediate)
        self.batched = list(batched)
        self.interval_s = interval_s
        self._pending: dict[str, Checkpoint] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.failures = 0

    def note(self, cp: Checkpoint) -> None:
        """Checkpoint ``cp``; never raises (a failure only leaves the tail un-anchored)."""
        line = encode_line(cp, self.key)
        for sink in self.immediate:
            try:
                sink.write([line])
            except Exception:
                self.failures += 1
                log.exception("writing a checkpoint of session %s failed", cp.session_id)
        if not self.batched:
            return
        with self._lock:
            old = self._pending.get(cp.session_id)
            if old is None or old.seq < cp.seq:
                self._pending[cp.session_id] = cp
        if self.interval_s <= 0:
            self.flush()
            return
        self._ensure_thread()

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self) -> bool:
        """Write every queued checkpoint now; False if a sink failed (they stay queued)."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return True
            lines = [encode_line(cp, self.key) for cp in batch.values()]
            try:
                for sink in self.batched:
                    sink.write(lines)
            except Exception:
                self.failures += 1
                log.exception("writing %d checkpoints failed; retrying later", len(lines))
                with self._lock:
                    for sid, cp in batch.items():
                        newer = self._pending.get(sid)
                        if newer is None or newer.seq < cp.seq:
                            self._pending[sid] = cp
                return False
            self.written += len(lines)
            return True

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(
                target=self._run, name="bqgate-checkpointer", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.interval_s)
            with contextlib.suppress(Exception):
                self.flush()

    def close(self) -> None:
        """Stop the thread and flush what is queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
        self.flush()
