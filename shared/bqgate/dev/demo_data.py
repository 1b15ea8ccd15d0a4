"""The demo warehouse (project ``demo-project``), generated deterministically.

Same seed, same rows: tests and docs can rely on the values.

>>> luhn_ok(customers()[0]["card_number"])
True
>>> len(customers()), len({c["email"] for c in customers()})
(1000, 1000)
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

SEED = 20261123
DATA_VERSION = "2"
PROJECT = "demo-project"

FIRST = [
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Margaret",
    "Ken",
    "Radia",
    "Tim",
    "Frances",
    "Dennis",
    "Katherine",
    "Linus",
    "Hedy",
    "John",
    "Sophie",
    "Niklaus",
    "Jean",
    "Annie",
    "Carlos",
    "Mei",
    "Priya",
    "Olga",
    "Kwame",
    "Yuki",
    "Fatima",
    "Lars",
    "Ines",
    "Omar",
]
LAST = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Hamilton",
    "Thompson",
    "Perlman",
    "Berners-Lee",
    "Allen",
    "Ritchie",
    "Johnson",
    "Torvalds",
    "Lamarr",
    "McCarthy",
    "Wilson",
    "Wirth",
    "Sammet",
    "Easley",
    "Santos",
    "Chen",
    "Patel",
    "Ivanova",
    "Mensah",
    "Tanaka",
    "Haddad",
    "Nilsson",
    "Moreau",
    "Farouk",
]
DOMAINS = ["example.com", "example.org", "mail.example.net", "corp.example.com"]
COUNTRIES = ["US", "GB", "DE", "FR", "JP", "IN", "BR", "CA", "NL", "SE"]
EVENT_NAMES = ["page_view", "click", "signup", "login", "purchase", "logout", "search", "share"]
STATUSES = ["placed", "shipped", "delivered", "returned", "cancelled"]
ACCOUNTS = ["revenue", "cogs", "payroll", "marketing", "rent", "travel", "software"]

SCHEMAS: dict[str, list[tuple[str, str]]] = {
    "analytics.events": [
        ("event_id", "INT64"),
        ("user_id", "INT64"),
        ("name", "STRING"),
        ("ts", "TIMESTAMP"),
    ],
    "analytics.daily_revenue": [("day", "DATE"), ("revenue", "NUMERIC")],
    "sales.customers": [
        ("customer_id", "INT64"),
        ("full_name", "STRING"),
        ("email", "STRING"),
        ("phone", "STRING"),
        ("ssn", "STRING"),
        ("card_number", "STRING"),
        ("birth_date", "DATE"),
        ("country", "STRING"),
    ],
    "sales.orders": [
        ("order_id", "INT64"),
        ("customer_id", "INT64"),
        ("amount", "NUMERIC"),
        ("status", "STRING"),
        ("ordered_at", "TIMESTAMP"),
    ],
    "finance.ledger": [
        ("entry_id", "INT64"),
        ("day", "DATE"),
        ("account", "STRING"),
        ("amount", "NUMERIC"),
    ],
    "finance.payroll": [
        ("employee_id", "INT64"),
        ("name", "STRING"),
        ("salary", "NUMERIC"),
        ("iban", "STRING"),
    ],
}
DATASET_TIERS = {"analytics": "non-production", "sales": "production", "finance": "restricted"}

#: Persistent routines of the demo warehouse (SQL UDFs): one in a non-production dataset,
#: one in the restricted finance dataset (calling it needs approval, like reading it).
ROUTINES: dict[str, str] = {
    "analytics.normalize_name": (
        "CREATE OR REPLACE FUNCTION `demo-project.analytics.normalize_name`(s STRING) "
        "RETURNS STRING AS (LOWER(TRIM(s)))"
    ),
    "finance.fx_rate": (
        "CREATE OR REPLACE FUNCTION `demo-project.finance.fx_rate`(currency STRING) "
        "RETURNS FLOAT64 AS (CASE currency WHEN 'EUR' THEN 1.08 WHEN 'GBP' THEN 1.27 "
        "WHEN 'JPY' THEN 0.0067 ELSE 1.0 END)"
    ),
}

EPOCH = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _luhn_complete(prefix: str) -> str:
    for check in "0123456789":
        if luhn_ok(prefix + check):
            return prefix + check
    raise AssertionError("unreachable")


def _iban_de(rng: random.Random) -> str:
    bban = "".join(rng.choice("0123456789") for _ in range(18))
    rearranged = bban + "1314" + "00"  # D=13, E=14
    check = 98 - int(rearranged) % 97
    return f"DE{check:02d}{bban}"


def customers() -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    rows = []
    for i in range(1, 1001):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        area = rng.choice([n for n in range(1, 900) if n != 666])
        rows.append(
            {
                "customer_id": i,
                "full_name": f"{first} {last}",
                "email": f"{first.lower()}.{last.lower().replace('-', '')}{i}@"
                + rng.choice(DOMAINS),
                "phone": f"+1-{rng.randint(201, 989)}-{rng.randint(200, 999)}-"
                + f"{rng.randint(0, 9999):04d}",
                "ssn": f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}",
                "card_number": _luhn_complete(
                    "4" + "".join(rng.choice("0123456789") for _ in range(14))
                ),
                "birth_date": (
                    dt.date(1950, 1, 1) + dt.timedelta(days=rng.randint(0, 18000))
                ).isoformat(),
                "country": rng.choice(COUNTRIES),
            }
        )
    return rows


def _ts(seconds: int) -> str:
    return (EPOCH + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def tables() -> dict[str, list[dict[str, Any]]]:
    """Every demo table's rows, keyed ``dataset.table``."""
    rng = random.Random(SEED + 1)
    events = [
        {
            "event_id": i,
            "user_id": rng.randint(1, 1000),
            "name": rng.choice(EVENT_NAMES),
            "ts": _ts(rng.randint(0, 365 * 86400)),
        }
        for i in range(1, 5001)
    ]
    revenue = [
        {
            "day": (EPOCH.date() + dt.timedelta(days=d)).isoformat(),
            "revenue": str(Decimal(rng.randint(100_000, 900_000)) / 100),
        }
        for d in range(365)
    ]
    orders = [
        {
            "order_id": i,
            "customer_id": rng.randint(1, 1000),
            "amount": str(Decimal(rng.randint(500, 50_000)) / 100),
            "status": rng.choice(STATUSES),
            "ordered_at": _ts(rng.randint(0, 365 * 86400)),
        }
        for i in range(1, 10_001)
    ]
    ledger = [
        {
            "entry_id": i,
            "day": (EPOCH.date() + dt.timedelta(days=rng.randint(0, 364))).isoformat(),
            "account": rng.choice(ACCOUNTS),
            "amount": str(Decimal(rng.randint(-500_000, 500_000)) / 100),
        }
        for i in range(1, 2001)
    ]
    payroll = [
        {
            "employee_id": i,
            "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
            "salary": str(Decimal(rng.randint(40_000, 250_000))),
            "iban": _iban_de(rng),
        }
        for i in range(1, 201)
    ]
    return {
        "analytics.events": events,
        "analytics.daily_revenue": revenue,
        "sales.customers": customers(),
        "sales.orders": orders,
        "finance.ledger": ledger,
        "finance.payroll": payroll,
    }


def seed(bigquery_url: str, state_dir: Path, force: bool = False) -> None:
    """Create the demo datasets and tables in the emulator and load their rows (once)."""
    from bqgate.adapters.emulators import load_tables

    marker = state_dir / "bigquery" / f"seeded-v{DATA_VERSION}"
    if marker.exists() and not force:
        return
    rows = tables()
    load_tables(
        bigquery_url,
        PROJECT,
        list(DATASET_TIERS),
        {name: (SCHEMAS[name], rows[name]) for name in SCHEMAS},
        routines=list(ROUTINES.values()),
    )
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("ok\n")
