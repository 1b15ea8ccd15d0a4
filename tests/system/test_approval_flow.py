"""Approvals end to end through the local stack: the agent's standard BigQuery client
blocks on a restricted query until an approver clicks in the Slack stand-in (driven
through the same HTTP endpoints its page uses), or the approver API decides."""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.parse
import uuid
from dataclasses import replace
from functools import partial
from typing import Any

import helpers
import pytest
import requests
from bqgate.adapters.firestore_store import FirestoreJobStore
from bqgate.approvals import ApprovalRecord
from bqgate.dev.stack import PROJECT, Stack
from bqgate.jobs import DONE, PENDING_APPROVAL, Job
from bqgate.slack_blocks import sign
from conftest import AGENT, mint_token_for
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from helpers import slack_click, slack_state

pytestmark = pytest.mark.system

LEDGER_SQL = (
    "SELECT entry_id, account, amount FROM `demo-project.finance.ledger` ORDER BY entry_id LIMIT 3"
)
WAIT_S = 90


#: Waits for a condition, up to WAIT_S (helpers.until).
until = partial(helpers.until, timeout=WAIT_S)


def message_for(stack: Stack, job_id: str) -> dict[str, Any]:
    """The stand-in's approval message for ``job_id`` (waits for slack_notify to post it)."""

    def find() -> dict[str, Any] | None:
        for msg in slack_state(stack)["messages"]:
            if any(
                e.get("value") == job_id
                for b in msg["blocks"]
                for e in b.get("elements") or []
                if b["type"] == "actions"
            ):
                return dict(msg)
        return None

    return dict(until(f"the approval message of {job_id}", find))


def current(stack: Stack, msg: dict[str, Any]) -> dict[str, Any]:
    return next(
        m
        for m in slack_state(stack)["messages"]
        if m["ts"] == msg["ts"] and m["channel"] == msg["channel"]
    )


def ui_click(
    stack: Stack, user: str, msg: dict[str, Any], action_id: str, job_id: str
) -> dict[str, Any]:
    """What the page's button form posts, answered within Slack's deadline."""
    result = slack_click(stack, user, msg, action_id, job_id)
    assert result["status"] == 200, result
    assert result["within_deadline"], result  # Slack gives up after 3 seconds
    return result


def ui_submit(stack: Stack, user: str, view_id: str, reason: str) -> dict[str, Any]:
    """What the page's modal form posts."""
    resp = requests.post(
        stack.url("slack") + "/_ui/submit",
        timeout=30,
        headers={"Accept": "application/json"},
        data={"user": user, "view_id": view_id, "reason": reason},
    )
    resp.raise_for_status()
    result: dict[str, Any] = resp.json()
    return result


def request(
    client: bigquery.Client, sql: str, pool: concurrent.futures.ThreadPoolExecutor
) -> tuple[str, concurrent.futures.Future[list[Any]]]:
    """Submit as the agent; the agent's ``result()`` waits in a thread."""
    job = client.query(sql)
    assert job.job_id
    return job.job_id, pool.submit(lambda: list(job.result(timeout=WAIT_S + 30)))


def direct(stack: Stack) -> bigquery.Client:
    return bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=stack.url("bigquery")),
    )


def test_approve_in_slack_releases_the_agents_query(
    stack: Stack, gateway_client: bigquery.Client, pool: Any, store: FirestoreJobStore
) -> None:
    job_id, rows = request(gateway_client, LEDGER_SQL, pool)
    msg = message_for(stack, job_id)
    text = json.dumps(msg["blocks"])
    assert AGENT in text and "demo-project.finance.ledger" in text and "bytes" in text
    time.sleep(1)
    assert not rows.done()  # the agent is waiting on the approver
    result = ui_click(stack, "U_ALICE", msg, "bqgate_approve", job_id)
    assert result["response"]["text"] == "Approved by alice@example.com"
    got = rows.result(timeout=WAIT_S)
    assert [r.entry_id for r in got] == [1, 2, 3]
    job = store.get(job_id)
    assert job is not None and job.executions == 1
    assert ApprovalRecord.from_doc(job.approval).approvers == ("alice@example.com",)
    updated = current(stack, msg)
    assert "Approved by alice@example.com" in json.dumps(updated["blocks"])
    assert all(b["type"] != "actions" for b in updated["blocks"])


