"""An allowed read handed to the executor uncommitted, on the local stack.

The ingress commits nothing before its direct call: the executor creates the job with its
claim and the request's session events in one Firestore commit, made while the read runs
(:func:`bqgate.service.dispatch.directly_acceptable`); the commit that ends the job is the
only other one. Checked on the real Firestore emulator: a commit's writes share one
commit time, which is each document's create time.
"""

from __future__ import annotations

import json
import time
import uuid

import helpers
import pytest
import requests
from bqgate import outbox
from bqgate.adapters.firestore_audit import EVENTS, SESSIONS, FirestoreRecorder
from bqgate.adapters.firestore_store import FirestoreJobStore
from bqgate.audit.chain import session_doc_id
from bqgate.chain import Keyring, load_or_create_dev_key
from bqgate.classification import Classification
from bqgate.cli import main
from bqgate.dev.stack import PROJECT, Stack
from bqgate.jobs import Job, warehouse_job_id
from bqgate.service.dispatch import DIRECT_HEADER, NOT_CREATED, ExecutorAnswer
from bqgate.verification import verify_chain
from bqgate.wire import envelopes
from conftest import mint_token_for
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery, firestore

pytestmark = pytest.mark.system

EVENTS_TABLE = "`demo-project.analytics.events`"
SQL = f"SELECT name, COUNT(*) AS n FROM {EVENTS_TABLE} GROUP BY name ORDER BY name"
ACCEPTED_PATH = ["request", "classification", "execution_started", "execution_finished", "result"]


def insert_as(stack: Stack, principal: str, job_id: str, sql: str) -> requests.Response:
    """``jobs.insert`` of ``sql`` under ``job_id`` as another agent (of the agents group,
    so an allowed read takes the hand-over)."""
    token = mint_token_for(stack, principal, ("ai-coding-agents",))
    return requests.post(
        f"{stack.url('gateway')}/bigquery/v2/projects/{PROJECT}/jobs",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "jobReference": {"projectId": PROJECT, "jobId": job_id},
            "configuration": {"query": {"query": sql, "useLegacySql": False}},
        },
        timeout=60,
    )


def labelled(label: str) -> bigquery.QueryJobConfig:
    return bigquery.QueryJobConfig(labels={"session_id": label})


def test_an_allowed_read_is_created_with_its_claim_in_one_commit(
    stack: Stack, gateway_client: bigquery.Client, store: FirestoreJobStore
) -> None:
    label = f"handover-{uuid.uuid4().hex[:8]}"
    job = gateway_client.query(SQL, job_config=labelled(label))
    rows = list(job.result(timeout=60))
    assert rows and all(r.n > 0 for r in rows)
    stored = store.get(job.job_id)
    assert stored is not None and stored.state == "DONE" and stored.executions == 1
    client = firestore.Client(project=PROJECT)
    record = FirestoreRecorder(client, retention_seconds=3600, record_rows=100)
    events = record.events(stored.session_id)
    mine = [e for e in events if e.job_id == job.job_id]
    assert [e.kind for e in mine] == ACCEPTED_PATH
    # One commit created the job, its hand-off record and the request's three events.
    snaps = {
        e.kind: client.collection(SESSIONS)
        .document(session_doc_id(stored.session_id))
        .collection(EVENTS)
        .document(e.event_id)
        .get()
        for e in mine
    }
    job_snap = client.collection("jobs").document(job.job_id).get()
    handoff = client.collection("outbox").document(outbox.record_id(job.job_id, outbox.ACCEPTED))
    created = {
        snaps["request"].create_time,
        snaps["classification"].create_time,
        snaps["execution_started"].create_time,
        job_snap.create_time,
        handoff.get().create_time,
    }
    assert len(created) == 1
    # ... and one more ended it, with the result's events; the hand-off is finished.
    assert snaps["result"].create_time == snaps["execution_finished"].create_time
    assert snaps["result"].create_time > job_snap.create_time
    assert (handoff.get().to_dict() or {})["done_ms"] is not None
    keys = Keyring([load_or_create_dev_key(stack.state_dir)])
    head = record.head(stored.session_id)
    assert verify_chain(events, keys=keys, head=head, now_ms=int(time.time() * 1000)) is None


def test_an_id_another_principal_holds_is_a_conflict_and_their_job_is_untouched(
    stack: Stack, gateway_client: bigquery.Client, store: FirestoreJobStore
) -> None:
    job_id = f"taken-{uuid.uuid4().hex[:10]}"
    theirs = gateway_client.query(SQL, job_id=job_id, job_retry=None)
    expected = [tuple(r.values()) for r in theirs.result(timeout=60)]
    before = store.get(job_id)
    assert before is not None
    record = FirestoreRecorder(
        firestore.Client(project=PROJECT), retention_seconds=3600, record_rows=100
    )
    events_before = record.events(before.session_id)
    resp = insert_as(stack, "eve@example.com", job_id, SQL)
    assert resp.status_code == 409, resp.text
    assert resp.json()["error"]["errors"][0]["reason"] == "duplicate"
    assert "rows" not in resp.text and "user" not in resp.text
    after = store.get(job_id)
    assert after is not None and after.to_doc() == before.to_doc()
    assert record.events(before.session_id) == events_before
    # The holder still reads its own rows, and only it.
    again = gateway_client.get_job(job_id)
    assert isinstance(again, bigquery.QueryJob)
    assert [tuple(r.values()) for r in again.result(timeout=60)] == expected


