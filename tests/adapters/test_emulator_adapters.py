"""The Firestore, Pub/Sub and BigQuery adapters against the real emulators."""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from bqgate.adapters.bigquery_warehouse import BigQueryWarehouse
from bqgate.adapters.firestore_store import FirestoreJobStore
from bqgate.adapters.pubsub_queue import PubSubQueue
from bqgate.classification import Classification
from bqgate.dev.stack import PROJECT, Stack
from bqgate.errors import Duplicate, NotFound
from bqgate.jobs import DONE, RUNNING, Job, warehouse_job_id
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials

# google-cloud-pubsub ships no py.typed: mypy sees no pubsub_v1 in google.cloud.
from google.cloud import bigquery, firestore, pubsub_v1  # type: ignore[attr-defined]

pytestmark = pytest.mark.emulators


@pytest.fixture()
def warehouse(stack: Stack) -> BigQueryWarehouse:
    client = bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=stack.url("bigquery")),
    )
    return BigQueryWarehouse(client, project=PROJECT, location="US")


def new_job(**kw: object) -> Job:
    fields: dict[str, object] = {
        "job_id": uuid.uuid4().hex,
        "project": PROJECT,
        "location": "US",
        "sql": "SELECT 1",
        "owner": "a@example.com",
        "now_ms": 1,
    }
    fields.update(kw)
    return Job.new(**fields)


def test_firestore_create_get_and_duplicate(store: FirestoreJobStore) -> None:
    job = new_job(labels={"session_id": "s"})
    store.create(job)
    assert store.get(job.job_id) == job
    with pytest.raises(Duplicate):
        store.create(job)
    assert store.get("no-such-job") is None
    with pytest.raises(NotFound):
        store.transition("no-such-job", lambda j: None)


def test_a_stored_job_with_an_unknown_field_is_an_error_not_silence(
    store: FirestoreJobStore,
) -> None:
    job = new_job()
    store.create(job)
    client = firestore.Client(project=PROJECT)
    client.collection("jobs").document(job.job_id).update({"stat": "DONE"})  # a misspelt field
    fresh = FirestoreJobStore(client)  # nothing remembered: it reads the stored document
    with pytest.raises(ValueError, match="fields that Job does not: stat"):
        fresh.get(job.job_id)


STORED = json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures" / "stored" / "jobs.json").read_text("utf-8")
)


@pytest.mark.parametrize("name", ["write_over", "routine", "second_opinion"])
def test_a_job_document_an_earlier_version_stored_reads_and_writes_back_the_same(
    store: FirestoreJobStore, name: str
) -> None:
    """A job document as a stack run stored it (tests/fixtures/stored/jobs.json) reads back
    through the store with its typed classification, a transition that changes nothing
    writes nothing, and the same job stored anew is the same Firestore document."""
    raw = {**STORED["stack_run"][name]["job"], "job_id": uuid.uuid4().hex}
    client = firestore.Client(project=PROJECT)
    client.collection("jobs").document(raw["job_id"]).set(raw)
    fresh = FirestoreJobStore(client)  # nothing remembered: it reads the stored document
    job = fresh.get(raw["job_id"])
    assert job is not None and isinstance(job.classification, Classification)
    assert job.to_doc() == raw
    assert not fresh.transition(job.job_id, lambda j: replace(j)).changed
    again = replace(job, job_id=uuid.uuid4().hex)
    store.create(again)
    written = client.collection("jobs").document(again.job_id).get().to_dict() or {}
    written.pop("expire_at", None)
    assert json.dumps(written, sort_keys=True) == json.dumps(
        {**raw, "job_id": again.job_id}, sort_keys=True
    )


def test_firestore_transition_serialises_concurrent_claims(store: FirestoreJobStore) -> None:
    job = new_job()
    store.create(job)
    winners: list[int] = []

    def claim(i: int) -> None:
        def change(j: Job) -> Job | None:
            return (
                None
                if j.state == RUNNING
                else replace(j, state=RUNNING, executions=j.executions + 1)
            )

        result = store.transition(job.job_id, change).after
        if result.executions == 1 and result.state == RUNNING:
            winners.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = store.get(job.job_id)
    assert final is not None and final.executions == 1


def test_firestore_pages_round_trip(store: FirestoreJobStore) -> None:
    job = new_job()
    store.create(job)
    for i in range(3):
        store.put_page(job.job_id, i, i * 10, json.dumps([[str(i)]]))
    assert store.get_pages(job.job_id, 1, 2) == [(10, '[["1"]]'), (20, '[["2"]]')]
    with pytest.raises(NotFound):
        store.get_pages(job.job_id, 2, 3)


