"""Client input gets a BigQuery-shaped 4xx, never a 5xx: each input the fuzzer found
answered with a 500, as a fixture, through the ingress and approvals cores."""

from __future__ import annotations

import json
from typing import Any

import pytest
from bqgate.classification import Classification
from bqgate.errors import InvalidQuery, InvalidRequest, TooLarge
from bqgate.identity import Principal
from bqgate.jobs import Job
from bqgate.service.approvals import route_api
from bqgate.service.gateway import Gateway, GatewayConfig
from bqgate.service.http import MAX_HEADER_BYTES, check_request_limits
from bqgate.service.ingress import IngressApp
from bqgate.wire import bigquery as wire
from fakes import MemoryJobStore, MemoryQueue, caller

AGENT = caller("agent@x", "ai-coding-agents")
AUTH = {"Authorization": "Bearer t"}
PROJECT = "/bigquery/v2/projects/demo-project"


class StaticVerifier:
    def verify(self, token: str) -> Principal:
        return AGENT


class StrictStore(MemoryJobStore):
    """Rejects what Firestore rejects, so a test fails where Firestore would have."""

    def _check(self, job_id: str) -> None:
        if job_id in (".", "..") or (job_id.startswith("__") and job_id.endswith("__")):
            raise ValueError(f"Firestore rejects the document id {job_id!r}")

    def create(self, job: Job, **kw: Any) -> None:
        self._check(job.job_id)
        json.dumps(job.to_doc()).encode("utf-8")  # a lone surrogate fails here, as in gRPC
        super().create(job, **kw)

    def get(self, job_id: str) -> Job | None:
        self._check(job_id)
        return super().get(job_id)


def classify(sql: str, **_: Any) -> Classification:
    sql.encode("utf-8")  # the classifier hashes the SQL as UTF-8
    return Classification("allow", reasons=("ok",))


def app() -> tuple[IngressApp, StrictStore]:
    store = StrictStore()
    gw = Gateway(
        store=store,
        queue=MemoryQueue(),
        classify=classify,
        config=GatewayConfig(max_wait_ms=0),
        sleep=lambda s: None,
    )
    return IngressApp(lambda: gw, StaticVerifier), store


def query_body(**fields: Any) -> bytes:
    return json.dumps({"query": "SELECT 1", "useLegacySql": False, **fields}).encode()


def assert_bq_error(resp: Any, code: int, needle: str) -> None:
    assert resp.status == code, resp.body
    err = resp.body["error"]
    assert err["code"] == code and err["errors"][0]["reason"] in ("invalid", "invalidQuery")
    assert needle in err["message"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested deeper"),
        (b'{"query": "SELECT \\ud800", "useLegacySql": false}', "lone UTF-16 surrogate"),
        (b'{"query": "SELECT 1", "useLegacySql": false, "timeoutMs": 1e999}', "timeoutMs"),
        (b'{"query": "SELECT 1", "useLegacySql": false, "maxResults": -5}', "negative"),
        (b'{"query": "SELECT 1", "useLegacySql": false, "maxResults": 1e30}', "maxResults"),
        (b'{"query": "SELECT 1", "useLegacySql": false, "maxResults": true}', "maxResults"),
        (
            b'{"query": "SELECT 1", "useLegacySql": false, "timeoutMs": "9' + b"9" * 30 + b'"}',
            "timeoutMs",
        ),
        (query_body(parameterMode=[[[]]]), "parameterMode"),
        (query_body(queryParameters=[{"parameterType": [[[]]]}]), "parameterType"),
        (
            query_body(
                queryParameters=[
                    {"parameterType": {"type": "INT64"}, "parameterValue": {"value": [[1]]}}
                ]
            ),
            "scalar",
        ),
        (
            query_body(
                queryParameters=[
                    {
                        "name": "1x",
                        "parameterType": {"type": "INT64"},
                        "parameterValue": {"value": "1"},
                    }
                ]
            ),
            "name",
        ),
        (
            query_body(
                queryParameters=[
                    {
                        "parameterType": {
                            "type": "STRUCT",
                            "structTypes": [{"name": "__x__", "type": {"type": "INT64"}}],
                        },
                        "parameterValue": {"structValues": {"__x__": {"value": "1"}}},
                    }
                ]
            ),
            "reserved",
        ),
        (query_body(labels={"__x__": "v"}), "bad label"),
        (query_body(labels={"": "v"}), "bad label"),
        (query_body(labels={"k": "UPPER"}), "bad label"),
        (query_body(location=[[[]]]), "location"),
        (query_body(dryRun=[[[]]]), "dryRun"),
        (query_body(requestId="__x__"), "reserved"),
        (query_body(requestId=".."), "requestId"),
        (query_body(defaultDataset={"datasetId": "a.b"}), "datasetId"),
        (
            json.dumps(
                {"query": "SELECT '" + "x" * (300 * 1024) + "'", "useLegacySql": False}
            ).encode(),
            "too large",
        ),
    ],
)
def test_hostile_query_bodies_get_400(body: bytes, needle: str) -> None:
    ingress, store = app()
    resp = ingress.handle("POST", f"{PROJECT}/queries", {}, AUTH, body)
    assert_bq_error(resp, 400, needle)
    assert store.docs == {}  # nothing was stored


