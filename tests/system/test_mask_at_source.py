"""Mask at the source, end to end through the local stack as the demo agent: the token of a
chosen plaintext is never returned, tokenised keys still join across tables, an approved
copy from sales into analytics holds masked values only, and warehouse errors carry masked
values only — no URL, no internal job id."""

from __future__ import annotations

import hmac
import json
import re
import uuid
from typing import Any

import pytest
from bqgate.adapters.firestore_store import FirestoreJobStore
from bqgate.dev import demo_data
from bqgate.dev.stack import Stack
from bqgate.jobs import PENDING_APPROVAL
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery, firestore
from helpers import until

pytestmark = pytest.mark.system

TOKEN = re.compile(r"tok_[0-9a-f]{24}")
URL = re.compile(r"https?://|/bigquery/v2/")
INTERNAL_ID = re.compile(r"bqgate_[0-9a-f]{16,}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}")


def key_of(stack: Stack) -> bytes:
    return (stack.state_dir / "hmac.key").read_bytes().strip()


def token(key: bytes, value: str) -> str:
    return "tok_" + hmac.digest(key, value.encode(), "sha256").hex()[:24]


def direct(stack: Stack) -> bigquery.Client:
    return bigquery.Client(
        project="demo-project",
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=stack.url("bigquery")),
    )


def rows(client: bigquery.Client, sql: str) -> list[list[Any]]:
    config = bigquery.QueryJobConfig(default_dataset="demo-project.sales")
    return [list(r.values()) for r in client.query(sql, job_config=config).result(timeout=60)]


ORACLES = [
    "SELECT full_name FROM customers WHERE FALSE UNION ALL SELECT 'Some Name'",
    "SELECT 'Some Name' AS full_name UNION ALL SELECT full_name FROM customers WHERE FALSE",
    "SELECT full_name FROM customers WHERE FALSE UNION DISTINCT SELECT 'Kwame Sammet'",
    "SELECT x FROM (SELECT full_name AS x FROM customers WHERE FALSE UNION ALL "
    "SELECT 'Kwame Sammet') AS t",
    "SELECT full_name FROM customers WHERE FALSE UNION ALL "
    "SELECT n FROM UNNEST(['Some Name', 'Kwame Sammet']) AS n",
    "SELECT IF(customer_id > 0, 'Kwame Sammet', full_name) AS full_name FROM customers LIMIT 1",
    "SELECT COALESCE(NULL, full_name, 'Kwame Sammet') FROM customers WHERE FALSE "
    "UNION ALL SELECT 'Kwame Sammet'",
]


def test_the_token_oracle_returns_no_token(stack: Stack, gateway_client: bigquery.Client) -> None:
    key = key_of(stack)
    chosen = {token(key, "Some Name"), token(key, "Kwame Sammet")}
    for sql in ORACLES:
        answer = rows(gateway_client, sql)
        found = {t for row in answer for cell in row for t in TOKEN.findall(str(cell))}
        assert not found & chosen, f"{sql}: returned the token of a chosen plaintext"
    # Not vacuous: a real customer's token does come back, and it is the keyed HMAC.
    first = demo_data.customers()[0]["full_name"]
    (real,) = rows(gateway_client, "SELECT full_name FROM customers WHERE customer_id = 1")
    assert real == [token(key, first)]


def approve(stack: Stack, job_id: str) -> None:
    from bqgate.cli import main

    store = FirestoreJobStore(firestore.Client(project="demo-project"))
    until(
        "the approval request",
        lambda: (
            (j := store.get(job_id)) is not None
            and j.state == PENDING_APPROVAL
            and j.approval_requested_ms
        ),
    )
    assert (
        main(
            [
                "approve",
                job_id,
                "--principal",
                "alice@example.com",
                "--dev-dir",
                str(stack.state_dir),
            ]
        )
        == 0
    )


def test_a_join_on_tokenised_keys_across_two_tables_still_matches(
    stack: Stack, gateway_client: bigquery.Client
) -> None:
    """customers.full_name and payroll.name are both hmac: equal names, equal tokens."""
    truth = rows(
        direct(stack),
        "SELECT COUNT(*) FROM `demo-project.sales.customers` c "
        "JOIN `demo-project.finance.payroll` p ON c.full_name = p.name",
    )
    assert truth[0][0] > 0, "the demo data shares names between the two tables"
    sql = (
        "SELECT COUNT(*) AS n, COUNT(DISTINCT c.full_name) AS names "
        "FROM `demo-project.sales.customers` c "
        "JOIN `demo-project.finance.payroll` p ON c.full_name = p.name"
    )
    job = gateway_client.query(sql)  # finance is restricted: it waits for an approver
    approve(stack, job.job_id)
    (got,) = [list(r.values()) for r in job.result(timeout=90)]
    assert got[0] == truth[0][0]
    grouped = rows(
        gateway_client,
        "SELECT full_name, COUNT(*) AS n FROM customers "
        "GROUP BY full_name ORDER BY n DESC, full_name LIMIT 3",
    )
    assert all(TOKEN.fullmatch(r[0]) for r in grouped) and grouped[0][1] >= 1


