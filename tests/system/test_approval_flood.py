"""Issue 21: an agent cannot crowd requests out of the approvers' view.

A hostile agent floods the ingress with 250 approval-needing inserts whose job ids sort
first, while other principals send genuine requests before, during and after it. The
quota (approvals.max_pending_per_principal, 10 in policies/default.yaml) refuses the rest
of the flood with its message; the approvers' list, newest first and paged by a cursor,
reaches every genuine request; the flood's near-identical requests are one group; an
expired request never takes a place in the list (nor a slot of the quota).
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from dataclasses import replace
from typing import Any

import pytest
import requests
from bqgate.adapters.firestore_audit import FirestoreRecorder
from bqgate.adapters.firestore_store import FirestoreJobStore
from bqgate.dev.stack import PROJECT, Stack
from bqgate.jobs import DONE, PENDING_APPROVAL, Job
from conftest import AGENT, mint_token_for
from google.cloud import firestore

pytestmark = pytest.mark.system

FLOOD = 250
QUOTA = 10  # policies/default.yaml
FLOOD_SQL = "SELECT entry_id, amount FROM `demo-project.finance.ledger` WHERE entry_id < 10"
GENUINE = [f"genuine-{i}@demo-project.iam.gserviceaccount.com" for i in range(4)]


def insert(stack: Stack, token: str, job_id: str, sql: str) -> requests.Response:
    return requests.post(
        f"{stack.url('gateway')}/bigquery/v2/projects/{PROJECT}/jobs",
        timeout=120,
        headers={"Authorization": f"Bearer {token}"},
        json={
            "jobReference": {"jobId": job_id},
            "configuration": {"query": {"query": sql, "useLegacySql": False}},
        },
    )


def walk(stack: Stack, approver_token: str, limit: int) -> list[dict[str, Any]]:
    """Every page of the approver API's list, in order."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(200):
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        resp = requests.get(
            f"{stack.url('approvals')}/v1/approvals",
            params=params,
            timeout=60,
            headers={"Authorization": f"Bearer {approver_token}"},
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert len(body["approvals"]) <= limit
        items += body["approvals"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("the list never ended")


def test_a_flood_cannot_hide_genuine_requests(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    store = FirestoreJobStore(firestore.Client(project=PROJECT))
    run = uuid.uuid4().hex[:6]
    agent = mint_token_for(stack, AGENT)
    tokens = {p: mint_token_for(stack, p, ("ai-coding-agents",)) for p in GENUINE}
    genuine: list[str] = []

    def genuine_request(i: int) -> str:
        who = GENUINE[i % len(GENUINE)]
        job_id = f"zz-genuine-{run}-{i}"
        resp = insert(
            stack,
            tokens[who],
            job_id,
            f"SELECT account, SUM(amount) AS total FROM `demo-project.finance.ledger` "
            f"WHERE entry_id > {i} GROUP BY account",
        )
        assert resp.status_code == 200, resp.text
        return job_id

    # One genuine request whose TTL we then cut short: expired, it must never be listed.
    expired_id = genuine_request(100)
    store.transition(expired_id, lambda j: replace(j, expire_at_ms=int(time.time() * 1000) - 1))
    genuine += [genuine_request(i) for i in range(2)]  # before the flood
    flood_ids = [f"000-flood-{run}-{i:04d}" for i in range(1, FLOOD + 1)]
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda j: insert(stack, agent, j, FLOOD_SQL), flood_ids))
        genuine += list(pool.map(genuine_request, range(2, 5)))  # during it (queued last)
    flood_s = time.monotonic() - t0
    genuine += [genuine_request(i) for i in range(5, 7)]  # after it
    accepted = [j for j, r in zip(flood_ids, answers, strict=True) if r.status_code == 200]
    refused = [r for r in answers if r.status_code != 200]
    assert len(accepted) == QUOTA and len(refused) == FLOOD - QUOTA
    for resp in refused:
        err = resp.json()["error"]
        assert resp.status_code == 403 and err["errors"][0]["reason"] == "quotaExceeded"
        assert err["message"].startswith(
            f"Too many open approval requests: {AGENT} already "
            f"has {QUOTA} requests awaiting approval"
        )
        assert f"approvals.max_pending_per_principal = {QUOTA}" in err["message"]

    alice = mint_token_for(stack, "alice@example.com")
    items = walk(stack, alice, limit=5)
    listed = [i["job_id"] for i in items]
    members = {j for i in items for j in i["group"]["job_ids"]}
    created = [i["created_ms"] for i in items]
    assert created == sorted(created, reverse=True)  # newest first, by creation time
    for job_id in genuine:
        assert job_id in listed, job_id  # every genuine request is reachable
    ours = [j for j in listed if j.startswith(f"zz-genuine-{run}-")]
    assert ours == sorted(genuine, key=lambda j: store.get(j).created_ms, reverse=True)  # type: ignore[union-attr]
    assert expired_id not in members  # expired: never in the list
    # The flood's accepted requests are one group of near-identical requests.
    flood_items = [i for i in items if i["owner"] == AGENT and i["job_id"] in accepted]
    assert len(flood_items) == 1 and sorted(flood_items[0]["group"]["job_ids"]) == sorted(accepted)
    assert not set(listed) & (set(flood_ids) - set(accepted))

    # The session record says why the flood was refused.
    sample = next(j for j, r in zip(flood_ids, answers, strict=True) if r.status_code == 403)
    job = store.get(sample)
    assert job is not None and job.state == DONE and job.error is not None
    assert job.error["reason"] == "quotaExceeded"
    recorder = FirestoreRecorder(
        firestore.Client(project=PROJECT), retention_seconds=86400, record_rows=0
    )
    blocked = [
        e for e in recorder.events(job.session_id) if e.job_id == sample and e.kind == "blocked"
    ]
    assert len(blocked) == 1 and blocked[0].data["reason"] == "quotaExceeded"
    assert blocked[0].data["quota"] == "approvals.max_pending_per_principal"

    # bqgate approvals list pages through the same service function.
    from bqgate.cli import main

    capsys.readouterr()
    assert (
        main(["approvals", "list", "--all", "--limit", "7", "--dev-dir", str(stack.state_dir)]) == 0
    )
    listing = capsys.readouterr().out
    assert all(job_id in listing for job_id in genuine) and expired_id not in listing
    assert f"{QUOTA - 1} more pending request(s) of this statement" in listing

    # Expired requests give their slots back: once the flood's requests expire (without
    # waiting for the sweeper), the agent may ask again.
    now = int(time.time() * 1000)
    for job_id in accepted:
        store.transition(
            job_id,
            lambda j: replace(j, expire_at_ms=now - 1) if j.state == PENDING_APPROVAL else None,
        )
    again = insert(stack, agent, f"000-flood-{run}-again", FLOOD_SQL)
    assert again.status_code == 200, again.text
    assert not {i["job_id"] for i in walk(stack, alice, limit=50)} & set(accepted)
    with capsys.disabled():
        print(
            f"\n[issue 21] {FLOOD} flood requests in {flood_s:.1f} s: {len(accepted)} accepted, "
            f"{len(refused)} refused by the quota; {len(items)} list items in "
            f"{-(-len(items) // 5)} pages of 5, all {len(genuine)} genuine requests reachable"
        )


def test_stored_refusal_answers_the_retry(stack: Stack) -> None:
    """A retried insert of a refused job id gets the stored refusal, not a second judgement."""
    agent = mint_token_for(stack, AGENT)
    run = uuid.uuid4().hex[:6]
    answers = [insert(stack, agent, f"q-{run}-{i}", FLOOD_SQL) for i in range(QUOTA + 1)]
    assert [r.status_code for r in answers] == [200] * QUOTA + [403]
    retry = insert(stack, agent, f"q-{run}-{QUOTA}", FLOOD_SQL)
    assert retry.status_code == 200
    status = retry.json()["status"]
    assert status["state"] == "DONE" and status["errorResult"]["reason"] == "quotaExceeded"
    store = FirestoreJobStore(firestore.Client(project=PROJECT))
    assert isinstance(store.get(f"q-{run}-0"), Job)
