"""Column lineage (bqgate.sql.lineage) and the masking plan it drives.

The bulk of the cases live in ``tests/fixtures/lineage/masking_cases.sql``: SQL and
the expected mask of every output column under the default policy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from bqgate.masking import plan_masking
from bqgate.sql.lineage import ColumnLineage, output_lineage

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lineage"
SCHEMAS: dict[str, list[dict[str, Any]]] = json.loads((FIXTURES / "demo_schemas.json").read_text())
ROOT = Path(__file__).resolve().parents[2]


def _policy_lookup() -> Any:
    try:
        from bqgate.policy import parse_policy
    except ImportError:  # pragma: no cover - the stand-in while policy.py is absent
        sensitive = {
            "demo-project.sales.customers": {
                "full_name": "hmac",
                "email": "email",
                "phone": "last4",
                "ssn": "last4",
                "card_number": "last4",
                "birth_date": "year",
            },
            "demo-project.finance.payroll": {"name": "hmac", "salary": "nullify", "iban": "last4"},
        }
        return lambda fqn: sensitive.get(fqn, {})
    policy = parse_policy((ROOT / "policies" / "default.yaml").read_text())
    return policy.sensitive_for


SENSITIVE_FOR = _policy_lookup()


def provider(fqn: str) -> Sequence[Mapping[str, Any]]:
    return SCHEMAS[fqn]


def lineage(sql: str) -> list[ColumnLineage]:
    return output_lineage(
        sql, schemas=provider, default_project="demo-project", default_dataset="sales"
    )


def _schema_of(cols: Sequence[ColumnLineage]) -> list[dict[str, Any]]:
    def fld(c: ColumnLineage) -> dict[str, Any]:
        if c.fields:
            return {"name": c.name, "type": "RECORD", "fields": [fld(f) for f in c.fields]}
        return {"name": c.name, "type": "STRING"}

    return [fld(c) for c in cols]


def load_cases() -> list[Any]:
    cases = []
    for block in (FIXTURES / "masking_cases.sql").read_text().split("\n\n"):
        lines = [ln for ln in block.strip().splitlines() if not ln.startswith("#")]
        if not lines:
            continue
        sql = " ".join(ln for ln in lines if not ln.startswith(">"))
        (expect_line,) = [ln for ln in lines if ln.startswith(">")]
        expected = [tuple(item.split("=", 1)) for item in expect_line[1:].split()]
        cases.append(pytest.param(sql, expected, id=sql[:60]))
    return cases


CASES = load_cases()


def test_fixture_has_enough_cases() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize(("sql", "expected"), CASES)
def test_masking_case(sql: str, expected: list[tuple[str, str]]) -> None:
    cols = lineage(sql)
    plan = plan_masking(cols, _schema_of(cols), SENSITIVE_FOR)
    got = [(m.column.lower(), m.strategy or "-") for m in plan.columns]
    assert got == [(name.lower(), strategy) for name, strategy in expected], plan.describe()


# -- lineage details ------------------------------------------------------------------


def test_direct_reference_sources_and_flags() -> None:
    (col,) = lineage("SELECT email AS e FROM customers")
    assert col == ColumnLineage("e", frozenset({"demo-project.sales.customers.email"}), direct=True)


def test_expression_is_not_direct_but_keeps_sources() -> None:
    (col,) = lineage("SELECT CONCAT(full_name, ' ', country) AS x FROM sales.customers")
    assert not col.direct and not col.counting and col.unknown is None
    assert col.sources == {
        "demo-project.sales.customers.full_name",
        "demo-project.sales.customers.country",
    }


def test_counting_aggregates() -> None:
    cols = lineage(
        "SELECT COUNT(DISTINCT email), APPROX_COUNT_DISTINCT(ssn), COUNTIF(ssn > ''),"
        " COUNT(*), SUM(customer_id) FROM sales.customers"
    )
    assert [c.counting for c in cols] == [True, True, True, True, False]
    assert [c.name for c in cols] == ["f0_", "f1_", "f2_", "f3_", "f4_"]


@pytest.mark.parametrize(
    "table",
    [
        "`demo-project.sales.customers`",
        "`demo-project`.`sales`.`customers`",
        "`demo-project`.sales.customers",
        "sales.customers",
        "`sales.customers`",
        "customers",
    ],
)
def test_table_names_resolve_like_bigquery(table: str) -> None:
    (col,) = lineage(f"SELECT ssn FROM {table}")
    assert col.sources == {"demo-project.sales.customers.ssn"} and col.direct


def test_bare_table_without_default_dataset_is_unknown() -> None:
    (col,) = output_lineage(
        "SELECT ssn FROM customers", schemas=provider, default_project="demo-project"
    )
    assert col.unknown is not None


def test_whole_row_struct_has_per_field_lineage() -> None:
    (col,) = lineage("SELECT c FROM sales.customers c")
    assert [f.name for f in col.fields] == [
        f["name"] for f in SCHEMAS["demo-project.sales.customers"]
    ]
    assert all(f.direct for f in col.fields)
    assert not col.direct


def test_struct_field_access_through_subquery() -> None:
    cols = lineage("SELECT s.e AS x FROM (SELECT STRUCT(ssn AS e) AS s FROM sales.customers)")
    assert cols[0].direct and cols[0].sources == {"demo-project.sales.customers.ssn"}


def test_union_by_position_merges_sources() -> None:
    (col,) = lineage(
        "SELECT country FROM customers UNION ALL SELECT ssn FROM customers UNION ALL SELECT NULL"
    )
    assert col.name == "country" and col.direct
    assert col.sources == {
        "demo-project.sales.customers.country",
        "demo-project.sales.customers.ssn",
    }


def test_correlated_subquery_column_from_outer_scope() -> None:
    cols = lineage(
        "SELECT (SELECT c.ssn FROM sales.orders o WHERE o.customer_id ="
        " c.customer_id LIMIT 1) AS s FROM sales.customers c"
    )
    assert cols[0].sources == {"demo-project.sales.customers.ssn"} and not cols[0].direct


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM sales.orders WHERE TRUE",
        "UPDATE sales.orders SET status = 'x' WHERE TRUE",
        "SELECT FROM WHERE",
        "SELECT * FROM sales.unknown_table",
        "SELECT * FROM `demo-project.sales.cust*`",
        "",
    ],
)
def test_no_usable_lineage_returns_empty(sql: str) -> None:
    assert lineage(sql) == []


def test_unknown_table_column_is_unknown() -> None:
    (col,) = lineage("SELECT ssn FROM sales.not_there")
    assert col.unknown and "not_there" in col.unknown


def test_schema_provider_called_once_per_table() -> None:
    calls: list[str] = []

    def counting_provider(fqn: str) -> Sequence[Mapping[str, Any]]:
        calls.append(fqn)
        return SCHEMAS[fqn]

    output_lineage(
        "WITH a AS (SELECT * FROM sales.customers) SELECT a.email, c.ssn FROM a"
        " JOIN sales.customers c USING (customer_id) JOIN customers d"
        " USING (customer_id)",
        schemas=counting_provider,
        default_project="demo-project",
        default_dataset="sales",
    )
    assert calls == ["demo-project.sales.customers"]


def test_script_uses_final_select() -> None:
    cols = lineage("DECLARE x INT64 DEFAULT 1; SELECT 1 AS a; SELECT email FROM customers")
    assert [c.name for c in cols] == ["email"]


def test_recursive_cte_fails_closed_or_is_exact() -> None:
    (col,) = lineage(
        "WITH RECURSIVE r AS (SELECT ssn AS n FROM customers UNION ALL"
        " SELECT n FROM r WHERE FALSE) SELECT n FROM r"
    )
    assert col.unknown is not None or ("demo-project.sales.customers.ssn" in col.sources)


def test_pseudo_columns_carry_no_data() -> None:
    cols = lineage("SELECT _PARTITIONTIME AS pt FROM sales.orders")
    assert cols[0].unknown is None and not cols[0].sources


@pytest.mark.parametrize(("sql", "expected"), CASES)
def test_masking_case_with_sources_masked_at_the_source(
    sql: str, expected: list[tuple[str, str]]
) -> None:
    """In production the rewrite masks every sensitive source before the query runs: the
    second line then checks direct references (one format per strategy, no double masking)
    and lets through what was computed from masked values; unknown lineage stays nullified."""
    cols = lineage(sql)
    every = frozenset(
        f"{t}.{c}"
        for t in ("demo-project.sales.customers", "demo-project.finance.payroll")
        for c in SENSITIVE_FOR(t)
    )
    plan = plan_masking(cols, _schema_of(cols), SENSITIVE_FOR, premasked=every)
    standalone = plan_masking(cols, _schema_of(cols), SENSITIVE_FOR)
    for mask, alone in zip(plan.columns, standalone.columns, strict=True):
        if alone.reason.startswith(("lineage unknown", "no lineage", "struct field lineage")):
            assert mask.strategy == "nullify", mask
        elif alone.reason.startswith("direct reference"):
            # Checked, with the policy's own strategy (hmac tokens pass their format check).
            assert mask.at_source and mask.strategy is not None, mask
            assert "masked at the source" in mask.reason, mask
        elif alone.strategy is None:
            assert mask.strategy is None, mask
        elif alone.strategy == "per_field":
            assert mask.strategy in ("per_field", None), mask
        else:  # derived from or counting over sensitive values
            assert mask.strategy is None and "masked at the source" in mask.reason, mask
