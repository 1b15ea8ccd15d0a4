"""Fixtures of the reliability suite: a supervised dev stack of its own (faults never touch
the shared one), the mode (``BQGATE_RELIABILITY=short|full``) and the results file."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bqgate.dev.stack import DEFAULT_PORTS, Stack, free_ports
from reliability.harness import MODE  # tests/ is on sys.path (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]
#: Where the results go: ``BQGATE_RELIABILITY_OUT``, else bench/results/ in full mode only.
OUT = os.environ.get("BQGATE_RELIABILITY_OUT") or (
    str(REPO / "bench" / "results" / "reliability.json") if MODE == "full" else ""
)


@pytest.fixture(scope="session")
def rstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        state_dir=tmp_path_factory.mktemp("reliability"),
        ports=free_ports(DEFAULT_PORTS),
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def results() -> Iterator[dict[str, Any]]:
    data: dict[str, Any] = {
        "mode": MODE,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load": [],
        "faults": {},
        "fuzzer": None,
    }
    yield data
    data["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if OUT:
        path = Path(OUT)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
