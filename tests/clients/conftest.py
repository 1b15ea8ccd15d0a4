"""The client matrix (``nox -s clients``): real BigQuery clients against the local stack.

Every test carries ``@pytest.mark.works_with(CLIENT, OPERATION)``; the outcomes, with the
clients' versions, go to ``build/clients/matrix.json``, from which ``tools/works_with.py``
writes the README's "Works with" table.

No client may reach outside this machine: Application Default Credentials would probe the
GCE metadata server, so the probe is switched off and pointed at a closed loopback port.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Generator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

os.environ.update(
    {
        "NO_GCE_CHECK": "True",
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
        "METADATA_SERVER_DETECTION": "none",  # google-auth-library (Node)
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DO_NOT_TRACK": "1",
    }
)

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "build" / "clients" / "matrix.json"
NODE_DIR = Path(__file__).parent / "node"
PY_PACKAGES = (
    "google-cloud-bigquery",
    "google-cloud-bigquery-storage",
    "pandas-gbq",
    "sqlalchemy-bigquery",
    "ibis-framework",
    "dbt-core",
    "dbt-bigquery",
)

_outcomes: list[dict[str, Any]] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "works_with(client, operation): one cell of the README's client matrix"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    marker = item.get_closest_marker("works_with")
    if marker is None or (report.when != "call" and report.passed):
        return report
    _outcomes.append(
        {
            "client": marker.args[0],
            "operation": marker.args[1],
            "test": item.nodeid,
            "outcome": report.outcome,
        }
    )
    return report


def _versions() -> dict[str, str]:
    found = {}
    for name in PY_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    lock = NODE_DIR / "package-lock.json"
    if lock.exists():
        packages = json.loads(lock.read_text()).get("packages", {})
        found["@google-cloud/bigquery"] = packages.get(
            "node_modules/@google-cloud/bigquery", {}
        ).get("version", "missing")
    try:
        from bqgate.commands.bq import find_bq

        _, bq_py = find_bq()
        version = Path(bq_py).with_name("VERSION").read_text().strip()
        found["bq CLI"] = f"{version} (Google Cloud SDK)"
    except (FileNotFoundError, OSError):
        found["bq CLI"] = "missing"
    try:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
        found["node"] = node.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        found["node"] = "missing"
    found["python"] = platform.python_version()
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _outcomes:
        return
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for row in _outcomes:
        key = (row["client"], row["operation"])
        if key not in merged or row["outcome"] != "passed":
            merged[key] = row  # a setup failure or a failed call wins over a pass
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"versions": _versions(), "results": list(merged.values())}, indent=1) + "\n"
    )
