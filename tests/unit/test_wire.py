from __future__ import annotations

from typing import Any

import pytest
from bqgate.classification import Classification
from bqgate.errors import AccessDenied, InvalidQuery, InvalidRequest
from bqgate.jobs import DONE, Job
from bqgate.ports import RowsPart
from bqgate.wire import bigquery as wire

NESTED: list[dict[str, Any]] = [
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
    rows: list[list[Any]] = [
        ["1", ["a", "b"], ["Paris", ["75001"]], "1704067200000000"],
        [None, [], None, None],
    ]
    rest = wire.rows_to_rest(rows, NESTED)
    assert rest[0]["f"][2]["v"] == {"f": [{"v": "Paris"}, {"v": [{"v": "75001"}]}]}
    assert wire.rest_to_compact(rest, NESTED) == rows


def test_timestamps_as_float_seconds_unless_int64_requested() -> None:
    rows: list[list[Any]] = [["1", [], None, "1704067200500000"]]
    assert (
        wire.rows_to_rest(rows, NESTED, int64_timestamps=True)[0]["f"][3]["v"] == "1704067200500000"
    )
    assert (
        float(wire.rows_to_rest(rows, NESTED, int64_timestamps=False)[0]["f"][3]["v"])
        == 1704067200.5
    )


def _q(**query: object) -> dict[str, object]:
    return {"configuration": {"query": {"query": "SELECT 1", "useLegacySql": False, **query}}}


@pytest.mark.parametrize("body", [b"{", b"[1,2]", b"\xff\xfe", b'"text"'])
def test_malformed_bodies_are_invalid_requests(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as err:
        wire.parse_json_body(body)
    assert "Invalid JSON payload" in err.value.message


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "only query jobs"),
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
                "configuration": {"query": {"query": "SELECT 1", "useLegacySql": False}},
            },
            "jobReference.jobId",
        ),
        (
            {
                "configuration": {
                    "query": {
                        "query": "SELECT 1",
                        "useLegacySql": False,
                        "defaultDataset": {"projectId": "p"},
                    }
                }
            },
            "defaultDataset.datasetId",
        ),
        (
            _q() | {"configuration": {"labels": {"Bad Key": "v"}, **_q()["configuration"]}},  # type: ignore[dict-item]
            "bad label",
        ),
    ],
)
def test_insert_body_errors_name_the_field(body: dict[str, Any], needle: str) -> None:

    with pytest.raises(InvalidRequest) as err:
        wire.parse_insert(body)
    assert needle in err.value.message


def test_legacy_sql_is_refused_and_absent_runs_as_googlesql_only_when_it_reads_the_same() -> None:
    with pytest.raises(InvalidQuery, match="useLegacySql is true"):
        wire.parse_insert({"configuration": {"query": {"query": "SELECT 1", "useLegacySql": True}}})
    # BigQuery reads a request without useLegacySql (bq's default) as legacy SQL. The gateway
    # runs it as GoogleSQL when it means the same in both dialects ...
    assert wire.parse_query({"query": "SELECT 1"}).sql == "SELECT 1"
    sql = "SELECT event, COUNT(*) AS n FROM analytics.events GROUP BY event ORDER BY n, event"
    assert wire.parse_insert({"configuration": {"query": {"query": sql}}}).sql == sql
    # ... and refuses, saying what to do, when it may not.
    for legacy, why in [
        ("SELECT * FROM [demo-project:sales.customers]", "it is not GoogleSQL"),
        ("SELECT a FROM analytics.events, analytics.sessions", "a comma between tables"),
        (
            "SELECT * FROM TABLE_DATE_RANGE(d.t_, TIMESTAMP('2026-01-01'), CURRENT_TIMESTAMP())",
            "TABLE_DATE_RANGE is a legacy SQL function",
        ),
        ("SELECT x FROM t GROUP EACH BY x", "it is not GoogleSQL"),
    ]:
        with pytest.raises(InvalidQuery, match=r"useLegacySql is not set.*--nouse_legacy_sql") as e:
            wire.parse_query({"query": legacy})
        assert why in e.value.message
    with pytest.raises(InvalidQuery, match="#legacySQL"):
        wire.parse_query({"query": "#legacySQL\nSELECT 1"})
    assert wire.parse_query({"query": "#standardSQL\nSELECT 1"}).sql.endswith("SELECT 1")
    assert wire.parse_query({"query": "SELECT 1", "useLegacySql": False}).sql == "SELECT 1"
    with pytest.raises(InvalidQuery, match="specifies use_legacy_sql:true"):
        wire.parse_query({"query": "#legacySQL\nSELECT 1", "useLegacySql": False})


