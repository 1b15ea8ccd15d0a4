"""dbt-bigquery against the gateway: ``dbt debug`` and ``dbt show`` on a model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bqgate.dev.stack import Stack
from conftest import AGENT, mint_token_for

PROJECT = Path(__file__).parent / "dbt_project"
works_with = pytest.mark.works_with

PROFILE = """\
bqgate:
  target: gateway
  outputs:
    gateway:
      type: bigquery
      method: oauth-secrets
      token: "{token}"
      project: demo-project
      dataset: analytics
      location: US
      threads: 1
      api_endpoint: {gateway}
      job_retries: 0
"""


@pytest.fixture(scope="module")
def dbt(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> object:
    work = tmp_path_factory.mktemp("dbt")
    shutil.copytree(PROJECT, work / "project")
    (work / "profiles.yml").write_text(
        PROFILE.format(token=mint_token_for(stack, AGENT), gateway=stack.url("gateway"))
    )
    (work / "profiles.yml").chmod(0o600)
    exe = str(Path(sys.executable).with_name("dbt"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [exe, *args, "--profiles-dir", str(work), "--project-dir", str(work / "project")],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "DBT_LOG_PATH": str(work / "logs")},
            cwd=work / "project",
        )

    return run


@works_with("dbt-bigquery", "dbt debug")
def test_dbt_debug(dbt) -> None:  # type: ignore[no-untyped-def]
    out = dbt("debug")
    assert out.returncode == 0, out.stdout[-3000:]
    assert "Connection test: [OK connection ok]" in out.stdout.replace("\x1b[32m", "").replace(
        "\x1b[0m", ""
    )


@works_with("dbt-bigquery", "dbt show (a model)")
def test_dbt_show(dbt) -> None:  # type: ignore[no-untyped-def]
    out = dbt("show", "--select", "us_customers", "--limit", "3")
    assert out.returncode == 0, out.stdout[-3000:]
    assert out.stdout.count("XXX-XX-") == 3
