"""Each function through functions-framework's own test client, on the real emulators."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from bqgate.dev.stack import REPO_ROOT, Stack
from conftest import AGENT, mint_token_for
from functions_framework import create_app

pytestmark = pytest.mark.emulators

FUNCTIONS = REPO_ROOT / "functions"


def app(name: str, target: str, signature: str) -> Any:
    return create_app(target, str(FUNCTIONS / name / "main.py"), signature).test_client()


@pytest.fixture()
def ingress(stack: Stack) -> Any:
    return app("ingress", "ingress", "http")


def bq_error(resp: Any, code: int, reason: str) -> dict[str, Any]:
    assert resp.status_code == code, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["error"]["errors"][0]["reason"] == reason
    assert "Traceback" not in resp.get_data(as_text=True)
    error: dict[str, Any] = body["error"]
    return error


JOBS = "/bigquery/v2/projects/demo-project/jobs"


def test_ingress_errors_are_bigquery_shaped(stack: Stack, ingress: Any) -> None:
    auth = {"Authorization": f"Bearer {mint_token_for(stack, AGENT)}"}
    assert (
        "Invalid JSON"
        in bq_error(ingress.post(JOBS, data=b"{", headers=auth), 400, "invalid")["message"]
    )
    bq_error(ingress.get("/nope", headers=auth), 404, "notFound")
    bq_error(
        ingress.post(JOBS, json={"configuration": {"query": {"query": "SELECT 1"}}}),
        401,
        "unauthorized",
    )
    # SQL neither sqlglot nor BigQuery can parse gets BigQuery's own syntax error (the dry
    # run is the second opinion on what sqlglot cannot parse): a finished job, invalidQuery.
    resp = ingress.post(
        JOBS,
        headers=auth,
        json={"configuration": {"query": {"query": "SELEC 1 FRM", "useLegacySql": False}}},
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    status = resp.get_json()["status"]
    assert status["state"] == "DONE"
    assert status["errorResult"]["reason"] == "invalidQuery"
    assert status["errorResult"]["message"].startswith("Syntax error"), status
    assert "http" not in status["errorResult"]["message"]
    # Unparseable SQL that names what the dry run cannot show is blocked at once.
    err = bq_error(
        ingress.post(
            JOBS,
            headers=auth,
            json={
                "configuration": {
                    "query": {
                        "query": "SELEC `evil-project.ds.exfil`(1) FRM",
                        "useLegacySql": False,
                    }
                }
            },
        ),
        403,
        "accessDenied",
    )
    assert "Blocked by bqgate policy" in err["message"]
    assert "evil-project.ds" in err["message"]
    err = bq_error(
        ingress.post(
            JOBS,
            headers=auth,
            json={
                "configuration": {
                    "query": {
                        "query": "DELETE FROM `demo-project.analytics.events` WHERE 1=1",
                        "useLegacySql": False,
                    }
                }
            },
        ),
        403,
        "accessDenied",
    )
    assert "always true" in err["message"]


def test_ingress_accepts_an_allowed_job_and_hides_it_from_others(
    stack: Stack, ingress: Any
) -> None:
    auth = {"Authorization": f"Bearer {mint_token_for(stack, AGENT)}"}
    resp = ingress.post(
        JOBS,
        headers=auth,
        json={
            "jobReference": {"jobId": "fn-test-1"},
            "configuration": {"query": {"query": "SELECT 1 AS x", "useLegacySql": False}},
        },
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["jobReference"]["jobId"] == "fn-test-1"
    other = {
        "Authorization": f"Bearer {mint_token_for(stack, 'eve@example.com', ('ai-coding-agents',))}"
    }
    bq_error(ingress.get(JOBS + "/fn-test-1", headers=other), 404, "notFound")
    done = ingress.get(
        "/bigquery/v2/projects/demo-project/queries/fn-test-1?timeoutMs=10000", headers=auth
    ).get_json()
    assert done["jobComplete"] is True and done["rows"] == [{"f": [{"v": "1"}]}]


def _event(job_id: str | None, raw: bytes | None = None) -> dict[str, Any]:
    data = raw if raw is not None else json.dumps({"job_id": job_id}).encode()
    return {
        "message": {"data": base64.b64encode(data).decode(), "messageId": "m1"},
        "subscription": "projects/demo-project/subscriptions/execute-push",
    }


CE_HEADERS = {
    "ce-id": "1",
    "ce-specversion": "1.0",
    "ce-source": "//pubsub.googleapis.com/x",
    "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
}


def test_executor_function_acks_malformed_and_unknown_messages(stack: Stack) -> None:
    client = app("executor", "executor", "http")
    bodies: list[dict[str, Any]] = [
        _event(None, b"not json"),
        _event("no-such-job"),
        {"message": {}},
    ]
    for body in bodies:
        resp = client.post("/", json=body, headers=CE_HEADERS)
        assert resp.status_code == 200, resp.get_data(as_text=True)


def test_slack_notify_and_approvals_load(stack: Stack) -> None:
    health = app("approvals", "approvals", "http").get("/")
    assert health.status_code == 200, health.get_data(as_text=True)
    assert health.get_json() == {"status": "ok", "service": "bqgate-approvals"}
    # An approvals message for a job that does not exist is acknowledged (200), not retried.
    resp = app("slack_notify", "slack_notify", "cloudevent").post(
        "/", json=_event("no-such-job"), headers=CE_HEADERS
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)


def test_functions_are_thin(stack: Stack) -> None:
    for main in Path(FUNCTIONS).glob("*/main.py"):
        assert len(main.read_text().splitlines()) <= 80, f"{main} should stay a thin entry point"
