"""Masking strategies, plans and the Masker hot path (bqgate.masking)."""

from __future__ import annotations

import calendar
import json
import random
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from bqgate import detectors
from bqgate.masking import (
    PER_FIELD,
    ColumnMask,
    Masker,
    MaskPlan,
    default_value,
    keep_first4,
    keep_last4,
    plan_masking,
    strictest,
)
from bqgate.sql.lineage import ColumnLineage, output_lineage
from hypothesis import assume, given, settings
from hypothesis import strategies as st

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lineage"
SCHEMAS: dict[str, list[dict[str, Any]]] = json.loads((FIXTURES / "demo_schemas.json").read_text())
CUSTOMERS = SCHEMAS["demo-project.sales.customers"]
SENSITIVE = {
    "demo-project.sales.customers": {
        "full_name": "hmac",
        "email": "email",
        "phone": "last4",
        "ssn": "last4",
        "card_number": "last4",
        "birth_date": "year",
    },
}
KEY = b"test-key"


def sensitive_for(fqn: str) -> Mapping[str, str]:
    return SENSITIVE.get(fqn, {})


def one(strategy: str, typ: str, value: Any, *, mode: str = "NULLABLE") -> Any:
    """Mask a single cell of type ``typ`` with ``strategy``."""
    fld = {"name": "c", "type": typ, "mode": mode}
    plan = MaskPlan((ColumnMask("c", strategy, "test"),))
    return Masker(plan, [fld], hmac_key=KEY, detectors=False).mask_rows([[value]])[0][0]


# -- strategies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typ", "expected"),
    [
        ("STRING", ""),
        ("BYTES", ""),
        ("INTEGER", "0"),
        ("INT64", "0"),
        ("FLOAT", "0.0"),
        ("NUMERIC", "0"),
        ("BIGNUMERIC", "0"),
        ("BOOLEAN", "false"),
        ("DATE", "1970-01-01"),
        ("DATETIME", "1970-01-01T00:00:00"),
        ("TIME", "00:00:00"),
        ("TIMESTAMP", "0"),
        ("JSON", "null"),
        ("GEOGRAPHY", "POINT(0 0)"),
        ("INTERVAL", "0-0 0 0:0:0"),
    ],
)
def test_default_values_per_type(typ: str, expected: str) -> None:
    assert one("default", typ, "something") == expected


def test_default_record_and_repeated() -> None:
    rec = {
        "name": "r",
        "type": "RECORD",
        "fields": [{"name": "a", "type": "STRING"}, {"name": "b", "type": "BOOL"}],
    }
    plan = MaskPlan((ColumnMask("r", "default", "t"), ColumnMask("l", "default", "t")))
    rep = {"name": "l", "type": "STRING", "mode": "REPEATED"}
    assert Masker(plan, [rec, rep], hmac_key=KEY).mask_rows([[["x", "true"], ["a", "b"]]]) == [
        [["", "false"], []]
    ]
    assert default_value(rec) == ["", "false"]