def test_deny_in_slack_makes_the_agent_raise_forbidden(
    stack: Stack, gateway_client: bigquery.Client, pool: Any
) -> None:
    job_id, rows = request(gateway_client, LEDGER_SQL, pool)
    msg = message_for(stack, job_id)
    clicked = ui_click(stack, "U_BOB", msg, "bqgate_deny", job_id)
    assert len(clicked["views"]) == 1  # the reason modal opened
    view_id = clicked["views"][0]["id"]
    empty = ui_submit(stack, "U_BOB", view_id, "  ")
    assert empty["response"]["response_action"] == "errors"
    done = ui_submit(stack, "U_BOB", view_id, "the ledger is restricted")
    assert done["response"] == {"response_action": "clear"}
    with pytest.raises(gexc.Forbidden) as err:
        rows.result(timeout=WAIT_S)
    assert "Denied by bob@example.com: the ledger is restricted" in str(err.value)
    assert "Denied by bob@example.com" in json.dumps(current(stack, msg)["blocks"])


def expire_now(store: FirestoreJobStore, job_id: str) -> None:
    def past(job: Job) -> Job:
        assert job.state == PENDING_APPROVAL
        return replace(job, expire_at_ms=int(time.time() * 1000) - 1)

    store.transition(job_id, past)


def test_unanswered_request_expires_when_the_agent_polls(
    stack: Stack, gateway_client: bigquery.Client, pool: Any, store: FirestoreJobStore
) -> None:
    job_id, rows = request(gateway_client, LEDGER_SQL, pool)
    message_for(stack, job_id)
    expire_now(store, job_id)
    with pytest.raises(gexc.Forbidden) as err:
        rows.result(timeout=WAIT_S)
    # expire_now moved the deadline to ~1 s after the request, and the message says so.
    assert "Approval request expired after" in str(err.value)


def test_a_click_after_expiry_says_so_and_the_agent_gets_the_expiry(
    stack: Stack, gateway_client: bigquery.Client, pool: Any, store: FirestoreJobStore
) -> None:
    job_id, rows = request(gateway_client, LEDGER_SQL, pool)
    msg = message_for(stack, job_id)
    expire_now(store, job_id)
    result = ui_click(stack, "U_ALICE", msg, "bqgate_approve", job_id)
    assert "expired" in result["response"]["text"]
    with pytest.raises(gexc.Forbidden) as err:
        rows.result(timeout=WAIT_S)
    assert "Approval request expired" in str(err.value)
    job = store.get(job_id)
    assert job is not None and job.executions == 0


def signed_post(
    stack: Stack, payload: dict[str, Any], *, ts: int | None = None, secret: str | None = None
) -> requests.Response:
    """Straight to the approvals function, as Slack (or an attacker) would post."""
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    stamp = str(ts if ts is not None else int(time.time()))
    return requests.post(
        stack.url("approvals") + "/slack/interactions",
        data=body,
        timeout=30,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": sign(secret or stack.signing_secret(), stamp, body),
        },
    )


def approve_payload(user: str, msg: dict[str, Any], job_id: str) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": user},
        "trigger_id": "t-" + uuid.uuid4().hex,
        "container": {"channel_id": msg["channel"], "message_ts": msg["ts"]},
        "actions": [{"action_id": "bqgate_approve", "value": job_id}],
    }


def test_forged_stale_and_unauthorised_approvals_are_refused(
    stack: Stack, gateway_client: bigquery.Client, store: FirestoreJobStore
) -> None:
    job_id = gateway_client.query(LEDGER_SQL).job_id
    msg = message_for(stack, job_id)
    payload = approve_payload("U_ALICE", msg, job_id)
    forged = signed_post(stack, payload, secret="not-the-signing-secret")
    assert forged.status_code == 401
    stale = signed_post(stack, payload, ts=int(time.time()) - 6 * 60)
    assert stale.status_code == 401 and "stale" in stale.json()["error"]["message"]
    mallory = ui_click(stack, "U_MALLORY", msg, "bqgate_approve", job_id)
    assert "mallory@example.com may not approve" in mallory["response"]["text"]
    notes = [e for e in slack_state(stack)["ephemerals"] if e["user"] == "U_MALLORY"]
    assert notes and "not a member of an approver group" in notes[-1]["text"]
    # The requester approving its own request through the approver API.
    agent = {"Authorization": "Bearer " + mint_token_for(stack, AGENT, ("data-approvers",))}
    own = requests.post(
        f"{stack.url('approvals')}/v1/approvals/{job_id}:approve", headers=agent, timeout=30
    )
    assert own.status_code == 403
    assert own.json()["error"]["message"] == (f"{AGENT} may not approve their own request")
    job = store.get(job_id)
    assert job is not None and job.state == PENDING_APPROVAL and job.executions == 0


