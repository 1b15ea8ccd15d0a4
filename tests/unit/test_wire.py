from __future__ import annotations

import pytest
from bqgate.errors import InvalidQuery, InvalidRequest
from bqgate.jobs import DONE, Job
from bqgate.wire import bigquery as wire

NESTED = [
    {"name": "id", "type": "INTEGER"},
    {"name": "tags", "type": "STRING", "mode": "REPEATED"},
    {
        "name": "addr",
        "type": "RECORD",
        "fields": [
            {"name": "city", "type": "STRING"},
            {"name": "zips", "type": "STRING", "mode": "REPEATED"},
        ],
    },
    {"name": "ts", "type": "TIMESTAMP"},
]


def test_rows_round_trip_nested() -> None:
    rows = [["1", ["a", "b"], ["Paris", ["75001"]], "1704067200000000"], [None, [], None, None]]
    rest = wire.rows_to_rest(rows, NESTED)
    assert rest[0]["f"][2]["v"] == {"f": [{"v": "Paris"}, {"v": [{"v": "75001"}]}]}
    assert wire.rest_to_compact(rest, NESTED) == rows


def test_timestamps_as_float_seconds_unless_int64_requested() -> None:
    rows = [["1", [], None, "1704067200500000"]]
    assert (
        wire.rows_to_rest(rows, NESTED, int64_timestamps=True)[0]["f"][3]["v"] == "1704067200500000"
    )
    assert (
        float(wire.rows_to_rest(rows, NESTED, int64_timestamps=False)[0]["f"][3]["v"])
        == 1704067200.5
    )


@pytest.mark.parametrize("body", [b"{", b"[1,2]", b"\xff\xfe", b'"text"'])
def test_malformed_bodies_are_invalid_requests(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as err:
        wire.parse_json_body(body)
    assert "Invalid JSON payload" in err.value.message


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "only query jobs"),
        ({"configuration": {"load": {}}}, "load jobs are not supported"),
        ({"configuration": {"query": {"query": ""}}}, "a query is required"),
        (
            {
                "configuration": {
                    "query": {"query": "SELECT 1", "destinationTable": {"tableId": "t"}}
                }
            },
            "destinationTable",
        ),
        (
            {
                "jobReference": {"jobId": "bad id!"},
                "configuration": {"query": {"query": "SELECT 1"}},
            },
            "jobReference.jobId",
        ),
        (
            {
                "configuration": {
                    "query": {"query": "SELECT 1", "defaultDataset": {"projectId": "p"}}
                }
            },
            "defaultDataset.datasetId",
        ),
        (
            {"configuration": {"labels": {"Bad Key": "v"}, "query": {"query": "SELECT 1"}}},
            "bad label",
        ),
    ],
)
def test_insert_body_errors_name_the_field(body: dict, needle: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        wire.parse_insert(body)
    assert needle in err.value.message


def test_legacy_sql_is_refused() -> None:
    with pytest.raises(InvalidQuery):
        wire.parse_insert({"configuration": {"query": {"query": "SELECT 1", "useLegacySql": True}}})
    # The client default (field absent) is standard SQL.
    assert wire.parse_query({"query": "SELECT 1"}).sql == "SELECT 1"


@pytest.mark.parametrize("token", ["garbage", "Zm9vOjE", wire.encode_page_token(5)[:-2] + "!!"])
def test_foreign_page_tokens_are_rejected(token: str) -> None:
    with pytest.raises(InvalidRequest):
        wire.decode_page_token(token)


def test_job_resource_has_no_destination_table_and_reports_errors() -> None:
    job = Job.new(job_id="j", project="p", location="US", sql="SELECT 1", owner="a@x", now_ms=5)
    job.state = DONE
    job.error = {"reason": "accessDenied", "message": "Blocked by bqgate policy: DDL"}
    res = wire.job_resource(job)
    assert "destinationTable" not in res["configuration"]["query"]
    assert res["status"] == {"state": "DONE", "errorResult": job.error, "errors": [job.error]}
    assert res["jobReference"] == {"projectId": "p", "jobId": "j", "location": "US"}


def test_query_results_total_rows_is_a_string() -> None:
    job = Job.new(job_id="j", project="p", location="US", sql="SELECT 1", owner="a@x", now_ms=5)
    job.state, job.schema, job.total_rows = DONE, [{"name": "a", "type": "INTEGER"}], 3
    body = wire.query_results(job, rows=[], next_offset=2)
    assert body["totalRows"] == "3" and body["jobComplete"] is True
    assert wire.decode_page_token(body["pageToken"]) == 2
