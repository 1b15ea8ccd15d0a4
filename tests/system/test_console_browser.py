"""The approver console as people use it: headless Chromium signs in through the dev issuer,
watches the inbox update itself, approves and denies, replays the session; the agent's
waiting ``client.query(...).result()`` gets rows or a ``Forbidden`` carrying the reason.

Screenshots are written to a temporary folder, and also to ``$BQGATE_SCREENSHOTS_DIR``
when it is set (``BQGATE_SCREENSHOTS_DIR=docs`` refreshes the ones in the README).
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
import shutil
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from bqgate.dev.stack import Stack, sign_in_key
from google.api_core import exceptions as gexc
from google.cloud import bigquery
from helpers import headless_chromium
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.system

LEDGER_SQL = "SELECT entry_id, amount FROM `demo-project.finance.ledger` ORDER BY entry_id LIMIT 2"
TOTALS_SQL = (
    "SELECT account, SUM(amount) AS total FROM `demo-project.finance.ledger` GROUP BY account"
)
AGENT = "agent@demo-project.iam.gserviceaccount.com"


@pytest.fixture()
def browser() -> Iterator[webdriver.Chrome]:
    with headless_chromium("--window-size=1280,900", "--force-device-scale-factor=1") as driver:
        yield driver


def console_url(stack: Stack) -> str:
    return stack.endpoints()["console"]


def sign_in(browser: webdriver.Chrome, stack: Stack, who: str) -> None:
    """Click "Sign in" on the console, then the identity on the dev issuer's page."""
    browser.get(console_url(stack))
    WebDriverWait(browser, 20).until(ec.element_to_be_clickable((By.ID, "sign-in"))).click()
    button = WebDriverWait(browser, 20).until(
        ec.element_to_be_clickable((By.ID, f"sign-in-{who.split('@')[0]}"))
    )
    # The dev issuer asks for its sign-in key once per browser (the banner prints it).
    for field in browser.find_elements(By.ID, "sign_in_key"):
        field.send_keys(sign_in_key(stack.endpoints()))
    button.click()
    WebDriverWait(browser, 30).until(ec.text_to_be_present_in_element((By.ID, "signed-in-as"), who))


def sign_out(browser: webdriver.Chrome) -> None:
    browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
    WebDriverWait(browser, 20).until(ec.presence_of_element_located((By.ID, "sign-in")))


#: The innermost elements that stick out past the viewport's right edge.
WIDE_ELEMENTS = """
const w = arguments[0], out = [];
for (const el of document.querySelectorAll('body *')) {
  const r = el.getBoundingClientRect();
  if (r.right > w + 1 && ![...el.children].some(c => c.getBoundingClientRect().right > w + 1)) {
    const name = el.tagName.toLowerCase() + (el.className ? '.' + el.className : '');
    out.push(name + ' right=' + Math.round(r.right));
  }
}
return out.slice(0, 8);
"""