def test_replayed_payload_changes_nothing(
    stack: Stack, gateway_client: bigquery.Client, pool: Any, store: FirestoreJobStore
) -> None:
    job_id, rows = request(gateway_client, LEDGER_SQL, pool)
    msg = message_for(stack, job_id)
    payload = approve_payload("U_BOB", msg, job_id)
    first = signed_post(stack, payload)
    assert first.json()["text"] == "Approved by bob@example.com"
    replay = signed_post(stack, payload)
    assert replay.status_code == 200 and "nothing changed" in replay.json()["text"]
    assert len(rows.result(timeout=WAIT_S)) == 3
    job = store.get(job_id)
    assert job is not None and job.executions == 1


def test_double_click_runs_the_insert_once(
    stack: Stack, gateway_client: bigquery.Client, pool: Any, store: FirestoreJobStore
) -> None:
    order_id = 900_000_000 + uuid.uuid4().int % 1_000_000
    sql = (
        "INSERT INTO `demo-project.sales.orders` (order_id, customer_id, amount, status, "
        f"ordered_at) VALUES ({order_id}, 1, 9.99, 'approved-once', CURRENT_TIMESTAMP())"
    )
    job_id, rows = request(gateway_client, sql, pool)
    msg = message_for(stack, job_id)
    clicks = [
        pool.submit(ui_click, stack, user, msg, "bqgate_approve", job_id)
        for user in ("U_ALICE", "U_ALICE", "U_BOB")
    ]
    texts = sorted(c.result(timeout=WAIT_S)["response"]["text"] for c in clicks)
    assert sum(t.startswith("Approved by") for t in texts) == 1, texts
    assert sum("nothing changed" in t for t in texts) == 2, texts
    rows.result(timeout=WAIT_S)
    job = until("the insert to finish", lambda: (j := store.get(job_id)) and j.done and j)
    assert job.error is None and job.executions == 1 and job.num_dml_affected_rows == 1
    count = next(
        iter(
            direct(stack)
            .query(
                f"SELECT COUNT(*) AS n FROM `demo-project.sales.orders` WHERE order_id = {order_id}"
            )
            .result(timeout=60)
        )
    ).n
    assert count == 1


def test_statement_changed_after_the_request_is_refused_by_the_executor(
    stack: Stack, gateway_client: bigquery.Client, pool: Any, store: FirestoreJobStore
) -> None:
    job_id, rows = request(gateway_client, LEDGER_SQL, pool)
    msg = message_for(stack, job_id)
    store.transition(
        job_id,
        lambda j: replace(j, sql="SELECT name, salary, iban FROM `demo-project.finance.payroll`"),
    )
    ui_click(stack, "U_ALICE", msg, "bqgate_approve", job_id)
    with pytest.raises(gexc.Forbidden) as err:
        rows.result(timeout=WAIT_S)
    assert "Approval does not match this job" in str(err.value)
    job = store.get(job_id)
    assert job is not None and job.state == DONE and job.executions == 0


def test_cli_lists_approves_and_denies(
    stack: Stack, gateway_client: bigquery.Client, pool: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from bqgate.cli import main

    dev = ["--dev-dir", str(stack.state_dir)]
    approve_id, approved_rows = request(gateway_client, LEDGER_SQL, pool)
    deny_id, denied_rows = request(gateway_client, LEDGER_SQL + " ", pool)
    for job_id in (approve_id, deny_id):
        message_for(stack, job_id)  # estimated and posted: decidable
    capsys.readouterr()
    assert main(["approvals", "list", *dev]) == 0
    listing = capsys.readouterr().out
    assert approve_id in listing and deny_id in listing
    assert main(["approve", approve_id, "--principal", "bob@example.com", *dev]) == 0
    assert capsys.readouterr().out.strip() == "Approved by bob@example.com"
    assert main(["deny", deny_id, "--reason", "not today", *dev]) == 0
    assert capsys.readouterr().out.strip() == "Denied by alice@example.com: not today"
    assert main(["approve", deny_id, "--principal", "mallory@example.com", *dev]) == 2
    assert "not a member of an approver group" in capsys.readouterr().err
    assert len(approved_rows.result(timeout=WAIT_S)) == 3
    with pytest.raises(gexc.Forbidden, match="not today"):
        denied_rows.result(timeout=WAIT_S)
