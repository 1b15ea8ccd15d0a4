"""nox sessions: one per job. ``nox -s dev`` runs the gateway locally; ``nox -s tests`` tests it.

Sessions reuse their virtualenvs (``reuse_venv``) so a second run starts fast, and pass
``*session.posargs`` through (e.g. ``nox -s tests -- -k classify``).
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["lint", "tests", "tf"]
nox.options.reuse_venv = "yes"
nox.options.default_venv_backend = "venv"

PYTHON = "3.11"
TEST_DEPS = [
    "pytest>=8",
    "hypothesis>=6",
    "python-hcl2==8.1.4",
    "selenium>=4.20",
    "gcp-storage-emulator==2026.7.19",  # a Cloud Storage stand-in for the checkpoint sink
    "pytest-xdist>=3.5",  # two workers, each with its own stack: much of a system test is waiting
    "uv>=0.5",  # the bundle tests' fresh venvs in seconds (tests/infra/test_bundles.py)
]
# The client matrix (tests/clients): pinned, so the README's "Works with" table is reproducible.
CLIENT_DEPS = [
    "google-cloud-bigquery[pandas,bqstorage]==3.47.0",
    "google-cloud-bigquery-storage==2.43.0",
    "pandas-gbq==0.35.3",
    "sqlalchemy-bigquery==1.17.3",
    "ibis-framework[bigquery]==12.0.0",
    "dbt-core==1.10.23",
    "dbt-bigquery==1.10.3",
]


@nox.session(python=PYTHON)
def dev(session: nox.Session) -> None:
    """Start the whole gateway locally with the demo warehouse (Ctrl-C stops it)."""
    session.install("-e", ".")
    session.run("bqgate", "dev", *session.posargs)


def _ensure_chromium(session: nox.Session) -> None:
    """The Slack stand-in's browser test drives headless Chromium (Debian's packages)."""
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    session.log("installing Debian's chromium and chromium-driver for the browser test")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    session.run(*sudo, "apt-get", "update", "-qq", external=True)
    session.run(
        *sudo, "apt-get", "install", "-y", "-qq", "chromium", "chromium-driver", external=True
    )


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit, adapter, function and end-to-end tests; starts and stops the emulators itself.
    Without arguments it then runs the client matrix too (``clients``)."""
    _ensure_chromium(session)
    session.install("-e", ".", *TEST_DEPS)
    # Two workers (pytest-xdist), each with its own local stack, a test file at a time: the
    # system tests spend much of their time waiting on emulators and deadlines.
    default = ["-q", "-n", "2", "--dist", "loadfile"]
    session.run("pytest", "--ignore=tests/clients", *(session.posargs or default))
    if not session.posargs:
        session.notify("clients")


@nox.session(python=PYTHON)
def clients(session: nox.Session) -> None:
    """The client matrix: real BigQuery clients (Python, bq CLI, dbt, Node) against the local
    stack; writes build/clients/matrix.json and checks the README's "Works with" table.
    ``nox -s clients -- --write-readme`` rewrites the table from this run."""
    write = "--write-readme" in session.posargs
    args = [a for a in session.posargs if a != "--write-readme"]
    session.install("-e", ".", *TEST_DEPS, *CLIENT_DEPS)
    node_dir = "tests/clients/node"
    if not os.path.isdir(os.path.join(node_dir, "node_modules", "@google-cloud", "bigquery")):
        session.run("npm", "ci", "--no-audit", "--no-fund", "--prefix", node_dir, external=True)
    # Writing the table records failures too; checking it fails on any.
    session.run(
        "pytest", "tests/clients", *(args or ["-q"]), success_codes=[0, 1] if write else [0]
    )
    session.run("python", "tools/works_with.py", "--write" if write else "--check")


@nox.session(python=PYTHON)
def reliability(session: nox.Session) -> None:
    """Load (4-32 agents) and fault injection on a supervised stack of its own; results in
    bench/results/reliability.json. ``-- --short`` runs the short version CI runs."""
    session.install("-e", ".", *TEST_DEPS)
    args = list(session.posargs)
    short = "--short" in args
    args = [a for a in args if a != "--short"]
    session.env["BQGATE_RELIABILITY"] = "short" if short else "full"
    session.run("pytest", "-q", "-p", "no:cacheprovider", "tests/reliability", *args)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check and mypy --strict (the library and the tests)."""
    session.install(
        "-e", ".", *TEST_DEPS, "ruff>=0.5", "mypy>=1.10", "types-PyYAML", "types-requests"
    )
    paths = ["shared", "functions", "tests", "bench", "infra", "tools", "noxfile.py"]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
    session.run("mypy")


@nox.session(python=PYTHON)
def tf(session: nox.Session) -> None:
    """Offline Terraform checks: fmt + provider schema (tf-check) and the plan-level IAM tests."""
    session.install("-e", ".", *TEST_DEPS)
    session.run("bash", "../shared/tools/tf-check", "infra/terraform", external=True)
    session.run("pytest", "-q", "tests/infra/test_terraform.py", *session.posargs)


@nox.session(python=PYTHON)
def package(session: nox.Session) -> None:
    """Build each function's deployable bundle into build/bundles/<name>.zip."""
    session.run("python", "infra/package.py", "--out", "build/bundles", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Every benchmark; JSON to bench/results/ and a table on stdout. Never fails on timing."""
    session.install("-e", ".", "matplotlib")
    session.run("python", "-m", "bench", *session.posargs)
