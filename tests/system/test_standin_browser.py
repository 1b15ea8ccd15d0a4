"""A person's view: headless Chromium clicks Approve on the Slack stand-in's page, and the
agent's waiting query returns its rows."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any

import pytest
from bqgate.dev.stack import Stack
from google.cloud import bigquery
from helpers import headless_chromium
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

pytestmark = pytest.mark.system

LEDGER_SQL = "SELECT entry_id FROM `demo-project.finance.ledger` ORDER BY entry_id LIMIT 2"


@pytest.fixture()
def browser() -> Iterator[webdriver.Chrome]:
    with headless_chromium() as driver:
        yield driver


def test_approve_click_in_the_browser_completes_the_agents_job(
    stack: Stack, gateway_client: bigquery.Client, browser: webdriver.Chrome
) -> None:
    job = gateway_client.query(LEDGER_SQL)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        rows = pool.submit(lambda: list(job.result(timeout=180)))
        approve = f"button[data-action-id='bqgate_approve'][data-value='{job.job_id}']"

        def button_shown(driver: Any) -> Any:
            driver.get(stack.url("slack") + "/")
            found = driver.find_elements(By.CSS_SELECTOR, approve)
            return found[0] if found else False

        WebDriverWait(browser, 90, poll_frequency=0.5).until(button_shown)
        # Pick who you are, as a person would, then click.
        Select(browser.find_element(By.ID, "user")).select_by_value("U_ALICE")
        WebDriverWait(browser, 30).until(ec.element_to_be_clickable((By.CSS_SELECTOR, approve)))
        assert not rows.done()
        browser.find_element(By.CSS_SELECTOR, approve).click()
        WebDriverWait(browser, 30).until(
            ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "Approved by alice@example.com")
        )
        assert [r.entry_id for r in rows.result(timeout=120)] == [1, 2]
    assert "Only visible to you" in browser.page_source
    assert not browser.find_elements(By.CSS_SELECTOR, approve)  # the buttons are gone
