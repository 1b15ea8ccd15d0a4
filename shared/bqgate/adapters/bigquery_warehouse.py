"""The warehouse on BigQuery, run with the gateway's own service account.

Rows are read with ``jobs.getQueryResults`` in BigQuery's own REST shape (through the
client's authenticated connection) and turned into compact rows, so values reach the
masking layer exactly as BigQuery wrote them, with int64 timestamps.

Every API call has a deadline (``call_timeout_s`` per attempt, ``call_deadline_s`` with the
library's retries) and a job is waited for at most ``job_timeout_s`` (then cancelled), so
the executor always answers well within its function's timeout. Every error BigQuery
returns goes through :func:`bqgate.errors.from_warehouse` (``google_errors``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import bigquery
from google.cloud.bigquery.retry import DEFAULT_RETRY

from bqgate.adapters.google_errors import bigquery_calls, warehouse_error
from bqgate.errors import BqgateError, Unavailable, from_warehouse
from bqgate.ports import DryRun, QueryOutcome, RowsPart
from bqgate.wire import codec
from bqgate.wire.bigquery import rest_to_compact

WAIT_SLICE_MS = 10_000
#: How long table metadata (schema, size) is reused before it is read again, and how many
#: tables' metadata is kept (least recently used out).
TABLE_TTL_S = 60.0
MAX_TABLES = 512
#: Rows asked for with the wait call: a result this size needs no second call.
FIRST_PAGE_ROWS = 10_000
#: First pages kept for ``pages`` (a job whose rows are never read must not pin memory).
MAX_FIRST_PAGES = 64
#: Seconds per BigQuery API call attempt, and for one call with the client's retries.
CALL_TIMEOUT_S = 30.0
CALL_DEADLINE_S = 60.0
#: Longest wait for one BigQuery job (under the executor function's 540 s timeout).
JOB_TIMEOUT_S = 480.0


class BigQueryWarehouse:
    def __init__(
        self,
        client: bigquery.Client,
        *,
        project: str,
        location: str,
        job_timeout_s: float = JOB_TIMEOUT_S,
        first_page_rows: int = FIRST_PAGE_ROWS,
        call_timeout_s: float = CALL_TIMEOUT_S,
        call_deadline_s: float = CALL_DEADLINE_S,
    ) -> None:
        self.client = client
        self.project = project
        self.location = location
        self.job_timeout_s = job_timeout_s
        self.first_page_rows = first_page_rows
        self.call_timeout_s = call_timeout_s
        self.retry = DEFAULT_RETRY.with_deadline(call_deadline_s)
        # The wait call's answer carries the first page of rows: ``pages`` starts from it
        # instead of asking BigQuery for the same rows again.
        self._first_pages: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._tables: OrderedDict[str, tuple[float, bigquery.Table]] = OrderedDict()
        self._lock = threading.Lock()

    def _api(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        # The client's own authenticated connection (same credentials, endpoint), with the
        # bounded retry and a deadline per attempt.
        call = self.retry(self.client._connection.api_request)
        raw = call(
            method=method,
            path=path,
            timeout=timeout or self.call_timeout_s,
            expect_json=False,
            **kwargs,
        )
        return _json_object(raw)

    def _query_config(
        self,
        sql: str,
        default_dataset: Mapping[str, str] | None,
        query_parameters: Sequence[Mapping[str, Any]],
        maximum_bytes_billed: int | None,
        labels: Mapping[str, str],
        dry_run: bool = False,
        priority: str | None = None,
    ) -> bigquery.QueryJobConfig:
        query: dict[str, Any] = {"useLegacySql": False}
        if priority:
            query["priority"] = priority
        if default_dataset:
            query["defaultDataset"] = dict(default_dataset)
        if maximum_bytes_billed:
            query["maximumBytesBilled"] = str(maximum_bytes_billed)
        if query_parameters:
            query["queryParameters"] = [dict(p) for p in query_parameters]
            named = any(p.get("name") for p in query_parameters)
            query["parameterMode"] = "NAMED" if named else "POSITIONAL"
        resource: dict[str, Any] = {"query": query}
        if labels:
            resource["labels"] = dict(labels)
        if dry_run:
            resource["dryRun"] = True
        config = bigquery.QueryJobConfig.from_api_repr(resource)
        assert isinstance(config, bigquery.QueryJobConfig)
        return config

    def dry_run(
        self,
        sql: str,
        *,
        default_dataset: Mapping[str, str] | None,
        query_parameters: Sequence[Mapping[str, Any]] = (),
    ) -> int:
        info = self.dry_run_info(
            sql, default_dataset=default_dataset, query_parameters=query_parameters
        )
        return info.total_bytes_processed

    def dry_run_info(
        self,
        sql: str,
        *,
        default_dataset: Mapping[str, str] | None,
        query_parameters: Sequence[Mapping[str, Any]] = (),
    ) -> DryRun:
        config = self._query_config(sql, default_dataset, query_parameters, None, {}, dry_run=True)
        with bigquery_calls():
            job = self.client.query(
                sql,
                job_config=config,
                location=self.location,
                retry=self.retry,
                timeout=self.call_timeout_s,
                job_retry=None,
            )
        stats = (job._properties.get("statistics") or {}).get("query") or {}
        refs = stats.get("referencedTables")
        tables = (
            tuple(
                f"{r.get('projectId')}.{r.get('datasetId')}.{r.get('tableId')}"
                for r in refs
                if isinstance(r, dict)
            )
            if isinstance(refs, list)
            else ()
        )
        schema = tuple((stats.get("schema") or {}).get("fields") or ())
        return DryRun(
            total_bytes_processed=int(job.total_bytes_processed or 0),
            statement_type=stats.get("statementType"),
            referenced_tables=tables,
            schema=schema,
        )

    def run(
        self,
        job_id: str,
        sql: str,
        *,
        default_dataset: Mapping[str, str] | None,
        labels: Mapping[str, str],
        maximum_bytes_billed: int | None,
        query_parameters: Sequence[Mapping[str, Any]] = (),
        priority: str | None = None,
    ) -> QueryOutcome:
        config = self._query_config(
            sql,
            default_dataset,
            query_parameters,
            maximum_bytes_billed,
            labels,
            priority=priority,
        )
        with bigquery_calls():
            try:
                job = self.client.query(
                    sql,
                    job_config=config,
                    job_id=job_id,
                    location=self.location,
                    job_retry=None,
                    retry=self.retry,
                    timeout=self.call_timeout_s,
                )
            except gexc.Conflict:
                # Redelivery or retry: the statement already runs (or ran) under this id.
                found = self.client.get_job(
                    job_id, location=self.location, retry=self.retry, timeout=self.call_timeout_s
                )
                if not isinstance(found, bigquery.QueryJob):
                    raise BqgateError(f"job {job_id} exists and is not a query job") from None
                job = found
            except (gexc.BadRequest, gexc.Forbidden, gexc.NotFound) as exc:
                return QueryOutcome([], 0, None, None, None, error=warehouse_error(exc))
            resp = self._wait(job, job_id)
            if isinstance(resp, QueryOutcome):
                return resp
            statement_type = None
            if resp.get("errors") or "schema" not in resp:
                # Only then is the job resource needed (errors, or a statement without rows).
                job.reload(retry=self.retry, timeout=self.call_timeout_s)
                statement_type = getattr(job, "statement_type", None)
        if job.error_result:
            # A finished job: its reason is clamped (a retryable one cannot be retried under
            # the same job id, so it is not transient either).
            err = from_warehouse(job.error_result.get("reason"), job.error_result.get("message"))
            return QueryOutcome([], 0, None, None, None, error=err)
        schema = (resp.get("schema") or {}).get("fields") or []
        dml = resp.get("numDmlAffectedRows")
        with self._lock:
            self._first_pages[job.job_id] = resp
            while len(self._first_pages) > MAX_FIRST_PAGES:
                self._first_pages.popitem(last=False)
        return QueryOutcome(
            schema=schema,
            total_rows=int(resp.get("totalRows") or 0),
            statement_type=statement_type,
            num_dml_affected_rows=int(dml) if dml is not None else None,
            total_bytes_processed=int(
                resp.get("totalBytesProcessed") or job.total_bytes_processed or 0
            ),
        )

    def _wait(self, job: bigquery.QueryJob, job_id: str) -> dict[str, Any] | QueryOutcome:
        """Wait for the job (``getQueryResults`` in slices); cancel it past the deadline."""
        deadline = time.monotonic() + self.job_timeout_s
        path = f"/projects/{job.project}/queries/{job.job_id}"
        while True:
            slice_ms = int(max(1.0, min(WAIT_SLICE_MS / 1000, deadline - time.monotonic())) * 1000)
            try:
                # No retry here: a failed job answers with its own error, which is final.
                resp = _json_object(
                    self.client._connection.api_request(
                        method="GET",
                        path=path,
                        timeout=slice_ms / 1000 + self.call_timeout_s,
                        query_params={
                            "maxResults": self.first_page_rows,
                            "timeoutMs": slice_ms,
                            "location": self.location,
                            "formatOptions.useInt64Timestamp": True,
                        },
                        expect_json=False,
                    )
                )
            except gexc.GoogleAPICallError as exc:
                # Did the job fail (final), or did the call (a retry may help)?
                job.reload(retry=self.retry, timeout=self.call_timeout_s)
                if job.state == "DONE" and job.error_result:
                    err = from_warehouse(
                        job.error_result.get("reason"), job.error_result.get("message")
                    )
                    return QueryOutcome([], 0, None, None, None, error=err)
                if isinstance(exc, (gexc.BadRequest, gexc.Forbidden, gexc.NotFound)):
                    return QueryOutcome([], 0, None, None, None, error=warehouse_error(exc))
                raise
            if resp.get("jobComplete"):
                return resp
            if time.monotonic() > deadline:
                with contextlib.suppress(Exception):  # best effort: the job ends either way
                    self.client.cancel_job(
                        job_id,
                        location=self.location,
                        retry=self.retry,
                        timeout=self.call_timeout_s,
                    )
                err = from_warehouse(
                    "timeout",
                    f"The query did not finish within {self.job_timeout_s:.0f} s and was cancelled",
                )
                return QueryOutcome([], 0, None, None, None, error=err)

    def pages(
        self, job_id: str, *, page_size: int, max_rows: int | None
    ) -> Iterator[list[list[Any]]]:
        path = f"/projects/{self.project}/queries/{job_id}"
        token: str | None = None
        seen = 0
        with self._lock:
            first = self._first_pages.pop(job_id, None)
        if first is not None and first.get("rows"):
            schema = (first.get("schema") or {}).get("fields") or []
            rest = first["rows"] if max_rows is None else first["rows"][:max_rows]
            rows = rest_to_compact(rest, schema)
            for i in range(0, len(rows), page_size):
                yield RowsPart(rows[i : i + page_size], rest=rest[i : i + page_size])
            seen = len(rows)
            token = first.get("pageToken")
            if not token or (max_rows is not None and seen >= max_rows):
                return
        while True:
            want = page_size if max_rows is None else min(page_size, max_rows - seen)
            if want <= 0:
                return
            params: dict[str, Any] = {
                "maxResults": want,
                "location": self.location,
                "formatOptions.useInt64Timestamp": True,
            }
            if token:
                params["pageToken"] = token
            with bigquery_calls():
                resp = self._api("GET", path, query_params=params)
            schema = (resp.get("schema") or {}).get("fields") or []
            rest = resp.get("rows") or []
            rows = rest_to_compact(rest, schema)
            if rows:
                seen += len(rows)
                yield RowsPart(rows, rest=rest)
            token = resp.get("pageToken")
            if not token or not rows:
                return

    def _table(self, table_fqn: str) -> bigquery.Table:
        """The table's metadata, from a bounded cache (``TABLE_TTL_S``, ``MAX_TABLES``)."""
        now = time.monotonic()
        with self._lock:
            hit = self._tables.get(table_fqn)
            if hit is not None and now - hit[0] < TABLE_TTL_S:
                self._tables.move_to_end(table_fqn)
                return hit[1]
        try:
            with bigquery_calls():
                table = self.client.get_table(
                    table_fqn, retry=self.retry, timeout=self.call_timeout_s
                )
        except ValueError:
            raise KeyError(table_fqn) from None
        except BqgateError as err:
            if err.transient:
                raise
            raise KeyError(table_fqn) from None  # unknown, or not ours to read
        with self._lock:
            self._tables[table_fqn] = (now, table)
            self._tables.move_to_end(table_fqn)
            while len(self._tables) > MAX_TABLES:
                self._tables.popitem(last=False)
        return table

    def table_schema(self, table_fqn: str) -> list[dict[str, Any]]:
        return [f.to_api_repr() for f in self._table(table_fqn).schema]

    def table_size(self, table_fqn: str) -> int | None:
        try:
            table = self._table(table_fqn)
        except KeyError:
            return None
        if table.table_type != "TABLE" or table.num_bytes is None:
            return None
        return int(table.num_bytes)


def _json_object(raw: bytes | str) -> dict[str, Any]:
    """A BigQuery answer's body, parsed with the fast codec (results are its bulk)."""
    if not raw:
        return {}
    try:
        body = codec.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise Unavailable("BigQuery answered with something other than a JSON object")
    return body
