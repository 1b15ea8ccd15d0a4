"""The Cloud Storage checkpoint sink with the real google-cloud-storage client against a
Cloud Storage stand-in (gcp-storage-emulator, in-process): batches are new objects under
checkpoints/, and reading the bucket back gives the index, log-sink exports included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from bqgate.adapters.anchor_sinks import CHECKPOINT_PREFIX, Checkpointer, GcsSink
from bqgate.anchors import AnchorIndex, Checkpoint, encode_line
from bqgate.chain import ChainKey, Keyring
from bqgate.dev.stack import free_port
from gcp_storage_emulator.server import create_server
from google.auth.credentials import AnonymousCredentials

# google-cloud-storage ships no py.typed: mypy sees no storage in google.cloud.
from google.cloud import storage  # type: ignore[attr-defined]

KEY = ChainKey(b"gcs-sink-test-chain-key-0123456789ab")
BUCKET = "acme-bqgate-audit-anchors"


@pytest.fixture()
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    try:
        yield storage.Client(project="acme-bqgate", credentials=AnonymousCredentials())
    finally:
        server.stop()


def cp(session: str, seq: int) -> Checkpoint:
    return Checkpoint(session, seq, f"{seq:064x}", 1000 + seq, 10**13, "a@x", "dev")


def test_batches_are_new_objects_and_read_back_as_the_index(client: Any) -> None:
    sink = GcsSink(client, BUCKET, clock=lambda: 1_750_000_000.0)
    checkpointer = Checkpointer(KEY, batched=[sink], interval_s=0)
    checkpointer.note(cp("s-1", 3))
    checkpointer.note(cp("s-2", 1))
    checkpointer.note(cp("s-1", 5))
    names = [b.name for b in client.list_blobs(BUCKET)]
    assert len(names) == 3 and all(n.startswith(CHECKPOINT_PREFIX + "2025/06/15/") for n in names)
    index = AnchorIndex.read(sink.read(), Keyring([KEY]))
    assert [c.seq for c in index.of("s-1")] == [3, 5] and index.latest("s-2") == cp("s-2", 1)
    assert index.problems == [] and index.sources == 3


def test_the_log_sink_export_in_the_same_bucket_counts_too(client: Any) -> None:
    exported = "\n".join(
        json.dumps({"logName": "projects/p/logs/run", "jsonPayload": json.loads(line)})
        for line in (encode_line(cp("s-9", 2), KEY), encode_line(cp("s-9", 4), KEY))
    )
    client.bucket(BUCKET).blob(
        "run.googleapis.com/stdout/2025/06/15/10:00:00_10:59:59_S0.json"
    ).upload_from_string(exported)
    index = AnchorIndex.read(GcsSink(client, BUCKET).read(), Keyring([KEY]))
    assert [c.seq for c in index.of("s-9")] == [2, 4]


def test_a_connecting_sink_builds_its_client_with_its_first_batch(client: Any) -> None:
    built: list[Any] = []

    def connect() -> Any:
        built.append(client)
        return client

    sink = GcsSink.connecting(connect, BUCKET)
    checkpointer = Checkpointer(KEY, batched=[sink], interval_s=3600)
    checkpointer.note(cp("s-3", 1))
    assert built == []  # recording alone connects to nothing
    assert checkpointer.flush()  # the batch goes out: now it connects, once
    checkpointer.note(cp("s-3", 2))
    assert checkpointer.flush()
    checkpointer.close()
    assert len(built) == 1
    assert [c.seq for c in AnchorIndex.read(sink.read(), Keyring([KEY])).of("s-3")] == [1, 2]
