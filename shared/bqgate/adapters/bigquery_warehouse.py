"""The warehouse on BigQuery, run with the gateway's own service account.

Rows are read with ``jobs.getQueryResults`` in BigQuery's own REST shape (through the
client's authenticated connection) and turned into compact rows, so values reach the
masking layer exactly as BigQuery wrote them, with int64 timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import bigquery

from bqgate.errors import RETRYABLE_REASONS, BqgateError, InvalidQuery, NotFound
from bqgate.ports import DryRun, QueryOutcome
from bqgate.wire.bigquery import rest_to_compact

WAIT_SLICE_MS = 10_000
#: How long table metadata (schema, size) is reused before it is read again.
TABLE_TTL_S = 60.0


def _error_of(exc: gexc.GoogleAPICallError) -> dict[str, str]:
    errors = getattr(exc, "errors", None) or []
    reason = (
        errors[0].get("reason") if errors and isinstance(errors[0], dict) else None
    ) or "invalidQuery"
    message = getattr(exc, "message", None) or str(exc)
    return {"reason": reason, "message": message}


class BigQueryWarehouse:
    def __init__(
        self,
        client: bigquery.Client,
        *,
        project: str,
        location: str,
        job_timeout_s: float = 3600.0,
        first_page_rows: int = 5_000,
    ) -> None:
        self.client = client
        self.project = project
        self.location = location
        self.job_timeout_s = job_timeout_s
        self.first_page_rows = first_page_rows
        # The wait call's answer carries the first page of rows: ``pages`` starts from it
        # instead of asking BigQuery for the same rows again.
        self._first_pages: dict[str, dict[str, Any]] = {}
        self._tables: dict[str, tuple[float, bigquery.Table]] = {}

    def _api(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        # The client's own authenticated connection (same credentials, endpoint, retries).
        result: dict[str, Any] = self.client._connection.api_request(
            method=method, path=path, **kwargs
        )
        return result

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
        try:
            job = self.client.query(sql, job_config=config, location=self.location)
        except gexc.BadRequest as exc:
            raise InvalidQuery(_error_of(exc)["message"]) from None
        except gexc.NotFound as exc:
            raise NotFound(_error_of(exc)["message"]) from None
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
        try:
            job = self.client.query(
                sql, job_config=config, job_id=job_id, location=self.location, job_retry=None
            )
        except gexc.Conflict:
            # Redelivery or retry: the statement already runs (or ran) under this id.
            found = self.client.get_job(job_id, location=self.location)
            if not isinstance(found, bigquery.QueryJob):
                raise BqgateError(f"job {job_id} exists and is not a query job") from None
            job = found
        except (gexc.BadRequest, gexc.Forbidden, gexc.NotFound) as exc:
            return QueryOutcome([], 0, None, None, None, error=_error_of(exc))
        deadline = time.monotonic() + self.job_timeout_s
        path = f"/projects/{job.project}/queries/{job.job_id}"
        while True:
            try:
                resp = self._api(
                    "GET",
                    path,
                    query_params={
                        "maxResults": self.first_page_rows,
                        "timeoutMs": WAIT_SLICE_MS,
                        "location": self.location,
                        "formatOptions.useInt64Timestamp": True,
                    },
                )
            except (gexc.BadRequest, gexc.Forbidden, gexc.NotFound) as exc:
                return QueryOutcome([], 0, None, None, None, error=_error_of(exc))
            if resp.get("jobComplete"):
                break
            if time.monotonic() > deadline:
                raise BqgateError(f"BigQuery job {job_id} did not finish in {self.job_timeout_s}s")
        statement_type = None
        if resp.get("errors") or "schema" not in resp:
            # Only then is the job resource needed (errors, or a statement without rows).
            job.reload()
            statement_type = getattr(job, "statement_type", None)
        if job.error_result:
            reason = job.error_result.get("reason", "invalidQuery")
            if reason in RETRYABLE_REASONS:
                raise RuntimeError(f"BigQuery job {job_id} failed transiently: {job.error_result}")
            return QueryOutcome(
                [],
                0,
                None,
                None,
                None,
                error={"reason": reason, "message": job.error_result.get("message", "")},
            )
        schema = (resp.get("schema") or {}).get("fields") or []
        dml = resp.get("numDmlAffectedRows")
        self._first_pages[job.job_id] = resp
        return QueryOutcome(
            schema=schema,
            total_rows=int(resp.get("totalRows") or 0),
            statement_type=statement_type,
            num_dml_affected_rows=int(dml) if dml is not None else None,
            total_bytes_processed=int(
                resp.get("totalBytesProcessed") or job.total_bytes_processed or 0
            ),
        )

    def pages(
        self, job_id: str, *, page_size: int, max_rows: int | None
    ) -> Iterator[list[list[Any]]]:
        path = f"/projects/{self.project}/queries/{job_id}"
        token: str | None = None
        seen = 0
        first = self._first_pages.pop(job_id, None)
        if first is not None and first.get("rows"):
            schema = (first.get("schema") or {}).get("fields") or []
            rows = rest_to_compact(first["rows"], schema)
            if max_rows is not None:
                rows = rows[:max_rows]
            for i in range(0, len(rows), page_size):
                yield rows[i : i + page_size]
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
            resp = self._api("GET", path, query_params=params)
            schema = (resp.get("schema") or {}).get("fields") or []
            rows = rest_to_compact(resp.get("rows") or [], schema)
            if rows:
                seen += len(rows)
                yield rows
            token = resp.get("pageToken")
            if not token or not rows:
                return

    def _table(self, table_fqn: str) -> bigquery.Table:
        now = time.monotonic()
        hit = self._tables.get(table_fqn)
        if hit is not None and now - hit[0] < TABLE_TTL_S:
            return hit[1]
        try:
            table = self.client.get_table(table_fqn)
        except (gexc.NotFound, gexc.BadRequest, ValueError):
            raise KeyError(table_fqn) from None
        self._tables[table_fqn] = (now, table)
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
