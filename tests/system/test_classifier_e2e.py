"""The classifier's guarantees end to end, as the agent with no approver: every whole-table
write shape leaves ``analytics.events`` intact (blocked, or pending approval and then
cancelled), a write touching a handful of rows still runs, routines/models/connections are
judged by name, and statements over the size limits get a 400 at once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from bqgate.adapters.firestore_store import FirestoreJobStore
from bqgate.dev.stack import Stack
from bqgate.jobs import PENDING_APPROVAL
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import always_true

pytestmark = pytest.mark.system

EVENTS = "demo-project.analytics.events"
CHECKSUM = (
    f"SELECT COUNT(*) AS n, BIT_XOR(FARM_FINGERPRINT(TO_JSON_STRING(e))) AS h FROM `{EVENTS}` e"
)

# Forms constant folding cannot settle (and some it can): each would touch every row.
WHOLE_TABLE_SHAPES = [
    f"DELETE FROM `{EVENTS}` WHERE event_id IS NOT NULL",
    f"DELETE FROM `{EVENTS}` WHERE event_id > 0 OR event_id <= 0",
    f"DELETE FROM `{EVENTS}` WHERE name LIKE '%' || ''",
    f"DELETE FROM `{EVENTS}` WHERE STARTS_WITH(name, '')",
    f"DELETE FROM `{EVENTS}` WHERE CASE WHEN event_id > 5 THEN TRUE ELSE TRUE END",
    f"DELETE FROM `{EVENTS}` WHERE event_id IN (SELECT event_id FROM `{EVENTS}`)",
    f"DELETE FROM `{EVENTS}` WHERE event_id = 1 OR EXISTS (SELECT 1)",
    f"DELETE FROM `{EVENTS}` WHERE event_id = 1 OR RAND() < 2",
    f"UPDATE `{EVENTS}` SET name = 'x' WHERE LENGTH(name) >= 0",
    f"UPDATE `{EVENTS}` SET name = 'x' WHERE ts <= CURRENT_TIMESTAMP()",
    f"MERGE `{EVENTS}` T USING `{EVENTS}` S ON T.event_id = S.event_id WHEN MATCHED THEN DELETE",
    f"MERGE `{EVENTS}` T USING (SELECT 1 AS id) S ON T.event_id = S.id OR T.event_id > 0 "
    "WHEN MATCHED THEN UPDATE SET name = 'y'",
    f"DELETE FROM `{EVENTS}` WHERE " + " OR ".join(f"event_id = {i}" for i in range(1, 601)),
    f"DELETE FROM `{EVENTS}` WHERE TRUE",
    f"DELETE FROM `{EVENTS}` WHERE 1 = 1",
]


def direct(stack: Stack) -> bigquery.Client:
    return bigquery.Client(
        project="demo-project",
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=stack.url("bigquery")),
    )


def checksum(stack: Stack) -> tuple[int, int]:
    row = next(iter(direct(stack).query(CHECKSUM).result(timeout=60)))
    return int(row.n), int(row.h)


@pytest.fixture()
def intact_events(stack: Stack) -> Iterator[tuple[int, int]]:
    """The table's checksum before; after the test it must be the same (else reseed)."""
    before = checksum(stack)
    yield before
    if checksum(stack) != before:  # pragma: no cover - only when the guarantee broke
        from bqgate.dev import demo_data

        demo_data.seed(stack.url("bigquery"), stack.state_dir, force=True)


def submit_and_settle(
    client: bigquery.Client, store: FirestoreJobStore, sql: str
) -> tuple[str, Any]:
    """Submit as the agent: ('blocked', error) or ('pending', job) — never a finished write."""
    try:
        job = client.query(sql)
    except gexc.Forbidden as exc:
        return "blocked", exc
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stored = store.get(job.job_id)
        assert stored is not None
        if stored.state == PENDING_APPROVAL and stored.approval_requested_ms:
            job.cancel()
            return "pending", stored
        if stored.done:
            assert stored.error, f"{sql[:80]} ran: {stored.num_dml_affected_rows} rows"
            return "blocked", stored.error
        time.sleep(0.2)
    raise AssertionError(f"{sql[:80]}: neither blocked nor pending approval within 30 s")


def test_whole_table_writes_leave_events_intact(
    stack: Stack,
    gateway_client: bigquery.Client,
    store: FirestoreJobStore,
    intact_events: tuple[int, int],
) -> None:
    outcomes = {}
    for sql in WHOLE_TABLE_SHAPES:
        outcome, detail = submit_and_settle(gateway_client, store, sql)
        outcomes[sql] = outcome
        if outcome == "pending":
            # The approver is told the measured blast radius.
            reasons = " ".join(detail.classification.reasons)
            verb = (
                "changes"
                if sql.startswith("MERGE")
                else ("updates" if sql.startswith("UPDATE") else "deletes")
            )
            touched = 600 if " OR event_id = 600" in sql else 5000  # the 600-term OR
            assert f"{verb} {touched:,} of 5,000 rows of {EVENTS}" in reasons, reasons
            assert detail.blast_radius and detail.blast_radius[0]["touched"] == touched
        assert checksum(stack) == intact_events, f"{sql[:80]} changed the table"
    assert "pending" in outcomes.values() and "blocked" in outcomes.values()


