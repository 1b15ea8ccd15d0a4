"""The dev stack supervises what it runs: a killed function comes back and serves, the
Pub/Sub emulator comes back with its topics, Firestore's jobs and sessions survive a
restart of the whole stack, and the dev issuer mints tokens only for whoever holds the
secret in the state folder. One stack of its own (the shared one is not disturbed)."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from bqgate.adapters.firestore_audit import FirestoreRecorder, open_client
from bqgate.cli import main
from bqgate.client import gateway_client
from bqgate.dev.stack import DEFAULT_PORTS, PROJECT, Stack, free_ports
from google.cloud import bigquery
from helpers import until

pytestmark = pytest.mark.system

WAIT_S = 60


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        state_dir=tmp_path_factory.mktemp("supervised"),
        ports=free_ports(DEFAULT_PORTS),
        snapshot_interval_s=2.0,
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()


def query(stack: Stack, sql: str, label: str) -> bigquery.QueryJob:
    client = gateway_client(stack.url("gateway"), dev_dir=stack.state_dir)
    job = client.query(sql, job_config=bigquery.QueryJobConfig(labels={"session_id": label}))
    job.result(timeout=WAIT_S)
    return job


def record(stack: Stack) -> FirestoreRecorder:
    client = open_client(PROJECT, emulator_host=f"127.0.0.1:{stack.ports['firestore']}")
    return FirestoreRecorder(client, retention_seconds=0, record_rows=0)


@pytest.mark.parametrize("name", ["fn-executor", "fn-ingress"])
def test_a_killed_function_comes_back_and_serves(own: Stack, name: str) -> None:
    proc = own.proc(name)
    before, pid = proc.restarts, proc.popen.pid
    os.killpg(pid, signal.SIGKILL)
    until(f"{name} restarted", lambda: proc.restarts == before + 1 and proc.popen.poll() is None)
    assert proc.popen.pid != pid
    rows = list(query(own, "SELECT 41 + 1 AS n", f"kill-{name[3:]}").result())
    assert [r.n for r in rows] == [42]
    log = (own.state_dir / "logs" / "supervisor.log").read_text()
    assert f"{name} exited (-9); restarting" in log and f"{name} is back" in log


def test_the_pubsub_emulator_comes_back_with_its_topics(own: Stack) -> None:
    proc = own.proc("pubsub")
    before = proc.restarts
    os.killpg(proc.popen.pid, signal.SIGKILL)
    until("pubsub restarted", lambda: proc.restarts == before + 1)
    url = f"{own.url('pubsub')}/v1/projects/{PROJECT}/subscriptions"
    with urllib.request.urlopen(url, timeout=5) as resp:
        subs = {s["topic"].rsplit("/", 1)[-1] for s in json.load(resp)["subscriptions"]}
    assert {"execute", "approvals"} <= subs


def test_jobs_and_sessions_survive_a_restart_of_the_whole_stack(
    own: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    job = query(own, "SELECT 'kept' AS word", "survives-restart")
    rec = record(own)
    (head,) = [h for h in rec.by_label("survives-restart")]
    events = rec.events(head.session_id)
    assert len(events) == 5
    time.sleep(1.5)  # the checkpoints are flushed every second
    own.stop()
    own.start()
    rec = record(own)
    assert rec.events(head.session_id) == events
    assert rec.head(head.session_id) == head
    client = gateway_client(own.url("gateway"), dev_dir=own.state_dir)
    again = client.get_job(job.job_id or "")
    assert isinstance(again, bigquery.QueryJob)
    assert again.state == "DONE" and [r.word for r in again.result()] == ["kept"]

    capsys.readouterr()
    assert main(["sessions", "verify", head.session_id, "--dev-dir", str(own.state_dir)]) == 0
    assert capsys.readouterr().out == (
        f"ok      session {head.session_id}: 5 events, chain intact, checkpointed through event 5\n"
    )


def test_the_token_endpoint_refuses_a_caller_without_the_secret(
    own: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    body = json.dumps({"principal": "alice@example.com", "groups": ["data-approvers"]}).encode()
    request = urllib.request.Request(
        own.url("oidc_issuer") + "/token",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 401
    assert "token secret" in json.loads(caught.value.read())["error"]
    secret = own.state_dir / "oidc" / "token-secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    # bqgate token reads the secret: it works for whoever can read the state folder
    assert main(["token", "--principal", "alice@example.com", "--dev-dir", str(own.state_dir)]) == 0
    assert capsys.readouterr().out.count(".") == 2  # a JWT


def test_endpoints_keep_their_keys(own: Stack) -> None:
    names = json.loads(Path(own.state_dir / "endpoints.json").read_text())
    assert {
        "gateway",
        "approvals",
        "executor",
        "slack_notify",
        "slack",
        "oidc_issuer",
        "bigquery",
        "firestore",
        "pubsub",
        "mcp",
    } <= set(names)