def test_client_options_are_parsed_or_refused_clearly() -> None:
    req = wire.parse_insert(
        _q(maximumBytesBilled="1", priority="batch", writeDisposition="WRITE_TRUNCATE")
    )
    assert (req.maximum_bytes_billed, req.priority, req.write_disposition) == (
        1,
        "BATCH",
        "WRITE_TRUNCATE",
    )
    with pytest.raises(InvalidRequest, match="priority"):
        wire.parse_insert(_q(priority="URGENT"))
    with pytest.raises(InvalidRequest, match=r"createSession.*sessions are not offered"):
        wire.parse_insert(_q(createSession=True))
    with pytest.raises(InvalidRequest, match="createSession"):
        wire.parse_query({"query": "SELECT 1", "useLegacySql": False, "createSession": True})
    with pytest.raises(InvalidRequest, match="maximumBytesBilled"):
        wire.parse_query({"query": "SELECT 1", "useLegacySql": False, "maximumBytesBilled": "x"})


@pytest.mark.parametrize("kind", ["load", "copy", "extract"])
def test_load_copy_extract_jobs_are_refused_with_a_403_that_says_why(kind: str) -> None:
    with pytest.raises(AccessDenied) as err:
        wire.parse_insert({"configuration": {kind: {}}})
    assert err.value.http_status == 403
    assert err.value.message.startswith(f"{kind} jobs are refused by bqgate: ")
    assert "past masking" in err.value.message or "policy" in err.value.message


def test_job_resource_always_has_a_statement_type_and_echoes_options() -> None:
    job = Job.new(
        job_id="j",
        project="p",
        location="US",
        sql="SELECT 1",
        owner="a@x",
        now_ms=5,
        classification=Classification(statements=("SELECT",)),
        maximum_bytes_billed=7,
        priority="BATCH",
    )
    res = wire.job_resource(job)  # still PENDING: bq reads statementType off every job
    assert res["statistics"]["query"]["statementType"] == "SELECT"
    assert res["configuration"]["query"]["maximumBytesBilled"] == "7"
    assert res["configuration"]["query"]["priority"] == "BATCH"
    job.classification = Classification(statements=("TRUNCATE",))
    assert wire.job_resource(job)["statistics"]["query"]["statementType"] == "TRUNCATE_TABLE"
    job.statement_type = "CREATE_TABLE_AS_SELECT"  # the warehouse's word wins
    assert wire.statement_type(job) == "CREATE_TABLE_AS_SELECT"


def test_jobs_query_answers_carry_a_query_id() -> None:
    job = Job.new(job_id="j9", project="p", location="US", sql="SELECT 1", owner="a", now_ms=5)
    body = wire.query_results(job, rows=None, next_offset=None, query_response=True)
    assert (body["kind"], body["queryId"]) == ("bigquery#queryResponse", "j9")
    assert "queryId" not in wire.query_results(job, rows=None, next_offset=None)


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


def test_a_flat_rest_row_is_exactly_the_rest_form_of_its_compact_row() -> None:
    """Why an unmasked row may be answered in BigQuery's own form: for a flat schema the
    compact row holds every value of the REST row, and building it again gives it back."""
    schema = [
        {"name": "s", "type": "STRING"},
        {"name": "i", "type": "INTEGER"},
        {"name": "t", "type": "TIMESTAMP"},
        {"name": "b", "type": "BYTES"},
    ]
    rest: list[dict[str, Any]] = [
        {"f": [{"v": "x"}, {"v": "1"}, {"v": "1700000000000000"}, {"v": "AAE="}]},
        {"f": [{"v": None}, {"v": None}, {"v": None}, {"v": None}]},
        {"f": [{"v": 'q"uote\n'}, {"v": "-9"}, {"v": "0"}, {"v": ""}]},
    ]
    compact = wire.rest_to_compact(rest, schema)
    assert wire.rows_to_rest(compact, schema) == rest
    got = RowsPart(compact, rest=rest)
    assert all(a is b for a, b in zip(wire.rest_rows(compact, got, schema), rest, strict=True))
    nested = [*schema, {"name": "r", "type": "STRING", "mode": "REPEATED"}]
    deep: list[dict[str, Any]] = [{"f": [*row["f"], {"v": [{"v": "a"}]}]} for row in rest]
    flat = wire.rest_to_compact(deep, nested)
    again = wire.rest_rows(flat, RowsPart(flat, rest=deep), nested)
    assert again == deep and not any(a is b for a, b in zip(again, deep, strict=True))  # built
