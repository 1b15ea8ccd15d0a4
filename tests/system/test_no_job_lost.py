"""Issue 20: no accepted job is lost between functions, with faults injected into the
local stack: Pub/Sub refusing every publisher (the stack's FaultProxy), the executor
unreachable, and Slack hanging for two minutes (the Slack stand-in's ``/_test/hang``).

Invariant: every accepted job ends (rows, or a clear error) within a bound, and runs once.
The measured numbers are printed (``pytest -s``) and asserted against the acceptance bounds.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import requests
from bqgate import outbox
from bqgate.adapters.firestore_audit import FirestoreRecorder
from bqgate.adapters.firestore_store import FirestoreJobStore
from bqgate.approvals import ApprovalRecord
from bqgate.dev.faults import FaultProxy
from bqgate.dev.stack import PROJECT, REPO_ROOT, Stack
from bqgate.jobs import DONE, PENDING, PENDING_APPROVAL
from conftest import AGENT, mint_token_for
from functions_framework import create_app
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery, firestore
from helpers import clear_bootstrap, slack_click, slack_state, until

pytestmark = pytest.mark.system

LEDGER_SQL = (
    "SELECT entry_id, account, amount FROM `demo-project.finance.ledger` ORDER BY entry_id LIMIT 3"
)
#: The acceptance bound: after publishing recovers, the approved job runs within this.
RECOVERY_BOUND_S = 60
#: How long Slack hangs in the Slack test (issue 20's outage: two minutes).
SLACK_HANG_S = 120


@pytest.fixture()
def pubsub(stack: Stack) -> Iterator[FaultProxy]:
    proxy = stack.pubsub_faults
    assert proxy is not None, "the test stack runs Pub/Sub behind a FaultProxy"
    yield proxy
    proxy.restore()


def messages_of(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    """The stand-in's messages that carry buttons or metadata for ``job_id``."""
    out = []
    for msg in slack_state(stack)["messages"]:
        tagged = (msg.get("metadata") or {}).get("event_payload", {}).get("job_id") == job_id
        if tagged or job_id in json.dumps(msg.get("blocks")):
            out.append(msg)
    return out


def direct(stack: Stack) -> bigquery.Client:
    return bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=stack.url("bigquery")),
    )


def outbox_record(store: FirestoreJobStore, job_id: str, event: str) -> outbox.OutboxRecord:
    return next(r for r in store.outbox_of(job_id) if r.event == event)


def test_approve_while_publishing_fails_runs_once_after_recovery(
    stack: Stack,
    gateway_client: bigquery.Client,
    pool: Any,
    store: FirestoreJobStore,
    pubsub: FaultProxy,
) -> None:
    job = gateway_client.query(LEDGER_SQL)
    rows = pool.submit(lambda: list(job.result(timeout=600)))  # the agent waits, as agents do
    msg = until("the approval message", lambda: messages_of(stack, job.job_id), 90)[0]
    pubsub.refuse()
    clicked = slack_click(stack, "U_ALICE", msg, "bqgate_approve", job.job_id)
    # The approval is committed and the approver told so, within Slack's 3 seconds.
    assert clicked["status"] == 200 and clicked["within_deadline"], clicked
    assert clicked["response"]["text"] == "Approved by alice@example.com"
    handoff = outbox_record(store, job.job_id, outbox.APPROVED)
    assert handoff.sent_ms is None and handoff.attempts == 1 and not handoff.finished
    # Keep Pub/Sub down past the outbox deadline: the reconciler's retries fail too.
    until(
        "a failed reconciler retry",
        lambda: outbox_record(store, job.job_id, outbox.APPROVED).attempts >= 2,
        90,
    )
    stuck = store.get(job.job_id)
    assert stuck is not None and stuck.state == PENDING and stuck.executions == 0
    assert not rows.done()
    assert pubsub.refused > 0  # the fault really was in the way
    pubsub.restore()
    recovered = time.monotonic()
    got = rows.result(timeout=RECOVERY_BOUND_S + 30)
    took = time.monotonic() - recovered
    print(f"\n[issue 20] approve during a Pub/Sub outage: rows {took:.1f} s after recovery")
    assert [r.entry_id for r in got] == [1, 2, 3]
    assert took <= RECOVERY_BOUND_S
    done = store.get(job.job_id)
    assert done is not None and done.state == DONE and done.executions == 1
    sent = outbox_record(store, job.job_id, outbox.APPROVED)
    assert sent.finished and sent.sent_ms is not None and sent.attempts >= 3


