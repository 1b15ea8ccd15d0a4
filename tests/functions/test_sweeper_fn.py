"""The sweeper function, in-process (functions-framework) and as the stack runs it: called
on a schedule by the dev stack's scheduler loop, and fed dead letters by the Pub/Sub
emulator's dead-letter policy."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from bqgate.adapters.firestore_store import FirestoreJobStore
from bqgate.dev.stack import PROJECT, REPO_ROOT, Stack
from bqgate.jobs import DONE, PENDING, PENDING_APPROVAL, RUNNING, Job
from conftest import AGENT, mint_token_for
from functions_framework import create_app
from helpers import until

pytestmark = pytest.mark.emulators


@pytest.fixture()
def sweeper(wired: Stack) -> Any:
    return create_app("sweeper", str(REPO_ROOT / "functions/sweeper/main.py"), "http").test_client()


def new_job(**kw: Any) -> Job:
    now = int(time.time() * 1000)
    fields: dict[str, Any] = {
        "job_id": "sw-" + uuid.uuid4().hex,
        "project": PROJECT,
        "location": "US",
        "sql": "SELECT 1",
        "owner": "a@example.com",
        "now_ms": now,
    }
    fields.update(kw)
    return Job.new(**fields)


def push_body(job_id: str, attempts: int = 5) -> dict[str, Any]:
    data = base64.b64encode(json.dumps({"job_id": job_id}).encode()).decode()
    return {
        "message": {
            "data": data,
            "messageId": "1",
            "attributes": {"CloudPubSubDeadLetterSourceDeliveryCount": str(attempts)},
        },
        "subscription": f"projects/{PROJECT}/subscriptions/execute-dead-letter-push",
    }


def test_health_sweep_and_dead_letter_routes(sweeper: Any, store: FirestoreJobStore) -> None:
    assert sweeper.get("/").get_json() == {"status": "ok", "service": "bqgate-sweeper"}
    done = sweeper.post("/", json={})
    assert done.status_code == 200
    assert set(done.get_json()) == {"outbox", "expired", "orphans_failed", "ms"}
    job = new_job()
    store.create(job)
    resp = sweeper.post("/dead-letter/execute", json=push_body(job.job_id))
    assert resp.status_code == 200 and resp.get_json() == {
        "job_id": job.job_id,
        "outcome": "failed",
    }
    failed = store.get(job.job_id)
    assert failed is not None and failed.state == DONE
    assert failed.error == {
        "reason": "gatewayError",
        "message": (
            "bqgate could not run this job: its executor failed on all 5 deliveries. "
            "Nothing ran in BigQuery"
        ),
    }
    assert sweeper.post("/dead-letter/execute", json={"message": {}}).get_json() == {
        "outcome": "malformed"
    }
    assert sweeper.post("/dead-letter/nope", json={}).status_code == 404
    assert sweeper.get("/dead-letter/execute").status_code == 404


def test_a_job_the_gateway_ended_reads_back_its_own_error(
    stack: Stack, sweeper: Any, store: FirestoreJobStore
) -> None:
    """A job whose every delivery failed ends with the gateway's own error (gatewayError,
    nothing ran in BigQuery): the agent's waiting getQueryResults answers it, and jobs.get,
    jobs.list and every later getQueryResults read back the same reason and message, not
    a "BigQuery failed the job" that BigQuery never said."""
    job = new_job(owner=AGENT, state=PENDING)  # accepted, its executor never ran it
    store.create(job)
    auth = {"Authorization": "Bearer " + mint_token_for(stack, AGENT)}
    base = f"{stack.url('gateway')}/bigquery/v2/projects/{PROJECT}"
    results = f"{base}/queries/{job.job_id}"
    params = {"location": "US", "timeoutMs": "10000"}
    expected = {
        "reason": "gatewayError",
        "message": (
            "bqgate could not run this job: its executor failed on all 5 deliveries. "
            "Nothing ran in BigQuery"
        ),
    }

    def wait_for_the_end() -> requests.Response:
        while True:  # the agent's client polls until the job is complete
            resp = requests.get(results, params=params, headers=auth, timeout=60)
            if resp.status_code != 200 or resp.json().get("jobComplete"):
                return resp

    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(wait_for_the_end)
        ended = sweeper.post("/dead-letter/execute", json=push_body(job.job_id))
        assert ended.get_json() == {"job_id": job.job_id, "outcome": "failed"}
        first = waiting.result(timeout=90)
    assert first.status_code == 400, first.text
    assert first.json()["error"]["message"] == expected["message"]
    assert first.json()["error"]["errors"] == [expected]
    again = requests.get(results, params=params, headers=auth, timeout=60)
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    got = requests.get(f"{base}/jobs/{job.job_id}", params=params, headers=auth, timeout=60)
    assert got.status_code == 200, got.text
    assert got.json()["status"] == {"state": "DONE", "errorResult": expected, "errors": [expected]}
    listed = requests.get(
        f"{base}/jobs", params={"projection": "full"}, headers=auth, timeout=60
    ).json()["jobs"]
    (entry,) = [j for j in listed if j["jobReference"]["jobId"] == job.job_id]
    assert entry["status"] == got.json()["status"]


def test_the_stack_sweeps_on_its_schedule(stack: Stack, store: FirestoreJobStore) -> None:
    """The dev stack's scheduler loop calls the sweeper: an expired request ends, and an
    orphaned RUNNING job fails; a late executor then changes nothing."""
    now = int(time.time() * 1000)
    stale = new_job(
        state=PENDING_APPROVAL, needs_approval=True, expire_at_ms=now - 1, bytes_estimate=1
    )
    orphan = new_job(
        state=RUNNING,
        started_ms=now - 2 * 3600 * 1000,
        executions=1,
        warehouse_job_id="bqgate_orphan",
    )
    store.create(stale)
    store.create(orphan)
    expired = until(
        "the sweeper to expire the request", lambda: (j := store.get(stale.job_id)) and j.done and j
    )
    assert expired.approval["status"] == "expired"
    assert expired.error["message"].startswith("Approval request expired")
    failed = until(
        "the sweeper to fail the orphan", lambda: (j := store.get(orphan.job_id)) and j.done and j
    )
    assert failed.error["reason"] == "timeout"
    assert "did not finish within bqgate's deadline of 20 minutes" in failed.error["message"]
    # The executor receiving the job's execute message now (a late redelivery) skips it.
    data = base64.b64encode(json.dumps({"job_id": orphan.job_id}).encode()).decode()
    resp = requests.post(
        stack.url("executor") + "/",
        timeout=60,
        json={
            "message": {"data": data, "messageId": uuid.uuid4().hex},
            "subscription": "projects/demo-project/subscriptions/execute-push",
        },
        headers={
            "ce-id": uuid.uuid4().hex,
            "ce-specversion": "1.0",
            "ce-source": "//test",
            "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        },
    )
    assert resp.status_code == 200
    after = store.get(orphan.job_id)
    assert after is not None and after.executions == 1 and after.error == failed.error


class _Failing(BaseHTTPRequestHandler):
    """A push endpoint that always fails, like an executor that keeps crashing."""

    hits = 0

    def do_POST(self) -> None:
        type(self).hits += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(500)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


def test_a_message_that_keeps_failing_is_dead_lettered_and_its_job_failed(
    stack: Stack, store: FirestoreJobStore
) -> None:
    # google-cloud-pubsub ships no py.typed: mypy sees no pubsub_v1 in google.cloud.
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(PROJECT, "probe-" + uuid.uuid4().hex[:8])
    sub = subscriber.subscription_path(PROJECT, topic.rsplit("/", 1)[1] + "-push")
    try:
        publisher.create_topic(name=topic)
        subscriber.create_subscription(
            request={
                "name": sub,
                "topic": topic,
                "ack_deadline_seconds": 10,
                "push_config": {"push_endpoint": f"http://127.0.0.1:{server.server_port}/"},
                "retry_policy": {
                    "minimum_backoff": {"seconds": 1},
                    "maximum_backoff": {"seconds": 2},
                },
                # The same dead-letter topic as the stack's execute subscription.
                "dead_letter_policy": {
                    "dead_letter_topic": publisher.topic_path(PROJECT, "execute-dead-letter"),
                    "max_delivery_attempts": 5,
                },
            }
        )
        job = new_job(state=PENDING)
        store.create(job)
        publisher.publish(topic, json.dumps({"job_id": job.job_id}).encode()).result(timeout=30)
        failed = until(
            "the dead-letter consumer to fail the job",
            lambda: (j := store.get(job.job_id)) and j.done and j,
            timeout=120,
        )
        assert failed.error["reason"] == "gatewayError"
        assert failed.error["message"].startswith(
            "bqgate could not run this job: its executor failed on"
        )
        assert _Failing.hits >= 5
    finally:
        subscriber.delete_subscription(request={"subscription": sub})
        publisher.delete_topic(request={"topic": topic})
        subscriber.close()
        server.shutdown()
