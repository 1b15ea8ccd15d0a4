"""Helpers the tests on the local stack share (``tests/`` is on ``sys.path``, see
``tests/conftest.py``): waiting for a condition, fresh in-process wiring, a job that
waits for approval written straight to Firestore, and a headless browser."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from bqgate.jobs import PENDING_APPROVAL, Job
from conftest import AGENT

if TYPE_CHECKING:
    from bqgate.dev.stack import Stack
    from selenium import webdriver

LEDGER_SQL = "SELECT entry_id, amount FROM `demo-project.finance.ledger` ORDER BY entry_id LIMIT 3"
_CASE_HEADER = re.compile(r"^-- (\w+):\s*(.*?)\s*$")


def until(what: str, fn: Callable[[], Any], timeout: float = 60, interval: float = 0.2) -> Any:
    """``fn()``'s first truthy value, polled every ``interval`` seconds; fails the test
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def clear_bootstrap() -> None:
    """Forget every client and service ``bqgate.bootstrap`` built (the next use builds them
    from the environment as it is now)."""
    from bqgate import bootstrap

    for name in dir(bootstrap):
        clear = getattr(getattr(bootstrap, name), "cache_clear", None)
        if callable(clear):
            clear()


def new_pending_job(sql: str = LEDGER_SQL, session_id: str = "", **fields: Any) -> Job:
    """A PENDING_APPROVAL job of the agent, classified by the stack's policy and written
    straight to Firestore as the gateway and the executor leave it (nothing is published)."""
    from bqgate import bootstrap

    groups = bootstrap.policy().groups_for(AGENT)
    classification = bootstrap._classifier()(
        sql,
        principal=AGENT,
        groups=groups,
        default_project="demo-project",
        default_dataset=None,
        claims={},
    )
    assert classification.decision == "approve", classification
    now = int(time.time() * 1000)
    job = Job.new(
        job_id="fn-" + uuid.uuid4().hex,
        project="demo-project",
        location="US",
        sql=sql,
        owner=AGENT,
        groups=sorted(groups),
        classification=classification,
        state=PENDING_APPROVAL,
        expire_at_ms=now + 900_000,
        now_ms=now,
        needs_approval=True,
        bytes_estimate=4096,
        approval_requested_ms=now,
        session_id=session_id,
        **fields,
    )
    bootstrap.job_store().create(job)
    return job


@contextlib.contextmanager
def headless_chromium(*flags: str) -> Iterator[webdriver.Chrome]:
    """Debian's chromium under chromedriver, headless, with a profile of its own (removed
    afterwards) and ``flags`` added to the usual ones."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="bqgate-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        *flags,
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def slack_state(stack: Stack, timeout: float = 30) -> dict[str, Any]:
    """What the Slack stand-in holds (``messages``, ...), as its test endpoint reports it."""
    resp = requests.get(stack.url("slack") + "/_test/messages", timeout=timeout)
    resp.raise_for_status()
    data: dict[str, Any] = resp.json()
    return data


def slack_click(
    stack: Stack, user: str, msg: dict[str, Any], action_id: str, job_id: str
) -> dict[str, Any]:
    """What the Slack stand-in's page posts when ``user`` clicks a button of ``msg``: the
    stand-in's report of the interaction (``status``, ``within_deadline``, ``response``)."""
    resp = requests.post(
        stack.url("slack") + "/_ui/click",
        timeout=30,
        headers={"Accept": "application/json"},
        data={
            "user": user,
            "channel": msg["channel"],
            "ts": msg["ts"],
            "action_id": action_id,
            "value": job_id,
        },
    )
    resp.raise_for_status()
    result: dict[str, Any] = resp.json()
    return result


def read_cases(path: Path) -> list[dict[str, str]]:
    """The cases of a fixture file of SQL blocks (blank-line separated), each led by
    ``-- key: value`` header lines; a block without a ``class`` header is no case."""
    cases: list[dict[str, str]] = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        headers: dict[str, str] = {}
        body: list[str] = []
        for line in block.strip().splitlines():
            m = _CASE_HEADER.match(line)
            if m and not body:
                headers[m.group(1)] = m.group(2)
            else:
                body.append(line)
        if "class" in headers and body:
            cases.append({**headers, "sql": "\n".join(body)})
    return cases