@pytest.mark.parametrize(
    ("strategy", "typ", "value", "expected"),
    [
        ("nullify", "STRING", "x", None),
        ("nullify", "INTEGER", "4", None),
        ("last4", "STRING", "123-45-6789", "XXX-XX-6789"),
        ("last4", "STRING", "4111 1111 1111 1111", "XXXX XXXX XXXX 1111"),
        ("last4", "STRING", "+1 (415) 555-0123", "+X (XXX) XXX-0123"),
        ("last4", "STRING", "abc", "XXX"),
        ("last4", "INTEGER", "123456789", "0"),
        ("first4", "STRING", "4111-1111-1111-1111", "4111-XXXX-XXXX-XXXX"),
        ("email", "STRING", "ann.lee@example.com", "XXXXX@example.com"),
        ("email", "STRING", "not an email", None),
        ("year", "DATE", "1987-06-05", "1987-01-01"),
        ("year", "DATETIME", "1987-06-05T10:11:12", "1987-01-01T00:00:00"),
        (
            "year",
            "TIMESTAMP",
            "1704153600000000",
            str(calendar.timegm((2024, 1, 1, 0, 0, 0)) * 1_000_000),
        ),
        ("year", "TIMESTAMP", "1.7041536E9", "1704067200.0"),
        ("year", "STRING", "1987-06-05", "1987-01-01"),
        (
            "sha256",
            "STRING",
            "abc",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        ("sha256", "INTEGER", "5", "0"),
        ("sha256", "BYTES", "YWJj", "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="),
        ("default", "STRING", None, None),
        ("last4", "STRING", None, None),
    ],
)
def test_strategy_values(strategy: str, typ: str, value: Any, expected: Any) -> None:
    assert one(strategy, typ, value) == expected


def test_hmac_is_deterministic_keyed_and_typed() -> None:
    a1, a2, b = (
        one("hmac", "STRING", "Ann"),
        one("hmac", "STRING", "Ann"),
        one("hmac", "STRING", "Bob"),
    )
    assert a1 == a2 != b and a1.startswith("tok_") and len(a1) == 28
    other_key = Masker(
        MaskPlan((ColumnMask("c", "hmac", "t"),)),
        [{"name": "c", "type": "STRING"}],
        hmac_key=b"other",
    )
    assert other_key.mask_rows([["Ann"]])[0][0] != a1
    assert int(one("hmac", "INTEGER", "42")) >= 0
    assert one("hmac", "DATE", "2020-02-02") == "1970-01-01"


def test_repeated_strategy_applies_per_element_and_nullify_gives_empty() -> None:
    assert one("last4", "STRING", ["123-45-6789", None], mode="REPEATED") == ["XXX-XX-6789", None]
    assert one("nullify", "STRING", ["a"], mode="REPEATED") == []


def test_strictest_order() -> None:
    assert strictest(["last4", "email", "year"]) == "year"
    assert strictest(["sha256", "hmac"]) == "hmac"
    assert strictest(["default", "nullify"]) == "nullify"
    assert strictest([]) == "nullify"


@pytest.mark.parametrize(
    ("value", "last", "first"),
    [
        ("", "", ""),
        ("1", "X", "X"),
        ("1234", "XXXX", "XXXX"),
        ("12345", "X2345", "1234X"),
        ("--", "--", "--"),
        ("ünïcode-1234", "XXXXXXX-1234", "ünïcXXX-XXXX"),
    ],
)
def test_keep_last4_first4_edges(value: str, last: str, first: str) -> None:
    assert (keep_last4(value), keep_first4(value)) == (last, first)


# -- plans ----------------------------------------------------------------------------


def lin(name: str, *cols: str, direct: bool = True, **kw: Any) -> ColumnLineage:
    srcs = frozenset(f"demo-project.sales.customers.{c}" for c in cols)
    return ColumnLineage(name, srcs, direct, **kw)


def test_plan_rules() -> None:
    schema = [{"name": n, "type": "STRING"} for n in "abcdef"]
    plan = plan_masking(
        [
            lin("a", "email"),
            lin("b", "email", "ssn"),
            lin("c", "email", direct=False),
            lin("d", "email", direct=False, counting=True),
            lin("e", unknown="weird"),
            lin("f", "country"),
        ],
        schema,
        sensitive_for,
    )
    # d: a count computed from a sensitive value says something about it (COUNTIF(ssn <
    # '5')): on its own, the second line nullifies it.
    assert [c.strategy for c in plan.columns] == [
        "email",
        "email",
        "nullify",
        "nullify",
        "nullify",
        None,
    ]
    described = plan.describe()
    assert [d["column"] for d in described] == ["a", "b", "c", "d", "e"]
    assert "weird" in described[-1]["reason"]
    counting = lin("g", direct=False, counting=True)  # COUNT(*): no source at all
    (mask,) = plan_masking([counting], [{"name": "g", "type": "INTEGER"}], sensitive_for).columns
    assert mask.strategy is None and mask.reason == "counting aggregate"


def test_plan_trusts_values_masked_at_the_source() -> None:
    """With the rewrite, values derived from masked sources pass; direct ones are checked."""
    schema = [{"name": n, "type": "STRING"} for n in "abcd"]
    premasked = frozenset(
        {"demo-project.sales.customers.email", "demo-project.sales.customers.ssn"}
    )
    plan = plan_masking(
        [
            lin("a", "email"),
            lin("b", "email", direct=False),
            lin("c", "email", direct=False, counting=True),
            lin("d", "email", "phone", direct=False),  # phone not masked at the source
        ],
        schema,
        sensitive_for,
        premasked=premasked,
    )
    assert [(c.strategy, c.at_source) for c in plan.columns] == [
        ("email", True),
        (None, True),  # computed from masked values only: no detectors either
        (None, True),
        ("nullify", False),
    ]


def test_detectors_skip_what_is_computed_from_masked_values_only() -> None:
    """LOWER(token) holds nothing raw: a token whose hex digits pass the card checksum by
    chance stays intact (a redaction would break joins on tokens). A column that also
    reads an unmasked source keeps the detectors."""
    schema = [{"name": n, "type": "STRING"} for n in ("t", "mixed")]
    premasked = frozenset({"demo-project.sales.customers.full_name"})
    plan = plan_masking(
        [
            lin("t", "full_name", direct=False),
            lin("mixed", "full_name", "country", direct=False),
        ],
        schema,
        lambda t: {"full_name": "hmac"} if t == "demo-project.sales.customers" else {},
        premasked=premasked,
    )
    token = "tok_c4111111111111111d5f60"  # 4111 1111 1111 1111 passes Luhn
    assert detectors.scan(token)  # the detector alone would redact it
    rows = Masker(plan, schema, hmac_key=KEY).mask_rows([[token, token]])
    assert rows == [[token, "tok_c[REDACTED:card]d5f60"]]


def test_checks_of_values_masked_at_the_source() -> None:
    """A keyed token passes only in its format (the second line never computes one)."""
    schema = [{"name": "t", "type": "STRING"}, {"name": "e", "type": "STRING"}]
    plan = MaskPlan(
        (
            ColumnMask("t", "hmac", "x", at_source=True),
            ColumnMask("e", "email", "x", at_source=True),
        )
    )
    rows = Masker(plan, schema, hmac_key=KEY).mask_rows(
        [
            ["tok_0123456789abcdef01234567", "XXXXX@example.com"],
            ["Some Name", "ann@example.com"],
            [None, None],
        ]
    )
    assert rows == [
        ["tok_0123456789abcdef01234567", "XXXXX@example.com"],
        [None, "XXXXX@example.com"],
        [None, None],
    ]


def test_plan_length_mismatch_fails_closed() -> None:
    schema = [
        {"name": "email", "type": "STRING"},
        {"name": "country", "type": "STRING"},
        {"name": "x", "type": "STRING"},
    ]
    plan = plan_masking([lin("email", "email"), lin("other", "country")], schema, sensitive_for)
    assert [c.strategy for c in plan.columns] == ["email", "nullify", "nullify"]


def test_plan_struct_per_field_and_unknown_fields() -> None:
    rec = {
        "name": "s",
        "type": "RECORD",
        "fields": [{"name": "e", "type": "STRING"}, {"name": "n", "type": "INTEGER"}],
    }
    ok = ColumnLineage("s", frozenset(), fields=(lin("e", "email"), lin("n", "customer_id")))
    (mask,) = plan_masking([ok], [rec], sensitive_for).columns
    assert mask.strategy == PER_FIELD
    assert [f.strategy for f in mask.fields] == ["email", None]
    mismatch = ColumnLineage(
        "s", frozenset({"demo-project.sales.customers.email"}), fields=(lin("e", "email"),)
    )
    assert plan_masking([mismatch], [rec], sensitive_for).columns[0].strategy == "nullify"


def test_masker_struct_per_field_on_rows() -> None:
    rec = {
        "name": "s",
        "type": "RECORD",
        "fields": [{"name": "e", "type": "STRING"}, {"name": "note", "type": "STRING"}],
    }
    plan = MaskPlan(
        (
            ColumnMask(
                "s", PER_FIELD, "t", (ColumnMask("e", "email", "t"), ColumnMask("note", None, "t"))
            ),
        )
    )
    masker = Masker(plan, [rec], hmac_key=KEY)
    rows: list[list[Any]] = [[["a@b.co", "call 415-555-0123"]], [None]]

    assert masker.mask_rows(rows) == [[["XXXXX@b.co", "call [REDACTED:phone]"]], [None]]
    assert masker.hits == {("s.note", "phone"): 1}


def test_masker_does_not_modify_input_and_checks_width() -> None:
    plan = MaskPlan((ColumnMask("a", "nullify", "t"),))
    rows = [["x"]]
    masker = Masker(plan, [{"name": "a", "type": "STRING"}], hmac_key=KEY)
    assert masker.mask_rows(rows) == [[None]] and rows == [["x"]]
    assert masker.mask_rows([]) == []
    with pytest.raises(ValueError):
        masker.mask_rows([["x", "y"]])


def test_plan_narrower_than_schema_masks_the_rest() -> None:
    masker = Masker(MaskPlan(()), [{"name": "a", "type": "STRING"}], hmac_key=KEY)
    assert masker.mask_rows([["secret"]]) == [[None]]


# -- end to end on fake customer rows --------------------------------------------------


def _luhn_complete(prefix: str) -> str:
    for d in "0123456789":
        digits = prefix + d
        total = 0
        for i, ch in enumerate(reversed(digits)):
            n = int(ch)
            if i % 2:
                n = n * 2 - 9 if n > 4 else n * 2
            total += n
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def fake_customers(n: int, seed: int = 7) -> list[list[Any]]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        first = "".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(3, 8))).title()
        last = "".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(4, 10))).title()
        card = _luhn_complete("4" + "".join(rnd.choices(string.digits, k=14)))
        card = " ".join(card[j : j + 4] for j in range(0, 16, 4))
        ssn = f"{rnd.randint(1, 665):03d}-{rnd.randint(1, 99):02d}-{rnd.randint(1, 9999):04d}"
        rows.append(
            [
                str(i),
                f"{first} {last}",
                f"{first.lower()}.{last.lower()}@example.com",
                f"+1 415 555 {rnd.randint(1000, 9999)}",
                ssn,
                card,
                f"19{rnd.randint(40, 99)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}",
                rnd.choice(["US", "DE", "FR"]),
            ]
        )
    return rows


