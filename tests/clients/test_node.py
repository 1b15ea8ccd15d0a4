"""The Node client ``@google-cloud/bigquery`` against the gateway (``node/matrix.mjs``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from bqgate.dev.stack import Stack
from conftest import AGENT, mint_token_for

NODE_DIR = Path(__file__).parent / "node"
works_with = pytest.mark.works_with


@pytest.fixture(scope="module")
def node(stack: Stack) -> Any:
    token = mint_token_for(stack, AGENT)

    def run(operation: str) -> Any:
        out = subprocess.run(
            ["node", "matrix.mjs", operation],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "GATEWAY": stack.url("gateway"), "TOKEN": token},
        )
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout.strip().splitlines()[-1])
        assert answer["ok"], answer
        assert token not in out.stdout + out.stderr
        return answer["result"]

    return run


def masked(rows: list[dict[str, Any]]) -> bool:
    return bool(rows) and all(str(r["ssn"]).startswith("XXX-XX-") for r in rows)


@works_with("@google-cloud/bigquery (Node)", "query")
def test_node_query(node: Any) -> None:
    rows = node("query")
    assert [r["customer_id"] for r in rows] == [1, 2, 3, 4, 5] and masked(rows)


@works_with("@google-cloud/bigquery (Node)", "getRows")
def test_node_get_rows(node: Any) -> None:
    rows = node("getRows")
    assert len(rows) == 250 and masked(rows)


@works_with("@google-cloud/bigquery (Node)", "getMetadata, getDatasets, getTables")
def test_node_metadata(node: Any) -> None:
    meta = node("metadata")
    assert meta["descriptions"]["ssn"] == "masked by bqgate: last4"
    assert meta["datasets"] == ["analytics", "finance", "sales"]
    assert meta["tables"] == ["customers", "orders"]


@works_with("@google-cloud/bigquery (Node)", "dry run, getJobs")
def test_node_dry_run_and_jobs(node: Any) -> None:
    stats = node("dryRun")
    assert stats["statementType"] == "SELECT" and "totalBytesProcessed" in stats
    assert all(t is not None for t in node("jobs"))  # statementType on every job