def test_deep_parameter_types_are_refused_before_they_are_stored() -> None:
    ptype: dict[str, Any] = {"type": "INT64"}
    for _ in range(wire.MAX_PARAMETER_NESTING + 1):
        ptype = {"type": "ARRAY", "arrayType": ptype}
    ingress, store = app()
    body = query_body(queryParameters=[{"parameterType": ptype, "parameterValue": {}}])
    assert_bq_error(ingress.handle("POST", f"{PROJECT}/queries", {}, AUTH, body), 400, "nest")
    assert store.docs == {}


def test_a_good_parameter_is_stored_as_known_keys_only() -> None:
    params = [
        {
            "name": "xs",
            "parameterType": {
                "type": "ARRAY",
                "arrayType": {
                    "type": "STRUCT",
                    "structTypes": [{"name": "a", "type": {"type": "INT64"}}],
                },
            },
            "parameterValue": {"arrayValues": [{"structValues": {"a": {"value": 1}}}]},
            "junk": {"x": 1},
        }
    ]
    req = wire.parse_query(
        {
            "query": "SELECT 1",
            "useLegacySql": False,
            "queryParameters": params,
            "parameterMode": "named",
        }
    )
    assert req.parameter_mode == "NAMED"
    assert req.query_parameters == [
        {
            "name": "xs",
            "parameterType": {
                "type": "ARRAY",
                "arrayType": {
                    "type": "STRUCT",
                    "structTypes": [{"name": "a", "type": {"type": "INT64"}}],
                },
            },
            "parameterValue": {"arrayValues": [{"structValues": {"a": {"value": "1"}}}]},
        }
    ]


@pytest.mark.parametrize("job_id", [".", "..", "__x__", "__name__", "a.b", "x" * 1025])
@pytest.mark.parametrize("what", ["jobs", "queries", "cancel"])
def test_job_ids_firestore_or_bigquery_reject_are_invalid_on_every_route(
    job_id: str, what: str
) -> None:
    ingress, _ = app()
    path = {
        "jobs": f"{PROJECT}/jobs/{job_id}",
        "queries": f"{PROJECT}/queries/{job_id}",
        "cancel": f"{PROJECT}/jobs/{job_id}/cancel",
    }[what]
    method = "POST" if what == "cancel" else "GET"
    assert_bq_error(ingress.handle(method, path, {}, AUTH, b""), 400, "jobId")