def shot(browser: webdriver.Chrome, tmp_path: Path, name: str, *, width: int = 1280) -> Path:
    """A screenshot of the whole page at ``width`` CSS pixels (a phone when narrow), checked
    to be a real picture of that size."""
    mobile = width < 600
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": mobile},
    )
    try:
        height = browser.execute_script(
            "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"
        )
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth > document.documentElement.clientWidth"
        )
        if overflow:  # name the widest elements so the failure says what to fix
            culprits = browser.execute_script(WIDE_ELEMENTS, width)
            raise AssertionError(f"{name}: the page is wider than {width} px: {culprits}")
        shot_png = browser.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": width,
                    "height": min(int(height), 4000),
                    "scale": 1,
                },
            },
        )
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path = tmp_path / name
    path.write_bytes(base64.b64decode(shot_png["data"]))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    png_width, png_height = struct.unpack(">II", data[16:24])
    assert png_width == width and png_height >= 600 and len(data) > 20_000
    target = os.environ.get("BQGATE_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)
    return path


def labelled(sql: str, client: bigquery.Client, session: str) -> bigquery.QueryJob:
    return client.query(sql, job_config=bigquery.QueryJobConfig(labels={"session_id": session}))


def slack_message(stack: Stack, job_id: str) -> dict[str, Any] | None:
    messages = requests.get(stack.url("slack") + "/_test/messages", timeout=10).json()["messages"]
    mine = [m for m in messages if job_id in str(m["blocks"])]
    return mine[-1] if mine else None


def wait_for(what: str, pred: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_alice_approves_in_the_console_and_the_agent_gets_rows(
    stack: Stack, gateway_client: bigquery.Client, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    sign_in(browser, stack, "alice@example.com")
    session = "console-demo-" + uuid.uuid4().hex[:8]
    # The inbox is already open when the agent asks: the request appears without a reload.
    job = labelled(LEDGER_SQL, gateway_client, session)
    item = f"li.request[data-job-id='{job.job_id}']"
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        rows = pool.submit(lambda: list(job.result(timeout=240)))
        WebDriverWait(browser, 60, poll_frequency=0.5).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, item))
        )
        card = browser.find_element(By.CSS_SELECTOR, item)
        text = card.text
        assert AGENT in text and "ai-coding-agents" in text and session in text
        assert "demo-project.finance.ledger" in text and "restricted" in text
        assert "needs approval" in text and "0 of 1 required" in text and "left" in text
        assert card.find_elements(By.CSS_SELECTOR, "pre.sql .sql-k")  # highlighted SQL
        assert "1 new request" in browser.find_element(By.ID, "live-status").text
        # The Slack message exists before the decision, so it is updated in place.
        posted = wait_for("the Slack request", lambda: slack_message(stack, job.job_id))
        shot(browser, tmp_path, "console-inbox.png")
        shot(browser, tmp_path, "console-inbox-phone.png", width=412)
        assert not rows.done()
        browser.find_element(By.CSS_SELECTOR, f"{item} button.approve").click()
        WebDriverWait(browser, 30).until(
            ec.text_to_be_present_in_element(
                (By.CSS_SELECTOR, ".flash"), "Approved by alice@example.com"
            )
        )
        assert [r.entry_id for r in rows.result(timeout=180)] == [1, 2]
    updated = slack_message(stack, job.job_id)
    assert updated is not None
    assert updated["ts"] == posted["ts"] and updated["updates"] >= 1
    assert "Approved by alice@example.com in the bqgate console" in updated["text"]

    # History says who decided, where; its row leads to the session viewer.
    browser.find_element(By.LINK_TEXT, "History").click()
    row = WebDriverWait(browser, 20).until(
        ec.presence_of_element_located((By.ID, f"hist-{job.job_id}"))
    )
    assert "approved" in row.text and "alice@example.com" in row.text and "console" in row.text
    row.find_element(By.CSS_SELECTOR, "td[data-label='Session'] a").click()
    WebDriverWait(browser, 20).until(
        ec.text_to_be_present_in_element((By.ID, "chain-status"), "chain verified")
    )
    steps = browser.find_elements(By.CSS_SELECTOR, f"#job-{job.job_id} li.step")
    kinds = [s.get_attribute("data-kind") for s in steps]
    # slack_notify records "notified" once Slack has the request (the message was there
    # before the decision, so it comes before it).
    assert kinds == [
        "request",
        "classification",
        "approval_requested",
        "notified",
        "approval_decided",
        "execution_started",
        "execution_finished",
        "result",
    ], kinds
    result = browser.find_element(By.CSS_SELECTOR, f"#job-{job.job_id} table.result")
    assert [c.text for c in result.find_elements(By.CSS_SELECTOR, "th")] == ["entry_id", "amount"]
    assert len(result.find_elements(By.CSS_SELECTOR, "tbody tr")) == 2
    shot(browser, tmp_path, "console-session.png")
    export = browser.find_element(By.ID, "export").get_attribute("href")
    cookie = browser.get_cookie("bqgate-console")
    assert export and cookie is not None
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert browser.execute_script("return document.cookie") == ""  # not readable by scripts
    lines = requests.get(
        export, cookies={"bqgate-console": cookie["value"]}, timeout=10
    ).text.splitlines()
    assert len(lines) == len(kinds) == 8 and all(line.startswith("{") for line in lines)


def test_bob_denies_with_a_reason_and_the_agent_sees_it(
    stack: Stack, gateway_client: bigquery.Client, browser: webdriver.Chrome
) -> None:
    sign_in(browser, stack, "bob@example.com")
    job = labelled(TOTALS_SQL, gateway_client, "console-deny-" + uuid.uuid4().hex[:8])
    item = f"li.request[data-job-id='{job.job_id}']"
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        outcome = pool.submit(lambda: list(job.result(timeout=240)))
        WebDriverWait(browser, 60, poll_frequency=0.5).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, item))
        )
        reason = browser.find_element(By.CSS_SELECTOR, f"{item} textarea[name='reason']")
        label = browser.find_element(By.CSS_SELECTOR, f"label[for='{reason.get_attribute('id')}']")
        assert "Reason to deny" in label.text
        reason.send_keys("raw ledger totals need a ticket; use analytics.daily_revenue")
        browser.find_element(By.CSS_SELECTOR, f"{item} button.deny").click()
        WebDriverWait(browser, 30).until(
            ec.text_to_be_present_in_element(
                (By.CSS_SELECTOR, ".flash"), "Denied by bob@example.com"
            )
        )
        with pytest.raises(gexc.Forbidden) as refused:
            outcome.result(timeout=120)
    assert (
        "Denied by bob@example.com: raw ledger totals need a ticket; use analytics.daily_revenue"
        in str(refused.value)
    )


