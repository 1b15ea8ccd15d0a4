"""Non-interference: what the agent sees does not depend on what the masks hide.

Every attack query of ``tests/fixtures/attacks/masking.sql`` runs through the local stack as
the demo agent. Then the hidden part of every sensitive value of ``sales.customers`` is
changed in the emulator — keeping exactly what each mask shows (the last four characters
and the separators, the e-mail domain, the year) — and every query runs again: every answer
(rows, their order, error text) must be identical. A second change renames every customer
(``full_name`` is ``hmac``-tokenised: the token is all the agent may see, so answers are
compared with each new token mapped back to the old one). No answer may carry a raw
sensitive value in any spelling (upper/lower case, reversed, digits only, hex, base64).
The table is restored afterwards, row for row, in its original storage order.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import decimal
import hmac
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bqgate.dev import demo_data
from bqgate.dev.stack import Stack
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from helpers import read_cases

pytestmark = pytest.mark.system

FIXTURE = Path(__file__).parents[1] / "fixtures" / "attacks" / "masking.sql"
TABLE = "demo-project.sales.customers"
SENSITIVE = ("full_name", "email", "phone", "ssn", "card_number", "birth_date")


ATTACKS = read_cases(FIXTURE)
# Queries whose answer depends on the value of an hmac token (its order, its digest, the
# letters in it), not only on which rows share one: a renaming changes tokens, so these
# are compared in the first change only (full_name kept) — see the module docstring.
TOKEN_VALUED = re.compile(
    r"ORDER BY full_name|MAX\(full_name\)|MIN\(full_name\)|FARM_FINGERPRINT\(full_name\)"
    r"|SPLIT\(full_name|\(ORDER BY full_name\)"
)


def test_enough_attacks_of_every_class() -> None:
    classes = {c["class"] for c in ATTACKS}
    assert len(ATTACKS) >= 150
    assert {
        "alphabet",
        "range",
        "count",
        "offset",
        "window",
        "order",
        "error",
        "oracle",
        "metadata",
        "row",
    } <= classes


# --------------------------------------------------------------------------- data changes


def _keep_last4(value: str, swap: Callable[[str], str]) -> str:
    """``value`` with every letter/digit but the last four changed by ``swap``."""
    alnum = [i for i, ch in enumerate(value) if ch.isalnum()]
    keep = set(alnum[-4:]) if len(alnum) > 4 else set(alnum)
    if len(alnum) <= 4:
        return value  # the mask shows nothing of it but its shape: nothing to vary safely
    return "".join(swap(ch) if i in alnum and i not in keep else ch for i, ch in enumerate(value))


def _digit_swap(ch: str) -> str:
    return str((int(ch) + 3) % 10) if ch.isdigit() else ("q" if ch != "q" else "z")


def change_hidden(row: dict[str, Any]) -> dict[str, Any]:
    """Change what the masks hide (keep what they show); full_name is left alone."""
    out = dict(row)
    for col in ("ssn", "phone", "card_number"):
        out[col] = _keep_last4(str(row[col]), _digit_swap)
    local, _, domain = str(row["email"]).rpartition("@")
    out["email"] = f"zz{local[::-1]}x{len(local)}@{domain}"  # another length, same domain
    born = dt.date.fromisoformat(str(row["birth_date"]))
    if (born.month, born.day) != (1, 1):
        other = (
            dt.date(born.year, 12, 28)
            if (born.month, born.day) != (12, 28)
            else dt.date(born.year, 6, 15)
        )
        out["birth_date"] = other.isoformat()
    return out


def rename(row: dict[str, Any]) -> dict[str, Any]:
    """Give every customer another name (injective: equal names stay equal)."""
    out = dict(row)
    out["full_name"] = str(row["full_name"])[::-1] + " Renamed"
    return out


# --------------------------------------------------------------------------- answers


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return "b64:" + base64.b64encode(value).decode()
    if isinstance(value, float):
        return repr(round(value, 9))
    return value


TRAILER = re.compile(r"\s*Location: \S+\s*Job ID: \S+\s*$", re.S)


def answer(client: bigquery.Client, sql: str) -> str:
    """The whole answer the agent gets, as canonical text (rows in order, or the error)."""
    config = bigquery.QueryJobConfig(default_dataset="demo-project.sales")
    try:
        rows = client.query(sql, job_config=config).result(timeout=120)
        body: Any = {"rows": [_plain(list(r.values())) for r in rows]}
    except gexc.GoogleAPICallError as exc:
        reasons = [e.get("reason") for e in (exc.errors or []) if isinstance(e, dict)]
        body = {
            "error": type(exc).__name__,
            "reasons": reasons,
            "message": TRAILER.sub("", exc.message or ""),
        }
    return json.dumps(body, sort_keys=True)


def run_all(client: bigquery.Client, cases: list[dict[str, str]]) -> list[str]:
    """Every case's answer, in order (four at a time: the answers do not depend on it)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda case: answer(client, case["sql"]), cases))


# A query that names no full_name (and no whole row or star) cannot see a renaming.
MAY_SEE_NAMES = re.compile(r"full_name|\*|\bc\b|TO_JSON|FORMAT\(", re.I)


# --------------------------------------------------------------------------- leaks


CANDIDATES = re.compile(
    r"[\w.+%-]+@[\w.-]+"  # e-mail addresses (either direction)
    r"|\+?\d[\d -]{6,}\d"  # phones, SSNs, cards
    r"|\d{4}-\d{2}-\d{2}|\d{2}-\d{2}-\d{4}"  # dates, reversed dates
    r"|[0-9a-f]{12,}"  # hex
    r"|[A-Za-z0-9+/]{12,}={0,2}"  # base64
)
WORD_PAIRS = re.compile(r"(?=(\b[\w'-]+ [\w'-]+\b))")