def test_masking_rows_never_leaks_sensitive_values() -> None:
    cols = output_lineage(
        "SELECT * FROM sales.customers", schemas=SCHEMAS.__getitem__, default_project="demo-project"
    )
    plan = plan_masking(cols, CUSTOMERS, sensitive_for)
    rows = fake_customers(300)
    masked = Masker(plan, CUSTOMERS, hmac_key=KEY).mask_rows(rows)
    blob = json.dumps(masked)
    for raw, out in zip(rows, masked, strict=True):
        assert out[0] == raw[0] and out[7] == raw[7]  # customer_id, country intact
        assert out[6] == raw[6][:4] + "-01-01"
        for value in raw[1:6]:
            for form in {value, value.upper(), value.lower(), value[::-1]}:
                assert form not in blob, form


def test_derived_columns_are_nullified_on_rows() -> None:
    sql = (
        "SELECT UPPER(email) AS e, REVERSE(ssn) AS r, CONCAT(full_name, '') AS n,"
        " COUNT(DISTINCT email) OVER () AS k, country FROM sales.customers"
    )
    cols = output_lineage(sql, schemas=SCHEMAS.__getitem__, default_project="demo-project")
    schema = [{"name": c.name, "type": "STRING"} for c in cols]
    plan = plan_masking(cols, schema, sensitive_for)
    out = Masker(plan, schema, hmac_key=KEY).mask_rows(
        [["ANN@X.COM", "9876-54-321", "Ann Lee", "12", "US"]]
    )
    # the count of distinct emails is computed from email: nullified when not masked at source
    assert out == [[None, None, None, None, "US"]]