@pytest.fixture()
def executor_down(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the executor, and the in-process wiring pointed at it (the
    stack's own ingress and executor are untouched)."""
    proxy = FaultProxy(("127.0.0.1", stack.ports["executor"]))
    monkeypatch.setenv("BQGATE_EXECUTOR_URL", f"http://{proxy.address}")
    clear_bootstrap()
    yield proxy
    proxy.close()
    clear_bootstrap()


def test_a_retried_insert_of_a_stored_undispatched_job_runs_it_once(
    stack: Stack, store: FirestoreJobStore, pubsub: FaultProxy, executor_down: FaultProxy
) -> None:
    ingress = create_app(
        "ingress", str(REPO_ROOT / "functions/ingress/main.py"), "http"
    ).test_client()
    marker = "retry-" + uuid.uuid4().hex[:12]
    table = f"demo-project.analytics.scratch_{marker.replace('-', '_')}"
    direct(stack).create_table(
        bigquery.Table(table, schema=[bigquery.SchemaField("name", "STRING")])
    )
    sql = f"INSERT INTO `{table}` (name) VALUES ('{marker}')"
    body = {
        "jobReference": {"jobId": marker},
        "configuration": {"query": {"query": sql, "useLegacySql": False}},
    }
    auth = {"Authorization": f"Bearer {mint_token_for(stack, AGENT)}"}
    path = f"/bigquery/v2/projects/{PROJECT}/jobs"
    executor_down.refuse()
    pubsub.refuse()
    t0 = time.monotonic()
    first = ingress.post(path, json=body, headers=auth)
    answered = time.monotonic() - t0
    print(f"\n[issue 20] insert with executor and Pub/Sub down: answered in {answered:.1f} s")
    # Accepted and stored, not a 500 after 31 s: the hand-off waits in the outbox.
    assert first.status_code == 200, first.get_data(as_text=True)
    assert first.get_json()["status"]["state"] == "PENDING"
    assert answered < 15
    handoff = outbox_record(store, marker, outbox.ACCEPTED)
    assert handoff.sent_ms is None and not handoff.finished
    executor_down.restore()
    pubsub.restore()
    again = ingress.post(path, json=body, headers=auth)  # the client's retry
    assert again.status_code == 200, again.get_data(as_text=True)
    assert again.get_json()["status"]["state"] == "DONE"  # dispatched by the retry itself
    assert outbox_record(store, marker, outbox.ACCEPTED).finished
    ingress.post(path, json=body, headers=auth)  # and once more: nothing runs again
    time.sleep(stack.sweep_interval_s * 2)  # the reconciler has nothing left to send
    job = store.get(marker)
    assert job is not None and job.state == DONE and job.error is None
    assert job.executions == 1 and job.num_dml_affected_rows == 1
    count = next(
        iter(direct(stack).query(f"SELECT COUNT(*) AS n FROM `{table}`").result(timeout=60))
    ).n
    assert count == 1


def approval(store: FirestoreJobStore, job_id: str) -> ApprovalRecord:
    job = store.get(job_id)
    return ApprovalRecord.from_doc(job.approval if job else {})


def hang_slack(stack: Stack, seconds: float) -> None:
    resp = requests.post(stack.url("slack") + "/_test/hang", json={"seconds": seconds}, timeout=10)
    resp.raise_for_status()


def test_slack_hanging_for_two_minutes_leaves_exactly_one_linked_message(
    stack: Stack, gateway_client: bigquery.Client, pool: Any, store: FirestoreJobStore
) -> None:
    hang_slack(stack, SLACK_HANG_S)
    hung_at = time.monotonic()
    try:
        job = gateway_client.query(LEDGER_SQL + " -- slack hangs")
        rows = pool.submit(lambda: list(job.result(timeout=SLACK_HANG_S + 300)))
        # slack_notify tried while Slack hung: one post went out (never answered), and
        # every retry since looked the message up instead of posting a second one.
        until("a post attempt", lambda: approval(store, job.job_id).post_attempts >= 1, 60)
        # Approvers can see, and decide, the request while Slack is down.
        listing = requests.get(
            stack.url("approvals") + "/v1/approvals",
            timeout=30,
            headers={"Authorization": "Bearer " + mint_token_for(stack, "alice@example.com")},
        ).json()
        assert job.job_id in [j for a in listing["approvals"] for j in a["group"]["job_ids"]]
        stuck = store.get(job.job_id)
        assert stuck is not None and stuck.state == PENDING_APPROVAL
        assert ApprovalRecord.from_doc(stuck.approval).slack_ts is None
        until("the end of the hang", lambda: time.monotonic() - hung_at > SLACK_HANG_S, 300)
    finally:
        hang_slack(stack, 0)
    back = time.monotonic()
    linked = until(
        "the request to be linked to its message", lambda: approval(store, job.job_id).slack_ts, 240
    )
    took = time.monotonic() - back
    mine = messages_of(stack, job.job_id)
    rec = approval(store, job.job_id)
    print(
        f"\n[issue 20] Slack hung {SLACK_HANG_S} s: {len(mine)} message(s), linked "
        f"{took:.1f} s after Slack came back, {rec.post_attempts} chat.postMessage call(s)"
    )
    assert len(mine) == 1 and mine[0]["ts"] == linked
    assert mine[0]["metadata"] == {
        "event_type": "bqgate_approval_request",
        "event_payload": {"job_id": job.job_id},
    }
    assert rec.post_attempts == 1
    # A decision updates that one message (buttons removed) and releases the agent.
    clicked = slack_click(stack, "U_BOB", mine[0], "bqgate_approve", job.job_id)
    assert clicked["response"]["text"] == "Approved by bob@example.com"
    assert len(rows.result(timeout=120)) == 3
    final = messages_of(stack, job.job_id)
    assert len(final) == 1 and final[0]["updates"] >= 1
    assert "Approved by bob@example.com" in json.dumps(final[0]["blocks"])
    assert all(b["type"] != "actions" for b in final[0]["blocks"])
    recorder = FirestoreRecorder(
        firestore.Client(project=PROJECT), retention_seconds=86400, record_rows=0
    )
    stored = store.get(job.job_id)
    assert stored is not None
    kinds = [e.kind for e in recorder.events(stored.session_id) if e.job_id == job.job_id]
    assert kinds.count("notified") == 1
    assert kinds.index("approval_requested") < kinds.index("notified")


def test_the_sweeper_expires_a_stale_request_and_closes_its_slack_message(
    stack: Stack, gateway_client: bigquery.Client, store: FirestoreJobStore
) -> None:
    job = gateway_client.query(LEDGER_SQL + " -- left unanswered")
    msg = until("the approval message", lambda: messages_of(stack, job.job_id), 90)[0]
    assert any(b["type"] == "actions" for b in msg["blocks"])
    # Nobody answers and the agent stops polling: only the sweeper can end it.
    store.transition(job.job_id, lambda j: replace(j, expire_at_ms=int(time.time() * 1000) - 1))
    ended = until(
        "the sweeper to expire it", lambda: (j := store.get(job.job_id)) and j.done and j, 60
    )
    assert ended.approval["status"] == "expired"
    closed = until(
        "the message to be closed",
        lambda: [
            m
            for m in messages_of(stack, job.job_id)
            if not any(b["type"] == "actions" for b in m["blocks"])
        ],
        90,
    )
    assert len(messages_of(stack, job.job_id)) == 1
    assert "Expired" in json.dumps(closed[0]["blocks"])
    until(
        "the close record to finish",
        lambda: outbox_record(store, job.job_id, outbox.CLOSE).finished,
        60,
    )