def spellings(value: str) -> set[str]:
    raw = value.encode()
    forms = {value, value[::-1], raw.hex(), base64.b64encode(raw).decode()}
    digits = re.sub(r"\D", "", value)
    if len(digits) >= 7:
        forms |= {digits, digits[::-1]}
    if "@" in value:
        local = value.rpartition("@")[0]
        if len(local) >= 4:
            forms |= {local, local[::-1]}
    return {f.lower() for f in forms}


#: Columns whose raw values are searched for in every answer. Birth dates are left to the
#: differential: a date computed from the masked one (DATE_ADD(birth_date, INTERVAL 1 DAY))
#: is routinely another customer's real birth date, so a search would only find coincidences.
SEARCHED = ("full_name", "email", "phone", "ssn", "card_number")


def forbidden_spellings(rows: list[dict[str, Any]]) -> set[str]:
    out: set[str] = set()
    for row in rows:
        for col in SEARCHED:
            out |= spellings(str(row[col]))
    return out


def leaks(text: str, forbidden: set[str]) -> set[str]:
    found: set[str] = set()
    for variant in (text.lower(), text[::-1].lower()):
        for m in CANDIDATES.findall(variant):
            for piece in {m, m.strip("+- "), re.sub(r"\D", "", m)}:
                if piece in forbidden:
                    found.add(piece)
        for pair in WORD_PAIRS.findall(variant):
            if pair in forbidden:
                found.add(pair)
    return found


def token(key: bytes, value: str) -> str:
    return "tok_" + hmac.digest(key, value.encode(), "sha256").hex()[:24]


# --------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def direct(stack: Stack) -> bigquery.Client:
    return bigquery.Client(
        project="demo-project",
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=stack.url("bigquery")),
    )


def _load(direct: bigquery.Client, rows: list[dict[str, Any]]) -> None:
    """Replace the table's rows, in this order (the order the seed wrote them)."""
    schema = [bigquery.SchemaField(c, t) for c, t in demo_data.SCHEMAS["sales.customers"]]
    direct.delete_table(TABLE, not_found_ok=True)
    direct.create_table(bigquery.Table(TABLE, schema=schema))
    for i in range(0, len(rows), 500):
        errors = direct.insert_rows_json(TABLE, rows[i : i + 500])
        assert not errors, errors[:3]


@pytest.fixture(scope="module")
def original_rows(direct: bigquery.Client) -> Iterator[list[dict[str, Any]]]:
    rows = demo_data.customers()
    try:
        yield rows
    finally:
        _load(direct, rows)  # restore, whatever happened


def test_answers_do_not_depend_on_hidden_values(
    stack: Stack,
    gateway_client: bigquery.Client,
    direct: bigquery.Client,
    original_rows: list[dict[str, Any]],
) -> None:
    key = (stack.state_dir / "hmac.key").read_bytes().strip()
    # Every pass starts from a table written the same way, so storage order (which decides
    # e.g. which row's ERROR() fires first) is the same in all of them.
    _load(direct, original_rows)
    before = run_all(gateway_client, ATTACKS)

    changed = [change_hidden(r) for r in original_rows]
    assert all(
        a[c] != b[c] for a, b in zip(original_rows, changed, strict=True) for c in ("ssn", "email")
    ), "every row must really change"
    _load(direct, changed)
    after = run_all(gateway_client, ATTACKS)

    renamed = [rename(r) for r in changed]
    _load(direct, renamed)
    named = [i for i, case in enumerate(ATTACKS) if MAY_SEE_NAMES.search(case["sql"])]
    renamed_answers = list(after)
    for i, text in zip(named, run_all(gateway_client, [ATTACKS[i] for i in named]), strict=True):
        renamed_answers[i] = text

    differ = [
        (case["sql"], a, b) for case, a, b in zip(ATTACKS, before, after, strict=True) if a != b
    ]
    assert not differ, "answers changed with hidden values:\n" + "\n".join(
        f"{sql}\n  before: {a[:300]}\n  after:  {b[:300]}" for sql, a, b in differ[:10]
    )

    back = {
        token(key, new["full_name"]): token(key, old["full_name"])
        for old, new in zip(changed, renamed, strict=True)
    }
    pattern = re.compile("|".join(map(re.escape, back)))
    differ = []
    for case, a, b in zip(ATTACKS, after, renamed_answers, strict=True):
        if TOKEN_VALUED.search(case["sql"]):
            continue
        mapped = pattern.sub(lambda m: back[m.group(0)], b)
        if a != mapped:
            differ.append((case["sql"], a, mapped))
    assert not differ, "answers changed with renamed customers:\n" + "\n".join(
        f"{sql}\n  before: {a[:300]}\n  after:  {b[:300]}" for sql, a, b in differ[:10]
    )

    for rows, answers in ((original_rows, before), (changed, after), (renamed, renamed_answers)):
        forbidden = forbidden_spellings(rows)
        # A value the query itself spells out (a literal) is the agent's own, not a leak.
        found = {
            case["sql"]: sorted(hits)[:5]
            for case, text in zip(ATTACKS, answers, strict=True)
            if (hits := leaks(text, forbidden) - leaks(case["sql"], forbidden))
        }
        assert not found, f"raw values came back: {dict(list(found.items())[:5])}"
    # Not vacuous: the same check finds the raw values in the table itself.
    assert leaks(json.dumps([original_rows[0]]), forbidden_spellings(original_rows))

    # And the attacks are not all refused: most return rows.
    answered = sum('"rows"' in a for a in before)
    assert answered >= 120, f"only {answered} attacks returned rows"