def test_a_retried_insert_is_answered_from_its_job_and_records_nothing_new(
    gateway_client: bigquery.Client, store: FirestoreJobStore
) -> None:
    job_id = f"retry-{uuid.uuid4().hex[:10]}"
    first = [
        tuple(r.values()) for r in gateway_client.query(SQL, job_id=job_id, job_retry=None).result()
    ]
    stored = store.get(job_id)
    assert stored is not None
    resp = gateway_client._connection.api_request(  # the same insert, sent again
        method="POST",
        path=f"/projects/{PROJECT}/jobs",
        data={
            "jobReference": {"projectId": PROJECT, "jobId": job_id},
            "configuration": {"query": {"query": SQL, "useLegacySql": False}},
        },
    )
    assert resp["status"]["state"] == "DONE"
    job = gateway_client.get_job(job_id)
    assert isinstance(job, bigquery.QueryJob)
    again = [tuple(r.values()) for r in job.result()]
    assert again == first
    record = FirestoreRecorder(
        firestore.Client(project=PROJECT), retention_seconds=3600, record_rows=100
    )
    kinds = [e.kind for e in record.events(stored.session_id) if e.job_id == job_id]
    assert kinds == ACCEPTED_PATH
    assert (store.get(job_id) or stored).executions == 1


def _hand_over(stack: Stack, job: Job) -> ExecutorAnswer:
    rec = outbox.new_record(job.job_id, outbox.ACCEPTED, "execute", now_ms=1, deadline_ms=20_000)
    headers, body = envelopes.direct_call(
        job.job_id, {"new": {"doc": job.to_doc(), "outbox": rec.to_doc()}}
    )
    headers[DIRECT_HEADER] = "1"
    resp = requests.post(stack.url("executor") + "/", data=body, headers=headers, timeout=60)
    assert resp.status_code == 200, resp.text
    answer = ExecutorAnswer.from_json(resp.content)
    assert answer is not None
    return answer


@pytest.mark.parametrize(
    ("sql", "verdict", "dry_run"),
    [
        (
            "DELETE FROM `demo-project.analytics.events` WHERE true",
            Classification(
                "allow", statements=("DELETE",), tables=("demo-project.analytics.events",)
            ),
            False,
        ),
        (SQL, Classification("approve", statements=("SELECT",)), False),
        (SQL, Classification("allow", statements=("SELECT",)), True),
    ],
    ids=["a-write", "needs-approval", "a-dry-run"],
)
def test_the_executor_creates_nothing_handed_over_that_is_not_an_allowed_read(
    stack: Stack, store: FirestoreJobStore, sql: str, verdict: Classification, dry_run: bool
) -> None:
    job = Job.new(
        job_id=f"nothandy-{uuid.uuid4().hex[:10]}",
        project=PROJECT,
        location="US",
        sql=sql,
        owner="agent@demo-project.iam.gserviceaccount.com",
        classification=verdict,
        dry_run=dry_run,
        now_ms=1,
    )
    answer = _hand_over(stack, job)
    assert answer.outcome == NOT_CREATED and not answer.accepted and answer.job is None
    assert store.get(job.job_id) is None
    assert json.loads(answer.to_json().split(b"\n")[0])["accepted"] is False


PAYROLL = (
    "SELECT employee_id, name, salary FROM `demo-project.finance.payroll` "
    "ORDER BY employee_id LIMIT 2"
)


def test_a_read_under_a_pending_requests_id_cannot_become_its_result(
    stack: Stack, gateway_client: bigquery.Client, store: FirestoreJobStore
) -> None:
    """Job-id squatting on the real BigQuery emulator: a read submitted with the id of
    another principal's request awaiting approval starts on BigQuery before its create
    fails as a duplicate; it must not run as the BigQuery job the approved request will
    attach to (the approved statement would "finish" with the squatter's result)."""
    job_id = f"squat-{uuid.uuid4().hex[:10]}"
    pending = gateway_client.query(PAYROLL, job_id=job_id, job_retry=None)
    held = store.get(job_id)
    assert held is not None and held.state == "PENDING_APPROVAL"
    resp = insert_as(stack, "eve@example.com", job_id, SQL)
    assert resp.status_code == 409, resp.text
    emulator = bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=stack.url("bigquery")),
    )
    with pytest.raises(gexc.NotFound):
        emulator.get_job(warehouse_job_id(job_id))
    record = FirestoreRecorder(
        firestore.Client(project=PROJECT), retention_seconds=3600, record_rows=100
    )
    session = held.session_id

    def notified() -> bool:
        return "notified" in [e.kind for e in record.events(session) if e.job_id == job_id]

    helpers.until("the approval request in Slack", notified, timeout=90)
    dev = ["--dev-dir", str(stack.state_dir)]
    assert main(["approve", job_id, "--principal", "bob@example.com", *dev]) == 0
    rows = list(pending.result(timeout=90))
    assert len(rows) == 2 and all(r.salary is None for r in rows)  # its own statement, masked
    assert {"employee_id", "name", "salary"} == set(rows[0].keys())
