"""Warehouse metadata from BigQuery's REST API, with the executor's own credentials.

Only the executor builds this: it alone holds BigQuery rights. Resources come back as
BigQuery wrote them; :mod:`bqgate.service.catalog` shapes them before they leave.
"""

from __future__ import annotations

from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import bigquery

#: Most tables listed for one dataset (a bound on what one call reads).
MAX_TABLES = 10_000


class BigQueryCatalog:
    def __init__(self, client: bigquery.Client) -> None:
        self.client = client

    def _get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.client._connection.api_request(
                method="GET", path=path, query_params=params or {}
            )
        except (gexc.NotFound, gexc.BadRequest):
            return None
        return result

    def get_dataset(self, project: str, dataset: str) -> dict[str, Any] | None:
        return self._get(f"/projects/{project}/datasets/{dataset}")

    def list_tables(self, project: str, dataset: str) -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while len(items) < MAX_TABLES:
            params: dict[str, Any] = {"maxResults": 1000}
            if token:
                params["pageToken"] = token
            page = self._get(f"/projects/{project}/datasets/{dataset}/tables", params)
            if page is None:
                return items or None
            items.extend(page.get("tables") or [])
            token = page.get("nextPageToken")
            if not token:
                break
        return items[:MAX_TABLES]

    def get_table(self, project: str, dataset: str, table: str) -> dict[str, Any] | None:
        return self._get(f"/projects/{project}/datasets/{dataset}/tables/{table}")
