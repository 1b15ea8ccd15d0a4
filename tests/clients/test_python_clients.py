"""google-cloud-bigquery, pandas-gbq, SQLAlchemy and ibis against the gateway, each the way
its users connect it; every answer that returns data is checked for masking."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from bqgate.dev.stack import Stack
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.cloud import bigquery

CUSTOMERS = "demo-project.sales.customers"
RAW_SSN = re.compile(r"^\d{3}-\d{2}-\d{4}$")
SELECT = f"SELECT customer_id, ssn, email FROM `{CUSTOMERS}` ORDER BY customer_id LIMIT 5"

works_with = pytest.mark.works_with


def masked_ssns(values: Any) -> bool:
    """Every value is an SSN masked to its last four (and there is at least one)."""
    values = list(values)
    return bool(values) and all(
        isinstance(v, str) and v.startswith("XXX-XX-") and not RAW_SSN.match(v) for v in values
    )


@pytest.fixture(scope="module")
def client(stack: Stack) -> bigquery.Client:
    """bqgate's helper: the standard client with refreshing ID-token credentials."""
    from bqgate.client import gateway_client

    return gateway_client(stack.url("gateway"), dev_dir=stack.state_dir)


@pytest.fixture(scope="module")
def plain(stack: Stack, client: bigquery.Client) -> bigquery.Client:
    """A plain ``bigquery.Client`` as any tool builds it, pointed at the gateway."""
    return bigquery.Client(
        project="demo-project",
        credentials=client._credentials,
        client_options=ClientOptions(api_endpoint=stack.url("gateway")),
    )