def test_an_approved_copy_into_analytics_holds_masked_values_only(
    stack: Stack, gateway_client: bigquery.Client
) -> None:
    table = f"demo-project.analytics.scratch_copy_{uuid.uuid4().hex[:8]}"
    client = direct(stack)
    client.create_table(
        bigquery.Table(
            table,
            schema=[
                bigquery.SchemaField(c, "STRING") for c in ("name", "email", "ssn", "phone", "card")
            ]
            + [bigquery.SchemaField("born", "DATE")],
        )
    )
    # The copy reads production and writes non-production: allowed, and its values are
    # masked at the source. The same copy from restricted finance needs approval.
    job = gateway_client.query(
        f"INSERT INTO `{table}` (name, email, ssn, phone, card, born) "
        "SELECT full_name, email, ssn, phone, card_number, birth_date "
        "FROM `demo-project.sales.customers`"
    )
    job.result(timeout=90)
    copied = rows(
        client, f"SELECT name, email, ssn, phone, card, CAST(born AS STRING) FROM `{table}`"
    )
    assert len(copied) == 1000
    raw = {
        str(r[c])
        for r in demo_data.customers()
        for c in ("full_name", "email", "ssn", "phone", "card_number")
    }
    assert not raw & {str(v) for r in copied for v in r}, "a raw value landed in analytics"
    assert all(TOKEN.fullmatch(r[0]) and r[1].startswith("XXXXX@") for r in copied)
    assert all(r[5].endswith("-01-01") for r in copied)
    pay = gateway_client.query(
        f"INSERT INTO `{table}` (name, ssn) SELECT name, iban FROM `demo-project.finance.payroll`"
    )
    approve(stack, pay.job_id)
    pay.result(timeout=90)
    ibans = {r["iban"] for r in demo_data.tables()["finance.payroll"]}
    landed = rows(client, f"SELECT name, ssn FROM `{table}` WHERE email IS NULL")
    assert len(landed) == len(ibans)
    assert not ibans & {r[1] for r in landed} and all(TOKEN.fullmatch(r[0]) for r in landed)


ERRORS = [
    ("SELECT ERROR(ssn) FROM customers", "XXX-XX-"),
    ("SELECT ERROR(CONCAT('leak:', email)) FROM customers WHERE customer_id = 1", "XXXXX@"),
    ("SELECT ERROR(full_name) FROM customers WHERE customer_id = 2", "tok_"),
    ("SELECT CAST(email AS INT64) FROM customers", "XXXXX@"),
    ("SELECT CAST(ssn AS INT64) FROM customers", "XXX-XX-"),
    ("SELECT PARSE_DATE('%Y-%m-%d', ssn) FROM customers", "XXX-XX-"),
    ("SELECT CAST(phone AS FLOAT64) FROM customers", "+X-XXX-XXX-"),
    ("SELECT nope_col FROM customers", "nope_col"),
    ("SELECT * FROM sales.nope_table", "nope_table"),
]


@pytest.mark.parametrize(("sql", "shows"), ERRORS)
def test_errors_show_masked_values_and_no_url_or_job_id(
    stack: Stack, gateway_client: bigquery.Client, sql: str, shows: str
) -> None:
    with pytest.raises(gexc.GoogleAPICallError) as info:
        rows(gateway_client, sql)
    exc = info.value
    assert isinstance(exc, gexc.BadRequest | gexc.NotFound), exc
    message = exc.message or ""
    server = message.split("\n\nLocation:")[0]  # the client appends its own job id
    assert shows in server, server
    assert not URL.search(server) and not INTERNAL_ID.search(server), server
    raw = {str(r[c]) for r in demo_data.customers() for c in ("email", "ssn", "phone")}
    assert not any(v in server for v in raw), server
    for err in exc.errors or []:
        assert err.get("reason") in ("invalidQuery", "notFound"), err


def test_the_session_record_keeps_both_statements(
    stack: Stack, gateway_client: bigquery.Client
) -> None:
    job = gateway_client.query("SELECT ssn FROM `demo-project.sales.customers` LIMIT 1")
    job.result(timeout=60)
    store = FirestoreJobStore(firestore.Client(project="demo-project"))
    stored = store.get(job.job_id)
    assert stored is not None and stored.rewritten_sql and "REPLACE" in stored.rewritten_sql
    assert stored.sql == "SELECT ssn FROM `demo-project.sales.customers` LIMIT 1"
    key = key_of(stack).decode()
    docs = [
        d.to_dict()
        for d in firestore.Client(project="demo-project").collection_group("events").stream()
    ]

    def values(obj: Any) -> list[str]:
        if isinstance(obj, str) and obj[:1] in "{[":
            try:
                obj = json.loads(obj)  # the event data is stored as canonical JSON
            except ValueError:
                return [obj]
        if isinstance(obj, dict):
            return [v for x in obj.values() for v in values(x)]
        if isinstance(obj, list):
            return [v for x in obj for v in values(x)]
        return [str(obj)]

    texts = [v for d in docs for v in values(d)]
    assert stored.rewritten_sql in texts, "the session holds the rewritten SQL"
    assert stored.sql in texts or any(stored.sql in t for t in texts), "and the original"
    assert not any(key in t for t in texts), "the key is never recorded"


def test_job_history_views_are_blocked(gateway_client: bigquery.Client) -> None:
    for sql in (
        "SELECT query FROM sales.INFORMATION_SCHEMA.JOBS",
        "SELECT query FROM sales.INFORMATION_SCHEMA.JOBS_BY_USER",
        "SELECT query FROM `region-us`.INFORMATION_SCHEMA.JOBS",
    ):
        with pytest.raises(gexc.Forbidden):
            rows(gateway_client, sql)
    cols = rows(
        gateway_client,
        "SELECT column_name FROM sales.INFORMATION_SCHEMA.COLUMNS "
        "WHERE table_name = 'customers' ORDER BY column_name",
    )
    assert ["ssn"] in cols
