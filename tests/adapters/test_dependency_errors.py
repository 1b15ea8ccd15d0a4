"""The adapters under failure, with the real client libraries: a dependency that never
answers fails within the call's deadline as ``Unavailable``; what BigQuery says about a
statement arrives as the gateway leaf ``from_warehouse`` chose."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from bqgate.adapters.bigquery_warehouse import BigQueryWarehouse
from bqgate.adapters.firestore_audit import FirestoreRecorder, open_client
from bqgate.adapters.firestore_store import FirestoreJobStore
from bqgate.adapters.pubsub_queue import PubSubQueue
from bqgate.chain import ChainKey
from bqgate.classification import Classification
from bqgate.dev.stack import PROJECT, Stack
from bqgate.errors import BqgateError, InvalidQuery, NotFound, Unavailable
from bqgate.jobs import DONE, Job, warehouse_job_id
from bqgate.policy import parse_policy
from bqgate.service.executor import Executor
from bqgate.service.gateway import job_error
from fakes import MemoryQueue
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials

# google-cloud-pubsub ships no py.typed: mypy sees no pubsub_v1 in google.cloud.
from google.cloud import bigquery, firestore, pubsub_v1  # type: ignore[attr-defined]

pytestmark = pytest.mark.emulators

#: The deadline the tests give each call, and how much later than it an answer may come.
DEADLINE_S = 1.0
SLACK_S = 3.0


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (like a SIGSTOPped server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


def fails_unavailable_in_time(call: Callable[[], Any], limit: float) -> float:
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as err:
        call()
    elapsed = time.monotonic() - t0
    assert elapsed < limit, f"answered after {elapsed:.1f}s"
    assert err.value.http_status == 503 and err.value.transient
    return elapsed


def job(**kw: Any) -> Job:
    fields: dict[str, Any] = {
        "job_id": uuid.uuid4().hex,
        "project": PROJECT,
        "location": "US",
        "sql": "SELECT 1",
        "owner": "a@example.com",
        "now_ms": 1,
    }
    fields.update(kw)
    return Job.new(**fields)


def test_a_silent_firestore_fails_every_store_call_within_its_deadline(silent_port: int) -> None:
    client = open_client(PROJECT, emulator_host=f"127.0.0.1:{silent_port}")
    store = FirestoreJobStore(client, call_timeout_s=DEADLINE_S)
    j = job()
    for call in (
        lambda: store.get(j.job_id),
        lambda: store.create(j),
        lambda: store.transition(j.job_id, lambda j: replace(j, state=DONE)),
        lambda: store.put_page(j.job_id, 0, 0, "[]"),
        lambda: store.get_pages(j.job_id, 0, 0),
    ):
        fails_unavailable_in_time(call, DEADLINE_S + SLACK_S)


def test_a_silent_firestore_fails_a_session_append_within_its_deadline(silent_port: int) -> None:
    client = open_client(PROJECT, emulator_host=f"127.0.0.1:{silent_port}")
    recorder = FirestoreRecorder(
        client,
        retention_seconds=60,
        record_rows=1,
        rpc_timeout_s=DEADLINE_S,
        key=ChainKey(b"k" * 32),
    )
    fails_unavailable_in_time(lambda: recorder.record(job(), "request", {}), DEADLINE_S + SLACK_S)


def test_a_silent_pubsub_fails_a_publish_within_its_deadline(
    silent_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{silent_port}")
    publisher = pubsub_v1.PublisherClient()
    queue = PubSubQueue(publisher, PROJECT, timeout_s=DEADLINE_S)
    fails_unavailable_in_time(
        lambda: queue.publish("execute", {"job_id": "j"}), DEADLINE_S + SLACK_S
    )


def test_a_silent_bigquery_fails_within_its_deadline_as_a_transient_error(
    silent_port: int,
) -> None:
    client = bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=f"http://127.0.0.1:{silent_port}"),
    )
    wh = BigQueryWarehouse(
        client,
        project=PROJECT,
        location="US",
        call_timeout_s=DEADLINE_S,
        call_deadline_s=DEADLINE_S,
    )
    fails_unavailable_in_time(
        lambda: wh.dry_run("SELECT 1", default_dataset=None), 2 * DEADLINE_S + SLACK_S
    )


@pytest.fixture()
def warehouse(stack: Stack) -> BigQueryWarehouse:
    client = bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=stack.url("bigquery")),
    )
    return BigQueryWarehouse(client, project=PROJECT, location="US")


@pytest.mark.parametrize(
    ("sql", "leaf", "reason"),
    [
        ("SELECT * FROM `demo-project.analytics.nope`", NotFound, "notFound"),
        ("SELECT * FROM `demo-project.ghost.t`", NotFound, "notFound"),
        ("SELECT nope FROM `demo-project.analytics.events`", InvalidQuery, "invalidQuery"),
    ],
)
def test_the_emulator_s_rejections_arrive_as_gateway_leaves(
    warehouse: BigQueryWarehouse, sql: str, leaf: type[BqgateError], reason: str
) -> None:
    with pytest.raises(leaf) as err:
        warehouse.dry_run(sql, default_dataset=None)
    assert err.value.reason == reason and not err.value.transient
    outcome = warehouse.run(
        warehouse_job_id(uuid.uuid4().hex),
        sql,
        default_dataset=None,
        labels={},
        maximum_bytes_billed=None,
    )
    assert outcome.error is not None and outcome.error.reason == reason


GHOST_POLICY = """
version: 1
tiers: [non-production]
datasets:
  demo-project.analytics: non-production
  demo-project.ghost: non-production
groups:
  ai-coding-agents:
    members: [a@example.com]
rules:
  - groups: [ai-coding-agents]
    tiers: [non-production]
    read: allow
"""


def test_a_dataset_the_policy_allows_but_bigquery_lacks_ends_the_job_not_found(
    stack: Stack, warehouse: BigQueryWarehouse
) -> None:
    """The acceptance's unknown dataset: allowed by policy, missing in the warehouse."""
    policy = parse_policy(GHOST_POLICY)
    store = FirestoreJobStore(firestore.Client(project=PROJECT))
    j = job(
        sql="SELECT * FROM `demo-project.ghost.t`",
        classification=Classification("allow", tables=("demo-project.ghost.t",)),
    )
    store.create(j)
    ex = Executor(
        store=store, warehouse=warehouse, policy=policy, hmac_key=b"k", queue=MemoryQueue()
    )
    t0 = time.monotonic()
    assert ex.run(j.job_id) == "failed"
    print(f"\nunknown dataset: job failed in {time.monotonic() - t0:.2f}s")
    done = store.get(j.job_id)
    assert done is not None and done.state == DONE
    err = job_error(done)
    assert isinstance(err, NotFound) and err.http_status == 404 and "ghost" in err.message
