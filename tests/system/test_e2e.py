"""End to end through the same local stack as ``nox -s dev``, with the unmodified
google-cloud-bigquery client pointed at the gateway."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
import requests
from bqgate.dev.stack import Stack
from conftest import AGENT, mint_token_for
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

pytestmark = pytest.mark.system

EVENTS = "`demo-project.analytics.events`"


def direct(stack: Stack) -> bigquery.Client:
    """Straight to the BigQuery emulator (what the executor sees), for comparisons."""
    return bigquery.Client(
        project="demo-project",
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=stack.url("bigquery")),
    )


def test_query_result_pages_through_every_row(
    stack: Stack, gateway_client: bigquery.Client
) -> None:
    job = gateway_client.query(f"SELECT event_id, name, ts FROM {EVENTS} ORDER BY event_id")
    rows = job.result(page_size=1200, timeout=60)
    assert rows.total_rows == 5000
    pages = list(rows.pages)
    assert len(pages) >= 5
    ids = [r.event_id for page in pages for r in page]
    assert ids == list(range(1, 5001))
    expected = list(
        direct(stack)
        .query(f"SELECT event_id, name, ts FROM {EVENTS} ORDER BY event_id LIMIT 3")
        .result()
    )
    got = list(
        gateway_client.query(
            f"SELECT event_id, name, ts FROM {EVENTS} ORDER BY event_id LIMIT 3"
        ).result(timeout=60)
    )
    assert [tuple(r.values()) for r in got] == [tuple(r.values()) for r in expected]


def test_query_and_wait_with_page_size_and_max_results(gateway_client: bigquery.Client) -> None:
    rows = gateway_client.query_and_wait(
        f"SELECT event_id FROM {EVENTS} WHERE event_id <= 2500 ORDER BY event_id",
        page_size=1000,
        wait_timeout=60,
    )
    assert rows.total_rows == 2500
    assert [r.event_id for r in rows] == list(range(1, 2501))
    limited = gateway_client.query_and_wait(
        f"SELECT event_id FROM {EVENTS} ORDER BY event_id",
        page_size=300,
        max_results=700,
        wait_timeout=60,
    )
    assert [r.event_id for r in limited] == list(range(1, 701))


def test_aggregate_types_survive_the_round_trip(gateway_client: bigquery.Client) -> None:
    row = next(
        iter(
            gateway_client.query_and_wait(
                "SELECT COUNT(*) AS n, SUM(revenue) AS total, MIN(day) AS first_day "
                "FROM `demo-project.analytics.daily_revenue`",
                wait_timeout=60,
            )
        )
    )
    assert row.n == 365
    assert str(row.first_day) == "2025-01-01"
    assert row.total > 0


def test_blocked_statement_is_forbidden_with_the_reason(gateway_client: bigquery.Client) -> None:
    with pytest.raises(gexc.Forbidden) as err:
        gateway_client.query(f"DROP TABLE {EVENTS}").result(timeout=30)
    assert "Blocked by bqgate policy" in str(err.value)
    with pytest.raises(gexc.Forbidden):
        gateway_client.query_and_wait("SELECT * FROM `other-project.x.y`", wait_timeout=30)


def test_invalid_sql_is_a_clear_error(gateway_client: bigquery.Client) -> None:
    with pytest.raises((gexc.BadRequest, gexc.Forbidden)) as err:
        gateway_client.query_and_wait("SELEC name FRM events", wait_timeout=30)
    assert "Traceback" not in str(err.value)


def _raw(
    stack: Stack, method: str, path: str, token: str | None, body: bytes | None = None
) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(
        method, stack.url("gateway") + path, headers=headers, data=body, timeout=30
    )


def _assert_bq_error(resp: requests.Response, code: int, reason: str, needle: str) -> None:
    assert resp.status_code == code, resp.text
    err = resp.json()["error"]
    assert err["code"] == code and err["errors"][0]["reason"] == reason
    assert needle in err["message"]
    assert "Traceback" not in resp.text


def test_bad_requests_get_bigquery_shaped_errors(stack: Stack) -> None:
    token = mint_token_for(stack, AGENT)
    jobs = "/bigquery/v2/projects/demo-project/jobs"
    _assert_bq_error(_raw(stack, "POST", jobs, token, b"{not json"), 400, "invalid", "Invalid JSON")
    _assert_bq_error(_raw(stack, "GET", "/no/such/path", token), 404, "notFound", "Not found")
    _assert_bq_error(
        _raw(stack, "GET", "/bigquery/v2/projects/demo-project/models", token),
        400,
        "notImplemented",
        "is not offered by the bqgate gateway",
    )
    body = json.dumps(
        {"configuration": {"query": {"query": "SELECT 1", "useLegacySql": False}}}
    ).encode()
    _assert_bq_error(_raw(stack, "POST", jobs, None, body), 401, "unauthorized", "bearer")
    bad = _raw(stack, "POST", jobs, token[:-8] + "AAAAAAAA", body)
    assert bad.status_code == 401 and token[:-8] not in bad.text


def test_another_principal_cannot_read_the_job(
    stack: Stack, gateway_client: bigquery.Client
) -> None:
    job = gateway_client.query("SELECT 1 AS x")
    job.result(timeout=60)
    other = mint_token_for(stack, "someone-else@example.com", ("ai-coding-agents",))
    resp = _raw(stack, "GET", f"/bigquery/v2/projects/demo-project/queries/{job.job_id}", other)
    _assert_bq_error(resp, 404, "notFound", job.job_id)
    resp = _raw(stack, "GET", f"/bigquery/v2/projects/demo-project/jobs/{job.job_id}", other)
    assert resp.status_code == 404


def _execute_event(job_id: str) -> tuple[dict[str, str], bytes]:
    data = base64.b64encode(json.dumps({"job_id": job_id}).encode()).decode()
    headers = {
        "ce-id": uuid.uuid4().hex,
        "ce-specversion": "1.0",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "ce-source": "//pubsub.googleapis.com/projects/demo-project/topics/execute",
        "Content-Type": "application/json",
    }
    return headers, json.dumps(
        {
            "message": {"data": data, "messageId": uuid.uuid4().hex},
            "subscription": "projects/demo-project/subscriptions/execute-push",
        }
    ).encode()


def test_redelivered_execute_message_runs_the_statement_once(
    stack: Stack, gateway_client: bigquery.Client
) -> None:
    marker = f"redelivery-{uuid.uuid4().hex[:8]}"
    table = f"demo-project.analytics.scratch_{marker.replace('-', '_')}"
    direct(stack).create_table(
        bigquery.Table(table, schema=[bigquery.SchemaField("name", "STRING")])
    )
    job = gateway_client.query(f"INSERT INTO `{table}` (name) VALUES ('{marker}')")
    job.result(timeout=60)
    # Pub/Sub delivers at least once: hand the same message to the executor again, twice.
    for _ in range(2):
        headers, body = _execute_event(job.job_id)
        resp = requests.post(stack.url("executor") + "/", headers=headers, data=body, timeout=60)
        assert resp.status_code < 300, resp.text
    count = next(iter(direct(stack).query(f"SELECT COUNT(*) AS n FROM `{table}`").result())).n
    assert count == 1