# -- properties -----------------------------------------------------------------------

STRING_STRATEGIES = ["nullify", "default", "sha256", "hmac", "last4", "first4", "email"]


@settings(max_examples=300, deadline=None)
@given(strategy=st.sampled_from(STRING_STRATEGIES), value=st.text(min_size=1, max_size=60))
def test_sensitive_string_never_returned_unchanged(strategy: str, value: str) -> None:
    # Documented edges: last4/first4 cannot change a value with no alphanumeric
    # character, nor one whose hidden characters are already X (first4('0000X'));
    # `email` leaves an already masked "XXXXX@domain" as it is.
    assume(any(c.isalnum() for c in value))
    assume(not value.startswith("XXXXX@"))
    alnum = [c for c in value if c.isalnum()]
    hidden = alnum if len(alnum) <= 4 else alnum[4:] if strategy == "first4" else alnum[:-4]
    assume(not (strategy in ("last4", "first4") and all(c == "X" for c in hidden)))
    assert one(strategy, "STRING", value) != value


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=40)), min_size=1, max_size=8))
def test_masker_handles_arbitrary_rows(cells: list[str | None]) -> None:
    schema = [{"name": f"c{i}", "type": "STRING"} for i in range(len(cells))]
    plan = MaskPlan(
        tuple(
            ColumnMask(f"c{i}", STRING_STRATEGIES[i % 7] if i % 2 else None, "t")
            for i in range(len(cells))
        )
    )
    (out,) = Masker(plan, schema, hmac_key=KEY).mask_rows([cells])
    assert len(out) == len(cells)
    for i, (before, after) in enumerate(zip(cells, out, strict=True)):
        if before is None:
            assert after is None
        elif i % 2 == 0:
            assert isinstance(after, str)