def test_pubsub_queue_publishes_json(stack: Stack) -> None:
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic = f"t-{uuid.uuid4().hex[:8]}"
    publisher.create_topic(name=publisher.topic_path(PROJECT, topic))
    sub = subscriber.subscription_path(PROJECT, topic + "-pull")
    subscriber.create_subscription(name=sub, topic=publisher.topic_path(PROJECT, topic))
    PubSubQueue(publisher, PROJECT).publish(topic, {"job_id": "j-1"})
    resp = subscriber.pull(subscription=sub, max_messages=5, timeout=10)
    assert [json.loads(m.message.data) for m in resp.received_messages] == [{"job_id": "j-1"}]
    subscriber.close()


def test_warehouse_runs_pages_and_describes(warehouse: BigQueryWarehouse) -> None:
    wjid = warehouse_job_id(uuid.uuid4().hex)
    outcome = warehouse.run(
        wjid,
        "SELECT event_id, ts FROM `demo-project.analytics.events` "
        "WHERE event_id <= 25 ORDER BY event_id",
        default_dataset=None,
        labels={"bqgate_job": "t"},
        maximum_bytes_billed=10**10,
    )
    assert outcome.error is None and outcome.total_rows == 25
    assert [f["name"] for f in outcome.schema] == ["event_id", "ts"]
    pages = list(warehouse.pages(wjid, page_size=10, max_rows=None))
    assert [len(p) for p in pages] == [10, 10, 5]
    assert pages[0][0][0] == "1" and pages[0][0][1].isdigit()  # int64 microsecond timestamps
    assert [len(p) for p in warehouse.pages(wjid, page_size=10, max_rows=15)] == [10, 5]
    assert (
        warehouse.dry_run("SELECT * FROM `demo-project.analytics.events`", default_dataset=None)
        >= 0
    )
    schema = warehouse.table_schema("demo-project.sales.customers")
    assert [f["name"] for f in schema][:3] == ["customer_id", "full_name", "email"]
    with pytest.raises(KeyError):
        warehouse.table_schema("demo-project.sales.nope")


def test_warehouse_reports_query_errors_without_raising(warehouse: BigQueryWarehouse) -> None:
    outcome = warehouse.run(
        warehouse_job_id(uuid.uuid4().hex),
        "SELECT no_such_column FROM `demo-project.analytics.events`",
        default_dataset=None,
        labels={},
        maximum_bytes_billed=None,
    )
    assert outcome.error is not None and outcome.error.reason == "invalidQuery"


def test_same_job_id_twice_runs_the_statement_once(warehouse: BigQueryWarehouse) -> None:
    """A killed-then-retried executor reuses the derived job id: BigQuery answers 409 and
    the adapter attaches to the existing job instead of running the INSERT again."""
    marker = f"retry-{uuid.uuid4().hex[:8]}"
    table = f"demo-project.analytics.scratch_{marker.replace('-', '_')}"
    warehouse.client.create_table(
        bigquery.Table(table, schema=[bigquery.SchemaField("name", "STRING")])
    )
    wjid = warehouse_job_id(marker)
    sql = f"INSERT INTO `{table}` (name) VALUES ('{marker}')"
    for _ in range(2):
        outcome = warehouse.run(
            wjid, sql, default_dataset=None, labels={}, maximum_bytes_billed=None
        )
        assert outcome.error is None
    count = warehouse.client.query(f"SELECT COUNT(*) AS n FROM `{table}`").result(timeout=30)
    assert next(iter(count)).n == 1


def test_done_state_constant_is_what_the_store_reports(store: FirestoreJobStore) -> None:
    job = new_job()
    store.create(job)
    done = store.transition(job.job_id, lambda j: replace(j, state=DONE, total_rows=0)).after
    assert done.state == DONE and store.get(job.job_id).total_rows == 0  # type: ignore[union-attr]


def test_jobs_and_pages_carry_a_ttl_timestamp(stack: Stack) -> None:
    import datetime as dt

    client = firestore.Client(project=PROJECT)
    store = FirestoreJobStore(client, retention_seconds=3600)
    job = new_job()
    store.create(job)
    store.put_page(job.job_id, 0, 0, "[]")
    now = dt.datetime.now(dt.UTC)
    for ref in (
        client.collection("jobs").document(job.job_id),
        client.collection("jobs").document(job.job_id).collection("pages").document("000000"),
    ):
        doc = ref.get().to_dict()
        assert doc is not None
        expire_at = doc["expire_at"]
        assert dt.timedelta(minutes=59) < expire_at - now <= dt.timedelta(hours=1)


