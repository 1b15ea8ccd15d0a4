"""Google's bq CLI (Google Cloud SDK) against the gateway: ``bqgate bq``, and plain
``bq --api=URL`` with nothing but a token (in a bigqueryrc, never on the command line)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bqgate.commands.bq import find_bq
from bqgate.dev.stack import Stack
from conftest import AGENT, mint_token_for

works_with = pytest.mark.works_with
QUERY = "SELECT customer_id, ssn FROM `demo-project.sales.customers` ORDER BY customer_id LIMIT 3"


def bqgate_bq(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bqgate.cli", "bq", "--dev-dir", str(stack.state_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@works_with("bq CLI", "query")
def test_bq_query(stack: Stack) -> None:
    out = bqgate_bq(stack, "query", QUERY)
    assert out.returncode == 0, out.stderr + out.stdout
    assert out.stdout.count("XXX-XX-") == 3
    dry = bqgate_bq(stack, "query", "--dry_run", QUERY)
    assert dry.returncode == 0 and "Query successfully validated" in dry.stdout
    blocked = bqgate_bq(stack, "query", "DROP TABLE `demo-project.sales.customers`")
    assert blocked.returncode != 0 and "Blocked by bqgate policy" in blocked.stdout


@works_with("bq CLI", "ls")
def test_bq_ls(stack: Stack) -> None:
    datasets = bqgate_bq(stack, "ls")
    assert datasets.returncode == 0 and datasets.stdout.split()[-3:] == [
        "analytics",
        "finance",
        "sales",
    ]
    tables = bqgate_bq(stack, "ls", "sales")
    assert tables.returncode == 0 and "customers" in tables.stdout and "orders" in tables.stdout
    jobs = bqgate_bq(stack, "ls", "-j", "-n", "5")
    assert jobs.returncode == 0 and "query" in jobs.stdout


@works_with("bq CLI", "show")
def test_bq_show(stack: Stack) -> None:
    out = bqgate_bq(stack, "show", "--format=prettyjson", "sales.customers")
    assert out.returncode == 0, out.stderr
    assert '"description": "masked by bqgate: last4"' in out.stdout
    missing = bqgate_bq(stack, "show", "not_in_policy.customers")
    assert missing.returncode != 0 and "Not found: Dataset" in missing.stdout


@works_with("bq CLI", "head")
def test_bq_head(stack: Stack) -> None:
    out = bqgate_bq(stack, "head", "-n", "4", "sales.customers")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("XXX-XX-") == 4


@works_with("bq CLI", "plain bq --api=URL (token in bigqueryrc)")
def test_plain_bq_with_only_api(stack: Stack, tmp_path: Path) -> None:
    python, bq_py = find_bq()
    token = mint_token_for(stack, AGENT)
    rc = tmp_path / "bigqueryrc"
    # Nothing but the token and the project: bq's default dialect (legacy SQL) is left as is.
    plain = f"oauth_access_token = {token}\nproject_id = demo-project\n"
    assert "legacy" not in plain
    rc.write_text(plain)
    rc.chmod(0o600)
    env = {**os.environ, "BIGQUERYRC": str(rc), "CLOUDSDK_CONFIG": str(tmp_path / "gcloud")}
    api = f"--api={stack.url('gateway')}"
    for args, needle in (
        (["query", QUERY], "XXX-XX-"),
        (["ls"], "analytics"),
        (["show", "sales.customers"], "|- ssn: string"),
        (["head", "-n", "2", "sales.customers"], "XXX-XX-"),
    ):
        out = subprocess.run(
            [python, bq_py, api, *args], capture_output=True, text=True, env=env, timeout=120
        )
        assert out.returncode == 0 and needle in out.stdout, out.stdout + out.stderr
        assert token not in out.stdout + out.stderr
    # A statement that may mean something else in legacy SQL is refused, saying what to set.
    legacy = subprocess.run(
        [python, bq_py, api, "query", "SELECT customer_id FROM [demo-project:sales.customers]"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert legacy.returncode != 0
    assert "--nouse_legacy_sql" in legacy.stdout + legacy.stderr, legacy.stdout + legacy.stderr