def test_a_write_touching_a_handful_of_rows_runs(
    stack: Stack, gateway_client: bigquery.Client, store: FirestoreJobStore
) -> None:
    table = f"demo-project.analytics.scratch_small_{uuid.uuid4().hex[:8]}"
    client = direct(stack)
    client.create_table(bigquery.Table(table, schema=[bigquery.SchemaField("id", "INTEGER")]))
    client.insert_rows_json(table, [{"id": i} for i in range(100)])
    job = gateway_client.query(f"DELETE FROM `{table}` WHERE id IN (1, 2, 3)")
    job.result(timeout=60)
    assert job.num_dml_affected_rows == 3
    stored = store.get(job.job_id)
    assert stored is not None and stored.blast_radius[0]["touched"] == 3
    assert stored.blast_radius[0]["total"] == 100
    left = next(iter(client.query(f"SELECT COUNT(*) AS n FROM `{table}`").result())).n
    assert left == 97
    # The same table, every row: measured, sent for approval, nothing deleted.
    outcome, detail = submit_and_settle(
        gateway_client, store, f"DELETE FROM `{table}` WHERE id >= 0"
    )
    assert outcome == "pending"
    assert f"deletes 97 of 97 rows of {table}" in " ".join(detail.classification.reasons)
    assert next(iter(client.query(f"SELECT COUNT(*) AS n FROM `{table}`").result())).n == 97


def test_routines_models_and_connections_are_judged_by_name(
    stack: Stack, gateway_client: bigquery.Client, store: FirestoreJobStore
) -> None:
    rows = list(gateway_client.query("SELECT analytics.normalize_name(' Ada ') AS n").result())
    assert rows[0].n == "ada"
    outcome, _ = submit_and_settle(gateway_client, store, "SELECT finance.fx_rate('EUR') AS r")
    assert outcome == "pending", "a routine in the restricted dataset needs approval"
    for sql in (
        "SELECT `evil-project.ds.exfil`(ssn) FROM `demo-project.sales.customers`",
        "SELECT evil_ds.UPPER(email) FROM `demo-project.sales.customers`",
        "SELECT * FROM ML.PREDICT(MODEL `evil-project.ds.m`, "
        "TABLE `demo-project.analytics.events`)",
        "SELECT AI.GENERATE(ssn, connection_id => 'evil-project.us.conn') "
        "FROM `demo-project.sales.customers`",
        "SELECT * FROM EXTERNAL_QUERY('evil-project.us.pg', 'SELECT 1')",
    ):
        with pytest.raises(gexc.Forbidden, match=r"deny by default|not in the policy"):
            gateway_client.query(sql).result(timeout=30)


def test_statements_over_the_limits_get_a_400(gateway_client: bigquery.Client) -> None:
    # The gateway's own SQL limit (its job documents hold the statement) comes first; a
    # body over its request limit is a 413, never parsed.
    long = "SELECT 1 AS x -- " + "y" * (300 * 1024)
    with pytest.raises(gexc.BadRequest, match=r"limit is 262,144 bytes"):
        gateway_client.query(long).result(timeout=30)
    huge = "SELECT 1 AS x -- " + "y" * (2 * 1024 * 1024)
    with pytest.raises(gexc.GoogleAPICallError, match=r"limit of 2097152 bytes") as err:
        gateway_client.query(huge).result(timeout=30)
    assert err.value.code == 413
    deep = "SELECT " + "(" * 1000 + "1" + ")" * 1000
    with pytest.raises(gexc.BadRequest, match="nests brackets 1000 deep"):
        gateway_client.query(deep).result(timeout=30)
    inner = "`demo-project.analytics.events`"
    nested = "SELECT * FROM " + "(SELECT * FROM " * 400 + inner + ")" * 400
    with pytest.raises(gexc.BadRequest, match="deep"):
        gateway_client.query(nested).result(timeout=30)


# --------------------------------------------------------------------------- property


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(predicate=always_true(), verb=st.sampled_from(["DELETE", "UPDATE"]))
def test_generated_always_true_predicates_never_run_as_whole_table_writes(
    stack: Stack,
    gateway_client: bigquery.Client,
    store: FirestoreJobStore,
    predicate: str,
    verb: str,
) -> None:
    before = checksum(stack)
    sql = (
        f"DELETE FROM `{EVENTS}` WHERE {predicate}"
        if verb == "DELETE"
        else f"UPDATE `{EVENTS}` SET name = 'pwned' WHERE {predicate}"
    )
    outcome, _ = submit_and_settle(gateway_client, store, sql)
    assert outcome in ("blocked", "pending")
    assert checksum(stack) == before