def test_a_decision_in_slack_greys_the_request_out_in_the_open_inbox(
    stack: Stack, gateway_client: bigquery.Client, browser: webdriver.Chrome
) -> None:
    sign_in(browser, stack, "alice@example.com")
    job = labelled(LEDGER_SQL, gateway_client, "console-slack-" + uuid.uuid4().hex[:8])
    item = f"li.request[data-job-id='{job.job_id}']"
    WebDriverWait(browser, 60, poll_frequency=0.5).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, item))
    )
    browser.find_element(By.CSS_SELECTOR, f"{item} textarea").send_keys("half-typed")
    posted = wait_for("the Slack request", lambda: slack_message(stack, job.job_id))
    clicked = requests.post(
        stack.url("slack") + "/_ui/click",
        headers={"Accept": "application/json"},
        timeout=30,
        data={
            "user": "U_BOB",
            "channel": posted["channel"],
            "ts": posted["ts"],
            "action_id": "bqgate_approve",
            "value": job.job_id,
        },
    ).json()
    assert clicked["response"]["text"] == "Approved by bob@example.com"
    WebDriverWait(browser, 30, poll_frequency=0.5).until(
        lambda d: "gone" in (d.find_element(By.CSS_SELECTOR, item).get_attribute("class") or "")
    )
    card = browser.find_element(By.CSS_SELECTOR, item)
    assert "No longer pending" in card.text
    assert not card.find_element(By.CSS_SELECTOR, "button.approve").is_enabled()
    assert card.find_element(By.CSS_SELECTOR, "textarea").get_attribute("value") == "half-typed"
    assert "no longer pending" in browser.find_element(By.ID, "live-status").text
    assert [r.entry_id for r in job.result(timeout=180)] == [1, 2]


def test_the_agent_identity_cannot_see_the_inbox(
    stack: Stack, gateway_client: bigquery.Client, browser: webdriver.Chrome
) -> None:
    job = labelled(LEDGER_SQL, gateway_client, "console-agent-" + uuid.uuid4().hex[:8])
    sign_in(browser, stack, AGENT)
    heading = browser.find_element(By.TAG_NAME, "h1").text
    assert heading == "You may not use the approver console"
    assert "not a member of an approver group (data-approvers)" in browser.page_source
    assert job.job_id not in browser.page_source
    assert not browser.find_elements(By.CSS_SELECTOR, "button.approve")
    cookie = browser.get_cookie("bqgate-console")
    assert cookie is not None
    page = requests.get(console_url(stack), cookies={"bqgate-console": cookie["value"]}, timeout=10)

    assert page.status_code == 403


class _Attacker(BaseHTTPRequestHandler):
    """Another site on this machine, whose page posts a form into the console."""

    target = ""

    def do_GET(self) -> None:
        page = (
            f"<!doctype html><title>win a prize</title><form method='post' "
            f"action='{self.target}'><input name='reason' value='x'></form>"
            "<script>document.forms[0].submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: object) -> None:
        return


def test_a_forged_cross_site_form_post_is_refused(
    stack: Stack, gateway_client: bigquery.Client, browser: webdriver.Chrome
) -> None:
    job = labelled(LEDGER_SQL, gateway_client, "console-csrf-" + uuid.uuid4().hex[:8])
    sign_in(browser, stack, "alice@example.com")
    WebDriverWait(browser, 60, poll_frequency=0.5).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, f"li.request[data-job-id='{job.job_id}']"))
    )
    handler = type(
        "Attacker", (_Attacker,), {"target": f"{console_url(stack)}requests/{job.job_id}/approve"}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        WebDriverWait(browser, 20).until(
            ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Form refused")
        )
        assert "the CSRF check failed" in browser.page_source
    finally:
        server.shutdown()
        server.server_close()
    listed = requests.get(
        stack.url("approvals") + "/v1/approvals",
        timeout=10,
        headers={"Authorization": "Bearer " + _token(stack, "bob@example.com")},
    ).json()
    assert job.job_id in [a["job_id"] for a in listed["approvals"]]  # still pending


def _token(stack: Stack, principal: str) -> str:
    from conftest import mint_token_for

    return mint_token_for(stack, principal)