@pytest.mark.parametrize("job_id", [".", "..", "__x__", "a.b"])
def test_job_ids_in_insert_bodies_are_checked_the_same_way(job_id: str) -> None:
    ingress, store = app()
    body = json.dumps(
        {
            "jobReference": {"jobId": job_id},
            "configuration": {"query": {"query": "SELECT 1", "useLegacySql": False}},
        }
    ).encode()
    assert_bq_error(ingress.handle("POST", f"{PROJECT}/jobs", {}, AUTH, body), 400, "jobId")
    assert store.docs == {}


@pytest.mark.parametrize("job_id", [".", "..", "__x__", "a.b"])
def test_approver_routes_check_job_ids(job_id: str) -> None:
    with pytest.raises(InvalidRequest, match="jobId"):
        route_api("POST", f"/v1/approvals/{job_id}:approve")


@pytest.mark.parametrize(
    "params",
    [
        {"timeoutMs": "1e999"},
        {"maxResults": "-1"},
        {"startIndex": "9" * 5000},
        {"maxResults": "inf"},
    ],
)
def test_results_parameters_are_range_checked(params: dict[str, str]) -> None:
    with pytest.raises(InvalidRequest):
        wire.parse_results_params(params)


def test_project_segment_is_checked() -> None:
    ingress, _ = app()
    resp = ingress.handle("GET", "/bigquery/v2/projects/__x__/jobs/j1", {}, AUTH, b"")
    assert_bq_error(resp, 400, "projectId")


def test_url_and_header_limits_answer_414_and_431() -> None:
    with pytest.raises(TooLarge) as url:
        check_request_limits(9000, {})
    assert url.value.http_status == 414
    with pytest.raises(TooLarge) as headers:
        check_request_limits(10, {"X-Big": "a" * MAX_HEADER_BYTES})
    assert headers.value.http_status == 431
    with pytest.raises(TooLarge):
        check_request_limits(10, [(f"X-{i}", "v") for i in range(101)])


def test_a_body_over_the_limit_is_413() -> None:
    with pytest.raises(TooLarge) as err:
        wire.parse_json_body(b" " * (wire.MAX_BODY_BYTES + 1))
    assert err.value.http_status == 413


def test_parameters_over_their_byte_limit_are_refused() -> None:
    params = [
        {"parameterType": {"type": "STRING"}, "parameterValue": {"value": "x" * 1000}}
        for _ in range(200)
    ]
    with pytest.raises(InvalidRequest, match="bytes of parameters"):
        wire.parse_query({"query": "SELECT ?", "useLegacySql": False, "queryParameters": params})


def test_query_text_limit_is_utf8_bytes() -> None:
    with pytest.raises(InvalidQuery, match="too large"):
        wire.parse_query({"query": "é" * (wire.MAX_QUERY_BYTES // 2 + 1), "useLegacySql": False})
    ok = wire.parse_query({"query": "SELECT 1 -- " + "x" * 1000, "useLegacySql": False})
    assert ok.sql.startswith("SELECT 1")


@pytest.mark.parametrize(
    "view",
    [
        {"callback_id": "bqgate_deny_reason", "private_metadata": [[[]]]},
        {"callback_id": "bqgate_deny_reason", "private_metadata": 7},
        {"callback_id": "bqgate_deny_reason", "private_metadata": "[" * 100_000},
        {"callback_id": "bqgate_deny_reason", "private_metadata": '{"job_id": ".."}'},
        {"callback_id": "bqgate_deny_reason", "private_metadata": '{"job_id": ["x"]}'},
    ],
)
def test_a_damaged_deny_form_gets_slack_s_form_error(view: dict[str, Any]) -> None:
    from bqgate.policy import load_policy
    from bqgate.service.approvals import ApprovalService

    service = ApprovalService(
        store=StrictStore(),
        queue=MemoryQueue(),
        policy=load_policy("policies/default.yaml"),
        notifier=lambda: None,  # type: ignore[arg-type, return-value]
        verifier=StaticVerifier,
        signing_secret="s",
        slack_channel="#c",
    )
    resp = service._view_submission({"type": "view_submission", "view": view})
    assert resp.status == 200 and resp.body["response_action"] == "errors"
