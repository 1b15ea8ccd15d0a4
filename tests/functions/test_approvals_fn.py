"""The approvals and slack_notify functions, loaded by functions-framework in-process,
against the local stack's emulators and Slack stand-in."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
import uuid
from typing import Any

import functions_framework
import pytest
import requests
from bqgate.approvals import ApprovalRecord
from bqgate.dev.stack import Stack
from bqgate.jobs import DONE, PENDING, PENDING_APPROVAL, Job
from bqgate.slack_blocks import sign
from conftest import AGENT, mint_token_for
from helpers import new_pending_job

pytestmark = pytest.mark.emulators


@pytest.fixture()
def approvals_client(wired: Stack) -> Any:
    app = functions_framework.create_app(
        "approvals", str(wired.repo_root / "functions/approvals/main.py"), "http"
    )
    return app.test_client()


@pytest.fixture()
def notify_client(wired: Stack) -> Any:
    app = functions_framework.create_app(
        "slack_notify", str(wired.repo_root / "functions/slack_notify/main.py"), "cloudevent"
    )
    return app.test_client()


def signed(
    stack: Stack, payload: dict[str, Any], *, ts: int | None = None, secret: str | None = None
) -> dict[str, Any]:
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    stamp = str(ts if ts is not None else int(time.time()))
    sig = sign(secret if secret is not None else stack.signing_secret(), stamp, body)
    return {
        "data": body,
        "content_type": "application/x-www-form-urlencoded",
        "headers": {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": sig},
    }


def click(user: str, action_id: str, job_id: str) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": user},
        "trigger_id": "t-none",
        "container": {"channel_id": "C0BQGATE01", "message_ts": "0"},
        "actions": [{"action_id": action_id, "value": job_id}],
    }


def wait_job(job_id: str, pred: Any, timeout: float = 60) -> Job:
    from bqgate import bootstrap

    deadline = time.monotonic() + timeout
    while True:
        job: Job | None = bootstrap.job_store().get(job_id)
        if job is not None and pred(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not get there: {job}")
        time.sleep(0.2)


def test_health(approvals_client: Any) -> None:
    resp = approvals_client.get("/")
    assert resp.status_code == 200 and resp.get_json()["service"] == "bqgate-approvals"


def test_slack_approve_runs_the_job(wired: Stack, approvals_client: Any) -> None:
    job = new_pending_job()
    resp = approvals_client.post(
        "/slack/interactions", **signed(wired, click("U_ALICE", "bqgate_approve", job.job_id))
    )
    assert resp.status_code == 200
    assert resp.get_json()["text"] == "Approved by alice@example.com"
    done = wait_job(job.job_id, lambda j: j.state == DONE)
    assert done.error is None and done.total_rows == 3 and done.executions == 1
    rec = ApprovalRecord.from_doc(done.approval)
    assert rec.approvers == ("alice@example.com",) and rec.votes[0].via == "slack"


def test_slack_rejects_forged_and_stale_requests(wired: Stack, approvals_client: Any) -> None:
    job = new_pending_job()
    payload = click("U_ALICE", "bqgate_approve", job.job_id)
    forged = approvals_client.post("/slack/interactions", **signed(wired, payload, secret="x"))
    assert forged.status_code == 401
    stale = approvals_client.post(
        "/slack/interactions", **signed(wired, payload, ts=int(time.time()) - 600)
    )
    assert stale.status_code == 401 and "stale" in stale.get_json()["error"]["message"]
    from bqgate import bootstrap

    still = bootstrap.job_store().get(job.job_id)
    assert still is not None and still.state == PENDING_APPROVAL


def test_slack_click_by_a_non_approver(wired: Stack, approvals_client: Any) -> None:
    job = new_pending_job()
    resp = approvals_client.post(
        "/slack/interactions", **signed(wired, click("U_MALLORY", "bqgate_approve", job.job_id))
    )
    assert "mallory@example.com may not approve" in resp.get_json()["text"]


def test_approver_api(wired: Stack, approvals_client: Any) -> None:
    job = new_pending_job()
    alice = {"Authorization": "Bearer " + mint_token_for(wired, "alice@example.com")}
    agent = {"Authorization": "Bearer " + mint_token_for(wired, AGENT)}
    listed = approvals_client.get("/v1/approvals", headers=alice)
    assert listed.status_code == 200
    assert job.job_id in [a["job_id"] for a in listed.get_json()["approvals"]]
    refused = approvals_client.post(f"/v1/approvals/{job.job_id}:approve", headers=agent)
    assert refused.status_code == 403
    body = refused.get_json()["error"]
    assert body["errors"][0]["reason"] == "accessDenied" and "approver group" in body["message"]
    anonymous = approvals_client.post(f"/v1/approvals/{job.job_id}:approve")
    assert anonymous.status_code == 401
    denied = approvals_client.post(
        f"/v1/approvals/{job.job_id}:deny", headers=alice, json={"reason": "ledger is off limits"}
    )
    assert denied.status_code == 200 and denied.get_json()["outcome"] == "denied"
    from bqgate import bootstrap

    stored = bootstrap.job_store().get(job.job_id)
    assert stored is not None and stored.state == DONE
    assert stored.error == {
        "reason": "accessDenied",
        "message": "Denied by alice@example.com: ledger is off limits",
    }
    approve_after = approvals_client.post(f"/v1/approvals/{job.job_id}:approve", headers=alice)
    assert approve_after.get_json()["changed"] is False


def test_slack_notify_posts_the_request_once(wired: Stack, notify_client: Any) -> None:
    job = new_pending_job()
    data = base64.b64encode(json.dumps({"job_id": job.job_id}).encode()).decode()
    envelope = {
        "message": {"data": data, "messageId": "1"},
        "subscription": "projects/demo-project/subscriptions/approvals-push",
    }
    headers = {
        "ce-id": uuid.uuid4().hex,
        "ce-source": "//pubsub.googleapis.com/test",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "ce-specversion": "1.0",
    }
    for _ in range(2):  # a redelivery must not post twice
        resp = notify_client.post("/", json=envelope, headers=headers)
        assert resp.status_code == 200
    messages = requests.get(wired.url("slack") + "/_test/messages", timeout=10).json()["messages"]
    mine = [m for m in messages if job.job_id in json.dumps(m["blocks"])]
    assert len(mine) == 1
    from bqgate import bootstrap

    notified = bootstrap.job_store().get(job.job_id)
    assert notified is not None
    rec = ApprovalRecord.from_doc(notified.approval)
    assert (rec.slack_channel, rec.slack_ts) == (mine[0]["channel"], mine[0]["ts"])
    bad = notify_client.post(
        "/", json={"message": {"data": "!!"}}, headers={**headers, "ce-id": uuid.uuid4().hex}
    )
    assert bad.status_code == 200  # malformed: acknowledged and dropped


def test_approved_job_state_is_pending_until_the_executor_runs(
    wired: Stack, approvals_client: Any
) -> None:
    job = new_pending_job()
    bob = {"Authorization": "Bearer " + mint_token_for(wired, "bob@example.com")}
    resp = approvals_client.post(f"/v1/approvals/{job.job_id}:approve", headers=bob)
    assert resp.status_code == 200
    assert resp.get_json()["state"] in (PENDING, "RUNNING", DONE)
    wait_job(job.job_id, lambda j: j.state == DONE and j.error is None)