@pytest.fixture()
def emulator_host(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tools that build their own ``bigquery.Client`` find the gateway through
    ``BIGQUERY_EMULATOR_HOST`` (google-cloud-bigquery's own endpoint variable)."""
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", stack.url("gateway"))
    yield


# --- google-cloud-bigquery ---------------------------------------------------------


@works_with("google-cloud-bigquery", "query")
def test_query(plain: bigquery.Client) -> None:
    rows = list(plain.query(SELECT).result(timeout=60))
    assert [r.customer_id for r in rows] == [1, 2, 3, 4, 5]
    assert masked_ssns(r.ssn for r in rows)


@works_with("google-cloud-bigquery", "query_and_wait")
def test_query_and_wait(plain: bigquery.Client) -> None:
    rows = plain.query_and_wait(SELECT, wait_timeout=60)
    assert rows.total_rows == 5 and masked_ssns(r.ssn for r in rows)


@works_with("google-cloud-bigquery", "list_rows")
def test_list_rows(plain: bigquery.Client) -> None:
    rows = list(plain.list_rows(CUSTOMERS, max_results=250))
    assert len(rows) == 250 and masked_ssns(r["ssn"] for r in rows)


@works_with("google-cloud-bigquery", "get_table")
def test_get_table(plain: bigquery.Client) -> None:
    table = plain.get_table(CUSTOMERS)
    assert table.num_rows == 1000
    assert {f.name: f.description for f in table.schema}["ssn"] == "masked by bqgate: last4"
    with pytest.raises(gexc.NotFound):
        plain.get_table("demo-project.not_in_policy.customers")


@works_with("google-cloud-bigquery", "list_tables")
def test_list_tables(plain: bigquery.Client) -> None:
    assert [t.table_id for t in plain.list_tables("demo-project.sales")] == ["customers", "orders"]


@works_with("google-cloud-bigquery", "list_datasets")
def test_list_datasets(plain: bigquery.Client) -> None:
    assert [d.dataset_id for d in plain.list_datasets()] == ["analytics", "finance", "sales"]


@works_with("google-cloud-bigquery", "dry run")
def test_dry_run(plain: bigquery.Client) -> None:
    job = plain.query(SELECT, job_config=bigquery.QueryJobConfig(dry_run=True))
    assert job.state == "DONE" and job.total_bytes_processed is not None
    assert [f.name for f in job.schema or ()] == ["customer_id", "ssn", "email"]

    with pytest.raises(gexc.Forbidden, match="Blocked by bqgate policy"):
        plain.query(f"DELETE FROM `{CUSTOMERS}` WHERE TRUE", bigquery.QueryJobConfig(dry_run=True))


@works_with("google-cloud-bigquery", "DB-API")
def test_dbapi(plain: bigquery.Client) -> None:
    from google.cloud.bigquery import dbapi

    cursor = dbapi.connect(client=plain).cursor()
    cursor.execute(
        f"SELECT customer_id, ssn FROM `{CUSTOMERS}` WHERE customer_id <= %(n)s ORDER BY 1",
        {"n": 3},
    )
    rows = cursor.fetchall()
    assert [r[0] for r in rows] == [1, 2, 3] and masked_ssns(r[1] for r in rows)


@works_with("google-cloud-bigquery", "to_dataframe (Storage client installed)")
def test_to_dataframe_with_the_storage_client_installed(
    plain: bigquery.Client, client: bigquery.Client
) -> None:
    import google.cloud.bigquery_storage  # noqa: F401  (installed: the case under test)

    # Query results name no destination table, so even the plain client reads them over
    # REST; list_rows needs bqgate's client (or create_bqstorage_client=False).
    frame = plain.query(f"SELECT customer_id, ssn FROM `{CUSTOMERS}`").to_dataframe()
    assert len(frame) == 1000 and masked_ssns(frame["ssn"])
    table = client.list_rows(CUSTOMERS).to_dataframe()
    assert table.shape == (1000, 8) and masked_ssns(table["ssn"])
    arrow = plain.list_rows(CUSTOMERS).to_arrow(create_bqstorage_client=False)
    assert arrow.num_rows == 1000 and masked_ssns(arrow.column("ssn").to_pylist())


# --- pandas-gbq ---------------------------------------------------------------------


@works_with("pandas-gbq", "read_gbq (query)")
def test_pandas_gbq_query(plain: bigquery.Client, emulator_host: None) -> None:
    import pandas_gbq

    frame = pandas_gbq.read_gbq(
        SELECT, project_id="demo-project", bigquery_client=plain, progress_bar_type=None
    )
    assert list(frame["customer_id"]) == [1, 2, 3, 4, 5] and masked_ssns(frame["ssn"])


@works_with("pandas-gbq", "read_gbq (table id)")
def test_pandas_gbq_table(plain: bigquery.Client, emulator_host: None) -> None:
    import pandas_gbq

    frame = pandas_gbq.read_gbq(
        CUSTOMERS, project_id="demo-project", bigquery_client=plain, progress_bar_type=None
    )
    assert frame.shape == (1000, 8) and masked_ssns(frame["ssn"])


@works_with("pandas-gbq", "dry run")
def test_pandas_gbq_dry_run(plain: bigquery.Client, emulator_host: None) -> None:
    import pandas_gbq

    info = pandas_gbq.read_gbq(
        SELECT, project_id="demo-project", bigquery_client=plain, dry_run=True
    )
    assert info is not None and "bigquerySchema" in info.index


# --- SQLAlchemy ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(plain: bigquery.Client) -> Any:
    import sqlalchemy as sa

    return sa.create_engine(
        "bigquery://demo-project?user_supplied_client=True", connect_args={"client": plain}
    )


@works_with("sqlalchemy-bigquery", "SELECT")
def test_sqlalchemy_select(engine: Any) -> None:
    import sqlalchemy as sa

    with engine.connect() as conn:
        rows = conn.execute(sa.text(SELECT)).fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5] and masked_ssns(r[1] for r in rows)


@works_with("sqlalchemy-bigquery", "reflection")
def test_sqlalchemy_reflection(engine: Any) -> None:
    import sqlalchemy as sa

    inspector = sa.inspect(engine)
    assert inspector.get_schema_names() == ["analytics", "finance", "sales"]
    assert inspector.get_table_names(schema="sales") == ["sales.customers", "sales.orders"]
    assert inspector.has_table("customers", schema="sales")
    assert not inspector.has_table("customers", schema="not_in_policy")
    columns = {c["name"]: c for c in inspector.get_columns("customers", schema="sales")}
    assert columns["ssn"]["comment"] == "masked by bqgate: last4"
    table = sa.Table("customers", sa.MetaData(), schema="sales", autoload_with=engine)
    query = sa.select(table.c.customer_id, table.c.ssn).order_by(table.c.customer_id).limit(3)
    with engine.connect() as conn:
        rows = conn.execute(query).fetchall()
    assert [r[0] for r in rows] == [1, 2, 3] and masked_ssns(r[1] for r in rows)


# --- ibis ---------------------------------------------------------------------------


@works_with("ibis", "table expression")
def test_ibis_table_expression(plain: bigquery.Client) -> None:
    import ibis

    con = ibis.bigquery.connect(
        client=plain, project_id="demo-project", credentials=plain._credentials
    )
    customers = con.table("customers", database="demo-project.sales")
    assert customers.schema()["ssn"].is_string()
    expr = (
        customers.filter(customers.country == "US")
        .select("customer_id", "ssn")
        .order_by("customer_id")
        .limit(5)
    )
    frame = expr.execute()
    assert len(frame) == 5 and masked_ssns(frame["ssn"])
    counts = customers.group_by("country").aggregate(n=customers.count()).execute()
    assert int(counts["n"].sum()) == 1000
