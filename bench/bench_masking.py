"""Benchmark: masking throughput next to plain JSON encoding of the same rows.

A 100,000 x 10 result in compact rows: five sensitive columns of
``sales.customers`` (planned from lineage under the default strategies) and five
plain STRING columns the detectors scan. Each run times ``Masker.mask_rows`` and,
as the yardstick, encoding the same rows in BigQuery's REST shape
(``{"rows": [{"f": [{"v": ...}]}]}``) with ``json.dumps``. The target is a ratio
(masking / encoding) of at most 1.5.

Run: ``python bench/bench_masking.py [out_dir]`` (default ``bench/results``).
"""

from __future__ import annotations

import json
import random
import statistics
import string
import sys
import time
from pathlib import Path
from typing import Any

from bqgate.masking import Masker, plan_masking
from bqgate.sql.lineage import output_lineage

ROWS = 100_000
RUNS = 7
TARGET_RATIO = 1.5

TABLE = "demo-project.sales.customers"
SENSITIVE = {
    "full_name": "hmac",
    "email": "email",
    "phone": "last4",
    "ssn": "last4",
    "card_number": "last4",
}
PLAIN = ["country", "status", "product", "note", "city"]
SCHEMA = [{"name": n, "type": "STRING"} for n in [*SENSITIVE, *PLAIN]]
SQL = f"SELECT {', '.join(SENSITIVE)}, {', '.join(PLAIN)} FROM `{TABLE}`"


def _rows(n: int, seed: int = 1) -> list[list[Any]]:
    rnd = random.Random(seed)
    words = ["alpha", "bravo", "delta", "echo", "golf", "hotel", "kilo", "lima", "oscar"]
    rows = []
    for i in range(n):
        name = "".join(rnd.choices(string.ascii_lowercase, k=7)).title()
        note = " ".join(rnd.choices(words, k=4))
        if i % 10 == 0:
            note += f" ref {rnd.randint(10, 99999)}"  # digits: the detectors must look
        if i % 100 == 0:
            note += f" mail {name.lower()}@example.com"  # a real detector hit
        rows.append(
            [
                f"{name} {name[::-1]}",
                f"{name.lower()}@example.com",
                f"+1 415 555 {rnd.randint(1000, 9999)}",
                f"{rnd.randint(100, 665)}-{rnd.randint(10, 99)}-{rnd.randint(1000, 9999)}",
                f"4111 1111 1111 {rnd.randint(1000, 9999)}",
                rnd.choice(["US", "DE", "FR", "JP"]),
                rnd.choice(["shipped", "open", "paid"]),
                rnd.choice(words).title(),
                note,
                rnd.choice(["Berlin", "Paris", "Osaka"]),
            ]
        )
    return rows


def _encode(rows: list[list[Any]]) -> str:
    return json.dumps({"rows": [{"f": [{"v": v} for v in row]} for row in rows]})


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(out_dir: Path) -> dict[str, Any]:
    """Run the benchmark, write ``out_dir/masking.json`` and return the numbers."""
    schemas = {TABLE: [{"name": n, "type": "STRING"} for n in [*SENSITIVE, *PLAIN]]}
    lineage = output_lineage(SQL, schemas=schemas.__getitem__, default_project="demo-project")
    plan = plan_masking(lineage, SCHEMA, lambda t: SENSITIVE if t == TABLE else {})
    assert [c.strategy for c in plan.columns] == [*SENSITIVE.values()] + [None] * len(PLAIN)
    rows = _rows(ROWS)
    cells = ROWS * len(SCHEMA)
    mask_s: list[float] = []
    json_s: list[float] = []
    masker = Masker(plan, SCHEMA, hmac_key=b"bench-key")
    for _ in range(RUNS):
        t0 = time.perf_counter()
        masker.mask_rows(rows)
        t1 = time.perf_counter()
        _encode(rows)
        t2 = time.perf_counter()
        mask_s.append(t1 - t0)
        json_s.append(t2 - t1)
    ratios = [m / j for m, j in zip(mask_s, json_s, strict=True)]
    result: dict[str, Any] = {
        "rows": ROWS,
        "columns": len(SCHEMA),
        "cells": cells,
        "runs": RUNS,
        "mask_seconds": {"p50": _pct(mask_s, 0.5), "p99": _pct(mask_s, 0.99)},
        "json_seconds": {"p50": _pct(json_s, 0.5), "p99": _pct(json_s, 0.99)},
        "mask_cells_per_second": cells / statistics.median(mask_s),
        "json_cells_per_second": cells / statistics.median(json_s),
        "ratio": {"p50": _pct(ratios, 0.5), "p99": _pct(ratios, 0.99)},
        "target_ratio": TARGET_RATIO,
        "detector_hits": {f"{c}:{k}": n for (c, k), n in sorted(masker.hits.items())},
    }
    result["meets_target"] = result["ratio"]["p50"] <= TARGET_RATIO
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "masking.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results"
    print(json.dumps(main(target), indent=2))