def test_killed_then_retried_executor_runs_the_statement_once(
    stack: Stack, store: FirestoreJobStore, warehouse: BigQueryWarehouse
) -> None:
    """The executor died after starting the BigQuery job (state RUNNING, job id taken):
    the retry attaches to that job; and a retry after BigQuery finished changes nothing."""
    from bqgate.policy import load_policy
    from bqgate.service.executor import Executor

    marker = f"killed_{uuid.uuid4().hex[:8]}"
    table = f"demo-project.analytics.scratch_{marker}"
    warehouse.client.create_table(
        bigquery.Table(table, schema=[bigquery.SchemaField("name", "STRING")])
    )
    sql = f"INSERT INTO `{table}` (name) VALUES ('{marker}')"
    job = new_job(sql=sql, classification=Classification("allow", tables=(table,)))
    store.create(job)
    # The first executor got this far before it was killed:
    warehouse.run(
        warehouse_job_id(job.job_id),
        sql,
        default_dataset=None,
        labels={},
        maximum_bytes_billed=None,
    )
    store.transition(job.job_id, lambda j: replace(j, state=RUNNING, executions=1))
    executor = Executor(
        store=store, warehouse=warehouse, hmac_key=b"k", policy=load_policy("policies/default.yaml")
    )
    assert executor.run(job.job_id) == "done"
    # Killed again after BigQuery finished but before DONE was written: retried once more.
    store.transition(job.job_id, lambda j: replace(j, state=RUNNING))
    assert executor.run(job.job_id) == "done"
    done = store.get(job.job_id)
    assert done is not None and done.state == DONE and done.executions == 3
    rows = warehouse.client.query(f"SELECT COUNT(*) AS n FROM `{table}`").result(timeout=30)
    assert next(iter(rows)).n == 1


def _claim(job: Job) -> Job | None:
    return None if job.state != "PENDING" else replace(job, state=RUNNING, executions=1)


def test_a_handed_over_job_is_read_without_a_round_trip_and_a_stale_one_never_wins(
    stack: Stack,
) -> None:
    """The direct call hands the executor the job as the ingress wrote it: the executor's
    first read answers from it (no read: shown by handing over a version that is no
    longer stored), and its write is a compare-and-set on that version, so a stale
    handover reads the stored job and starts again from it."""
    ingress = FirestoreJobStore(firestore.Client(project=PROJECT))
    other = FirestoreJobStore(firestore.Client(project=PROJECT))
    job = new_job()
    ingress.create(job)
    handed = json.loads(json.dumps(ingress.handover(job.job_id)))  # over HTTP, as JSON
    assert handed["doc"]["job_id"] == job.job_id

    # Someone else ends the job after the handover was taken.
    other.transition(job.job_id, lambda j: replace(j, state=DONE, ended_ms=5))

    executor = FirestoreJobStore(firestore.Client(project=PROJECT))
    assert executor.adopt(job.job_id, handed)
    assert executor.get(job.job_id) == job  # the handed version: no read
    claimed = executor.transition(job.job_id, _claim)
    assert not claimed.changed and claimed.after.state == DONE  # the stored one won
    again = executor.get(job.job_id)  # only once: now it reads
    assert again is not None and again.state == DONE


def test_a_fresh_handover_lets_the_claim_commit_without_a_read(stack: Stack) -> None:
    ingress = FirestoreJobStore(firestore.Client(project=PROJECT))
    job = new_job()
    ingress.create(job)
    executor = FirestoreJobStore(firestore.Client(project=PROJECT))
    assert executor.adopt(job.job_id, json.loads(json.dumps(ingress.handover(job.job_id))))
    reads: list[str] = []
    real = executor._snapshot

    def counted(job_id: str) -> object:
        reads.append(job_id)
        return real(job_id)

    executor._snapshot = counted  # type: ignore[method-assign]
    assert executor.get(job.job_id) == job  # as the executor starts: from the handover
    claimed = executor.transition(job.job_id, _claim)
    assert claimed.changed and claimed.after.state == RUNNING
    assert reads == []  # neither the start nor the claim read the job
    stored = ingress.get(job.job_id)
    assert stored is not None and stored.state == RUNNING


@pytest.mark.parametrize(
    "state",
    [
        None,
        "garbage",
        {"update_time": "not a time", "doc": {}},
        {"update_time": "2026-01-01T00:00:00.000000001Z"},
        {"update_time": "2026-01-01T00:00:00.000000001Z", "doc": {"job_id": "another"}},
    ],
)
def test_anything_but_a_handover_of_this_job_is_not_taken(stack: Stack, state: object) -> None:
    store = FirestoreJobStore(firestore.Client(project=PROJECT))
    job = new_job()
    store.create(job)
    other = FirestoreJobStore(firestore.Client(project=PROJECT))
    assert other.adopt(job.job_id, state) is False
    assert other.get(job.job_id) == job  # read from the store
