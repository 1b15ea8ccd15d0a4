"""Small results answered inline on the direct-call path, over fakes.

The executor's answer carries the masked rows of a small result; the ingress answers the
agent from them without a store round trip; the pages, the job and its session events are
written in the commit that ends the job, so every later read finds them. Masking is the
same whichever way the rows travel.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from bqgate import outbox
from bqgate.classification import Classification
from bqgate.errors import Unavailable
from bqgate.jobs import DONE, Job
from bqgate.policy import load_policy
from bqgate.ports import RowsPart
from bqgate.service.dispatch import ExecutorAnswer
from bqgate.service.executor import Executor, ExecutorConfig
from bqgate.service.gateway import Gateway, GatewayConfig, inline_page
from bqgate.wire import codec
from bqgate.wire.bigquery import rest_rows, rows_to_rest
from bqgate.wire.codec import RawJson
from fakes import CUSTOMERS, Events, FakeWarehouse, MemoryJobStore, MemoryQueue, caller

POLICY = load_policy("policies/default.yaml")
AGENT = caller("agent@demo-project.iam.gserviceaccount.com", subject="agent", expires_at=10**10)
SQL = "SELECT customer_id, email, ssn FROM `demo-project.sales.customers`"
MASKED_SSN_7 = "XXX-XX-0007"


def verdict(sql: str, **_: Any) -> Classification:
    return Classification(
        "allow",
        reasons=("allowed by the test",),
        tables=("demo-project.sales.customers",),
        statements=("SELECT",),
        statement_hash="h",
    )


def stack(
    rows: int = 20, inline_bytes: int = 1024 * 1024, page_bytes: int = 512 * 1024
) -> tuple[Gateway, Executor, MemoryJobStore, Events, list[ExecutorAnswer]]:
    """A gateway whose direct call reaches the executor as the HTTP answer would (the
    answer goes through its JSON form)."""
    store, queue, events = MemoryJobStore(), MemoryQueue(), Events()
    wh = FakeWarehouse(
        CUSTOMERS,
        [[str(i), f"user{i}@example.com", f"123-45-{i:04d}"] for i in range(rows)],
        schemas={"demo-project.sales.customers": CUSTOMERS},
    )
    ex = Executor(
        store=store,
        warehouse=wh,
        policy=POLICY,
        hmac_key=b"k",
        queue=queue,
        recorder=events,
        config=ExecutorConfig(
            page_bytes=page_bytes, fetch_rows=7, inline_result_bytes=inline_bytes
        ),
    )
    answers: list[ExecutorAnswer] = []

    def direct(job_id: str) -> ExecutorAnswer | None:
        sent = ex.execute(job_id, direct=True)
        answer = ExecutorAnswer.from_json(sent.to_json())
        assert answer is not None
        answers.append(answer)
        return answer

    gw = Gateway(
        store=store,
        queue=queue,
        classify=verdict,
        config=GatewayConfig(max_wait_ms=0),
        recorder=events,
        dispatch=direct,
        sleep=lambda s: None,
        new_id=lambda: "job1",
    )
    return gw, ex, store, events, answers


def query(gw: Gateway, **extra: Any) -> dict[str, Any]:
    return gw.query(AGENT, "demo-project", {"query": SQL, "useLegacySql": False, **extra})


def stored_rows(store: MemoryJobStore, job_id: str) -> list[list[Any]]:
    done = store.get(job_id)
    assert done is not None
    return [
        r for i in range(len(done.page_starts)) for r in json.loads(store.pages[(job_id, i)][1])
    ]


def cells(body: Mapping[str, Any]) -> list[list[Any]]:
    return [[c["v"] for c in row["f"]] for row in body["rows"]]


def all_rows(gw: Gateway, body: Mapping[str, Any]) -> list[list[Any]]:
    """Every row of the answer, following its page tokens."""
    rows = cells(body)
    while "pageToken" in body:
        token = body["pageToken"]
        body = gw.get_query_results(AGENT, "demo-project", "job1", {"pageToken": token})
        rows += cells(body)
    return rows


def test_a_small_result_is_answered_from_the_executors_answer() -> None:
    gw, _, store, events, answers = stack()
    body = query(gw)
    assert body["jobComplete"] is True and body["totalRows"] == "20"
    rows = cells(body)
    assert [r[0] for r in rows] == [str(i) for i in range(20)]
    assert all(r[1].startswith("XXXXX@") for r in rows)  # masked: email
    assert rows[7][2] == MASKED_SSN_7  # masked: last4
    (answer,) = answers
    assert answer.job is not None and answer.job.state == DONE and answer.rows == rows
    assert answer.outbox_done
    # No store round trip after the create: no job read, no page read, no page write of its
    # own (the pages went with the commit that ended the job).
    assert (store.reads, store.page_reads, store.page_puts) == (1, 0, 0)  # the executor's read
    # Later reads of this finished job need none either.
    again = gw.get_query_results(AGENT, "demo-project", "job1", {})
    assert cells(again) == rows and (store.reads, store.page_reads) == (1, 0)
    # The record holds the request, the decision, the execution and the masked rows.
    assert events.kinds("job1") == [
        "request",
        "classification",
        "execution_started",
        "execution_finished",
        "result",
    ]
    result = events.events[-1][2]
    assert result["rows"] == rows and result["total_rows"] == 20


def test_the_pages_of_an_inline_result_serve_any_later_reader() -> None:
    gw, _, store, _, _ = stack(rows=40, page_bytes=300)
    first = query(gw)
    # Another ingress instance (no answer in memory) reads the pages written with DONE.
    other = Gateway(
        store=store,
        queue=MemoryQueue(),
        classify=verdict,
        config=GatewayConfig(max_wait_ms=0),
        sleep=lambda s: None,
    )
    done = store.get("job1")
    assert done is not None and len(done.page_starts) > 1 and store.page_puts == 0
    assert stored_rows(store, "job1") == cells(first)
    paged: list[list[Any]] = []
    token: str | None = None
    while True:
        params = {"maxResults": "15", **({"pageToken": token} if token else {})}
        page = other.get_query_results(AGENT, "demo-project", "job1", params)
        paged.extend(cells(page))
        token = page.get("pageToken")
        if not token:
            break
    assert paged == cells(first)


def test_the_first_page_is_sized_to_the_clients_max_results() -> None:
    gw, _, _, _, _ = stack(rows=20)
    body = query(gw, maxResults=5)
    assert [r[0] for r in cells(body)] == ["0", "1", "2", "3", "4"] and "pageToken" in body
    rest = gw.get_query_results(AGENT, "demo-project", "job1", {"pageToken": body["pageToken"]})
    assert [r[0] for r in cells(rest)] == [str(i) for i in range(5, 20)]
    assert "pageToken" not in rest


def test_a_result_over_the_limit_streams_into_pages_and_is_not_in_the_answer() -> None:
    gw, _, store, events, answers = stack(rows=40, inline_bytes=400, page_bytes=300)
    body = query(gw)
    (answer,) = answers
    assert answer.rows is None and answer.job is not None and answer.job.done
    assert store.page_puts == len(answer.job.page_starts) > 1  # written as they streamed
    assert "pageToken" in body  # one stored page per call, as before
    assert [r[0] for r in all_rows(gw, body)] == [str(i) for i in range(40)]
    assert events.kinds("job1")[-2:] == ["execution_finished", "result"]


@pytest.mark.parametrize("inline_bytes", [0, 1024 * 1024])
def test_masking_is_the_same_whether_rows_go_inline_or_through_pages(inline_bytes: int) -> None:
    gw, _, store, _, _ = stack(rows=30, inline_bytes=inline_bytes, page_bytes=250)
    body = query(gw)
    reference, _, ref_store, _, _ = stack(rows=30, inline_bytes=0, page_bytes=250)
    expected = query(reference)
    assert all_rows(gw, body) == all_rows(reference, expected)
    assert stored_rows(store, "job1") == stored_rows(ref_store, "job1")
    seen = json.dumps(all_rows(gw, body))
    assert "user" not in seen and "123-45" not in seen  # never a raw value


def test_the_done_state_and_its_session_events_are_one_write() -> None:
    _, ex, store, events, _ = stack()
    store.create(
        Job.new(
            job_id="j3",
            project="demo-project",
            location="US",
            sql=SQL,
            owner=AGENT.email,
            classification=verdict(SQL),
            now_ms=1,
        )
    )
    events.fail_on = {"execution_finished"}  # the result cannot be recorded ...
    with pytest.raises(Unavailable):
        ex.run("j3")  # (a transient failure: the delivery is retried)
    stuck = store.get("j3")
    # ... so the job did not end either: no agent can read rows the record lacks.
    assert stuck is not None and stuck.state == "RUNNING" and not stuck.page_starts
    assert events.kinds("j3") == ["execution_started"] and not store.pages
    events.fail_on = set()
    assert ex.run("j3") == "done"  # the redelivery ends it, with its record
    assert events.kinds("j3") == [
        "execution_started",
        "execution_started",
        "execution_finished",
        "result",
    ]


def test_a_create_reads_nothing_first_and_a_retry_finds_its_job() -> None:
    gw, _, store, events, answers = stack()
    body = {"query": SQL, "useLegacySql": False, "requestId": "req-1"}
    first = gw.query(AGENT, "demo-project", body)
    reads = store.reads
    assert store.creates == 1
    again = gw.query(AGENT, "demo-project", body)  # the client's retry of the same request
    assert cells(again) == cells(first) and store.creates == 2  # tried, found the duplicate
    assert store.reads == reads + 1  # read only to answer the retry
    assert events.kinds("req-1").count("request") == 1  # the duplicate recorded nothing
    assert len(answers) == 1  # and ran nothing


def test_the_executor_finishes_the_direct_calls_hand_off_in_its_commit() -> None:
    gw, _, store, _, _ = stack()
    query(gw)
    rec = store.outbox[outbox.record_id("job1", outbox.ACCEPTED)]
    assert rec["due_ms"] is None and rec["done_ms"] is not None


def test_a_paged_result_cuts_its_first_page_where_the_clients_first_answer_ends() -> None:
    gw, _, store, _, _ = stack(rows=40, inline_bytes=0, page_bytes=10_000)
    body = query(gw, maxResults=6)
    done = store.get("job1")
    assert done is not None and done.page_starts[:2] == [0, 6]  # then pages by size
    assert [r[0] for r in cells(body)] == [str(i) for i in range(6)]
    reads = store.page_reads
    assert reads == 1  # the first answer read exactly one page
    assert [r[0] for r in all_rows(gw, body)] == [str(i) for i in range(40)]


class RestWarehouse(FakeWarehouse):
    """Hands over each part with BigQuery's own form of its rows too, as the BigQuery
    adapter does (``RowsPart``)."""

    def pages(self, job_id: str, *, page_size: int, max_rows: int | None) -> Any:
        for part in super().pages(job_id, page_size=page_size, max_rows=max_rows):
            yield RowsPart(part, rest=rows_to_rest(part, self.schema))


def rest_stack(rows: int = 20) -> tuple[Gateway, list[ExecutorAnswer], RestWarehouse]:
    gw, ex, _, _, answers = stack(rows=rows)
    old = ex.warehouse
    assert isinstance(old, FakeWarehouse)
    wh = RestWarehouse(old.schema, old.rows, schemas=old.schemas)
    ex.warehouse = wh
    return gw, answers, wh


def test_the_answer_carries_the_executors_text_and_the_ingress_sends_it_as_is() -> None:
    gw, answers, _ = rest_stack(rows=20)
    body = gw.query(
        AGENT,
        "demo-project",
        {"query": SQL, "useLegacySql": False, "formatOptions": {"useInt64Timestamp": True}},
        raw=True,
    )
    (answer,) = answers
    assert isinstance(body["rows"], RawJson)
    assert [text for _, _, text in answer.rest] == [body["rows"].text]  # not re-encoded
    sent = json.loads(codec.dumps(body))
    assert cells(sent) == answer.rows and len(cells(sent)) == 20
    # Whatever the answer's form, the agent sees the same rows and never a raw value.
    plain = gw.get_query_results(AGENT, "demo-project", "job1", {})
    assert cells(plain) == cells(sent)
    text = body["rows"].text.decode()
    assert "user" not in text and "123-45" not in text


def test_rows_the_masks_change_are_never_served_in_bigquerys_form() -> None:
    """Only a row that came through the masks unchanged is BigQuery's own: here every row
    has a masked column, so every row is built from its masked values."""
    gw, answers, _ = rest_stack(rows=12)
    query(gw)
    (answer,) = answers
    raw = b"".join(text for _, _, text in answer.rest)
    assert b"@example.com" in raw and b"user" not in raw and b"123-45-" not in raw
    schema = [{"name": "n", "type": "STRING"}, {"name": "e", "type": "STRING"}]
    got = RowsPart(
        [["1", "a@x.io"], ["2", "b"]], rest=rows_to_rest([["1", "a@x.io"], ["2", "b"]], schema)
    )
    out = rest_rows([["1", "XXXXX@x.io"], ["2", "b"]], got, schema)
    assert got.rest is not None and out[1] is got.rest[1]  # unchanged: BigQuery's own row
    assert out[0] == {"f": [{"v": "1"}, {"v": "XXXXX@x.io"}]} and out[0] is not got.rest[0]


def test_pages_the_client_asks_for_are_whole_pieces_and_any_other_slice_is_cut() -> None:
    gw, answers, _ = rest_stack(rows=20)
    fmt = {"formatOptions.useInt64Timestamp": "true"}
    first = gw.query(
        AGENT,
        "demo-project",
        {
            "query": SQL,
            "useLegacySql": False,
            "maxResults": 6,
            "formatOptions": {"useInt64Timestamp": True},
        },
        raw=True,
    )
    (answer,) = answers
    assert [(s, n) for s, n, _ in answer.rest] == [(0, 6), (6, 6), (12, 6), (18, 2)]
    assert isinstance(first["rows"], RawJson)
    nxt = gw.get_query_results(
        AGENT,
        "demo-project",
        "job1",
        {**fmt, "pageToken": first["pageToken"], "maxResults": "6"},
        raw=True,
    )
    assert isinstance(nxt["rows"], RawJson) and nxt["rows"].text == answer.rest[1][2]
    odd = gw.get_query_results(
        AGENT, "demo-project", "job1", {**fmt, "startIndex": "4", "maxResults": "5"}, raw=True
    )
    assert isinstance(odd["rows"], list)  # not whole pieces: cut from the parsed pieces
    assert [r[0] for r in cells(odd)] == ["4", "5", "6", "7", "8"]


def test_timestamps_in_the_older_float_form_are_converted_not_sent_as_is() -> None:
    schema = [{"name": "at", "type": "TIMESTAMP"}]
    chunks = ((0, 1, codec.dumps_bytes(rows_to_rest([["1700000000000000"]], schema))),)
    assert isinstance(inline_page(chunks, 0, 1, schema, raw=True), RawJson)
    old = inline_page(chunks, 0, 1, schema, int64_timestamps=False, raw=True)
    assert old == [{"f": [{"v": "1700000000.0"}]}]


def test_an_answer_cut_short_is_no_answer() -> None:
    text = ExecutorAnswer("done", rest=((0, 1, b'[{"f":[{"v":"1"}]}]'),)).to_json()
    assert ExecutorAnswer.from_json(text) is not None
    assert ExecutorAnswer.from_json(text[:-3]) is None
    assert ExecutorAnswer.from_json(text.split(b"\n")[0]) is None
