"""Metadata through the executor: the only component with BigQuery rights reads it.

The executor answers ``POST /bqgate/catalog`` (:data:`CATALOG_PATH`) from the ingress
with one operation (``datasets.get``, ``tables.list``, ``tables.get``) on a dataset the
policy names; any other name is ``notFound`` without asking BigQuery. Resources leave the
executor already shaped (:mod:`bqgate.catalog`): allowlisted fields, masked columns
described. The ingress keeps answers in a bounded cache (:class:`CachedCatalog`) and
decides per caller what is visible (:mod:`bqgate.service.metadata`).

>>> from bqgate.policy import load_policy
>>> class Empty:
...     def get_dataset(self, p, d): return None
...     def list_tables(self, p, d): return None
...     def get_table(self, p, d, t): return None
>>> app = CatalogApp(lambda: CatalogService(Empty(), load_policy("policies/default.yaml")))
>>> app.handle(b'{"op": "tables.get", "projectId": "demo-project", "datasetId": "secret",'
...            b' "tableId": "t"}').status
404
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from bqgate import catalog as shapes
from bqgate.errors import InvalidRequest, NotFound
from bqgate.policy import Policy
from bqgate.ports import Catalog
from bqgate.service.http import Response, answered

CATALOG_PATH = "/bqgate/catalog"
OPERATIONS = ("datasets.get", "tables.list", "tables.get")


class CatalogService:
    """Executor side: reads metadata of policy datasets and shapes it."""

    def __init__(self, catalog: Catalog, policy: Policy) -> None:
        self.catalog = catalog
        self.policy = policy

    def answer(self, request: Mapping[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        project, dataset = request.get("projectId"), request.get("datasetId")
        if op not in OPERATIONS or not isinstance(project, str) or not isinstance(dataset, str):
            raise InvalidRequest("catalog request: op, projectId and datasetId are required")
        if self.policy.tier_of(project, dataset) is None:
            # Deny by default: a dataset the policy does not name is never even looked up.
            raise NotFound(f"Not found: Dataset {project}:{dataset}")
        if op == "datasets.get":
            found = self.catalog.get_dataset(project, dataset)
            if found is None:
                raise NotFound(f"Not found: Dataset {project}:{dataset}")
            return {"resource": shapes.shape_dataset(found)}
        if op == "tables.list":
            items = self.catalog.list_tables(project, dataset)
            if items is None:
                raise NotFound(f"Not found: Dataset {project}:{dataset}")
            return {"resources": [shapes.shape_table_item(t) for t in items]}
        table = request.get("tableId")
        if not isinstance(table, str) or not table:
            raise InvalidRequest("catalog request: tableId is required")
        found = self.catalog.get_table(project, dataset, table)
        if found is None:
            raise NotFound(f"Not found: Table {project}:{dataset}.{table}")
        return {"resource": shapes.shape_table(found, self.policy)}


class CatalogApp:
    """The executor's catalog endpoint: JSON in, JSON out, BigQuery-shaped errors."""

    def __init__(self, service: Callable[[], CatalogService]) -> None:
        self._service = service

    def handle(self, body: bytes, *, method: str = "POST", path: str = CATALOG_PATH) -> Response:
        from bqgate.wire.bigquery import parse_json_body

        return answered(
            "executor",
            method,
            path,
            lambda: Response(200, self._service().answer(parse_json_body(body))),
        )


def catalog_request(
    op: str, project: str, dataset: str, table: str | None = None
) -> dict[str, str]:
    """The body the ingress sends for one catalog operation."""
    body = {"op": op, "projectId": project, "datasetId": dataset}
    if table is not None:
        body["tableId"] = table
    return body


class CatalogClient:
    """Ingress side: a :class:`~bqgate.ports.Catalog` of shaped resources over a
    ``call(request) -> answer`` transport (the executor endpoint), raising NotFound."""

    def __init__(self, call: Callable[[dict[str, str]], dict[str, Any]]) -> None:
        self.call = call

    def get_dataset(self, project: str, dataset: str) -> dict[str, Any] | None:
        return self._one(catalog_request("datasets.get", project, dataset))

    def list_tables(self, project: str, dataset: str) -> list[dict[str, Any]] | None:
        try:
            found: list[dict[str, Any]] = self.call(
                catalog_request("tables.list", project, dataset)
            )["resources"]
        except NotFound:
            return None
        return found

    def get_table(self, project: str, dataset: str, table: str) -> dict[str, Any] | None:
        return self._one(catalog_request("tables.get", project, dataset, table))

    def _one(self, request: dict[str, str]) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.call(request)["resource"]
        except NotFound:
            return None
        return found


class CachedCatalog:
    """A :class:`~bqgate.ports.Catalog` remembered for ``ttl_s`` seconds, at most
    ``max_entries`` answers (least recently used go first). Misses are cached too, so a
    caller probing names cannot make every request reach BigQuery.

    >>> calls = []
    >>> class Inner:
    ...     def get_dataset(self, p, d): calls.append(d); return {"d": d}
    >>> now = [0.0]
    >>> c = CachedCatalog(Inner(), ttl_s=10, max_entries=2, clock=lambda: now[0])
    >>> c.get_dataset("p", "a"), c.get_dataset("p", "a"), calls
    ({'d': 'a'}, {'d': 'a'}, ['a'])
    >>> now[0] = 11.0; _ = c.get_dataset("p", "a"); calls
    ['a', 'a']
    >>> _ = c.get_dataset("p", "b"); _ = c.get_dataset("p", "c"); len(c._entries)
    2
    """

    def __init__(
        self,
        inner: Any,
        *,
        ttl_s: float = 60.0,
        max_entries: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[tuple[str, ...], tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def _cached(self, key: tuple[str, ...], load: Callable[[], Any]) -> Any:
        now = self.clock()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and now - hit[0] < self.ttl_s:
                self._entries.move_to_end(key)
                return json.loads(hit[1]) if hit[1] is not None else None
        value = load()
        with self._lock:
            # Stored as JSON text: callers get their own copy to change.
            self._entries[key] = (now, None if value is None else json.dumps(value))
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def get_dataset(self, project: str, dataset: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self._cached(
            ("d", project, dataset), lambda: self.inner.get_dataset(project, dataset)
        )
        return found

    def list_tables(self, project: str, dataset: str) -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] | None = self._cached(
            ("l", project, dataset), lambda: self.inner.list_tables(project, dataset)
        )
        return found

    def get_table(self, project: str, dataset: str, table: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self._cached(
            ("t", project, dataset, table), lambda: self.inner.get_table(project, dataset, table)
        )
        return found


__all__ = ["CATALOG_PATH", "CachedCatalog", "CatalogApp", "CatalogClient", "CatalogService"]
