"""Metadata through the policy, the executor's catalog endpoint and its cache, the row APIs'
statement building and routing, over fakes."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from bqgate.classification import Classification
from bqgate.errors import AccessDenied, InvalidRequest, NotFound
from bqgate.jobs import DONE, Job
from bqgate.policy import load_policy
from bqgate.service.catalog import CachedCatalog, CatalogApp, CatalogClient, CatalogService
from bqgate.service.ingress import route
from bqgate.service.metadata import MetadataApi
from bqgate.service.tables import insert_statement, row_literals
from bqgate.wire import bigquery as wire
from fakes import MemoryJobStore, caller

POLICY = load_policy("policies/default.yaml")
AGENT = caller("agent@demo-project.iam.gserviceaccount.com", subject="agent")
STRANGER = caller("stranger@example.com", subject="s")
CUSTOMERS_RAW = {
    "kind": "bigquery#table",
    "tableReference": {"projectId": "demo-project", "datasetId": "sales", "tableId": "customers"},
    "schema": {
        "fields": [
            {"name": "customer_id", "type": "INTEGER"},
            {"name": "ssn", "type": "STRING", "description": "social security number"},
            {"name": "addr", "type": "RECORD", "fields": [{"name": "city", "type": "STRING"}]},
        ]
    },
    "numRows": "1000",
    "type": "TABLE",
    "access": [{"role": "OWNER", "userByEmail": "admin@example.com"}],
    "selfLink": "https://bigquery.googleapis.com/...",
}


class FakeCatalog:
    """The warehouse's raw metadata, counting every look-up."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def get_dataset(self, project: str, dataset: str) -> dict[str, Any] | None:
        self.calls.append(("d", project, dataset))
        if dataset not in ("analytics", "sales", "finance", "secret"):
            return None
        return {
            "datasetReference": {"projectId": project, "datasetId": dataset},
            "location": "US",
            "access": [{"role": "OWNER", "userByEmail": "admin@example.com"}],
        }

    def list_tables(self, project: str, dataset: str) -> list[dict[str, Any]] | None:
        self.calls.append(("l", project, dataset))
        return [{"tableReference": CUSTOMERS_RAW["tableReference"], "type": "TABLE"}]

    def get_table(self, project: str, dataset: str, table: str) -> dict[str, Any] | None:
        self.calls.append(("t", project, dataset, table))
        return dict(CUSTOMERS_RAW) if table == "customers" else None


def api() -> tuple[MetadataApi, FakeCatalog, MemoryJobStore]:
    raw = FakeCatalog()
    service = CatalogService(raw, POLICY)
    client = CatalogClient(lambda req: service.answer(req))
    store = MemoryJobStore()
    return MetadataApi(catalog=client, policy=POLICY, jobs=store), raw, store


def test_the_executor_never_looks_up_a_dataset_the_policy_does_not_name() -> None:
    raw = FakeCatalog()
    service = CatalogService(raw, POLICY)
    with pytest.raises(NotFound, match="Not found: Dataset demo-project:secret"):
        service.answer({"op": "datasets.get", "projectId": "demo-project", "datasetId": "secret"})
    assert raw.calls == []
    resp = CatalogApp(lambda: service).handle(b'{"op": "drop", "projectId": "p", "datasetId": "d"}')
    assert resp.status == 400 and resp.body["error"]["errors"][0]["reason"] == "invalid"


def test_resources_leave_the_executor_allowlisted_with_masked_columns_described() -> None:
    metadata, _, _ = api()
    table = metadata.get_table(AGENT, "demo-project", "sales", "customers")
    assert "access" not in table and "selfLink" not in table
    fields = {f["name"]: f for f in table["schema"]["fields"]}
    assert fields["ssn"]["description"] == "masked by bqgate: last4. social security number"
    assert "description" not in fields["customer_id"]
    assert fields["addr"]["fields"] == [{"name": "city", "type": "STRING"}]
    dataset = metadata.get_dataset(AGENT, "demo-project", "sales")
    assert "access" not in dataset and dataset["id"] == "demo-project:sales"


def test_what_the_caller_may_not_read_is_invisible() -> None:
    metadata, raw, _ = api()
    assert "datasets" not in metadata.list_datasets(STRANGER, "demo-project", {})
    assert metadata.list_projects(STRANGER, {})["projects"] == []
    calls: list[Callable[[], object]] = [
        lambda: metadata.get_dataset(STRANGER, "demo-project", "sales"),
        lambda: metadata.list_tables(STRANGER, "demo-project", "sales", {}),
        lambda: metadata.get_table(STRANGER, "demo-project", "sales", "customers"),
    ]
    for call in calls:
        with pytest.raises(NotFound, match="Not found: Dataset demo-project:sales"):
            call()
    assert raw.calls == []  # invisible names are not even looked up
    listed = metadata.list_datasets(AGENT, "demo-project", {})
    assert [d["datasetReference"]["datasetId"] for d in listed["datasets"]] == [
        "analytics",
        "finance",
        "sales",
    ]
    with pytest.raises(NotFound):
        metadata.get_table(AGENT, "demo-project", "sales", "nope")


def test_lists_page_with_tokens_the_gateway_issued() -> None:
    metadata, _, _ = api()
    first = metadata.list_datasets(AGENT, "demo-project", {"maxResults": "2"})
    assert len(first["datasets"]) == 2 and first["nextPageToken"]
    rest = metadata.list_datasets(
        AGENT, "demo-project", {"maxResults": "2", "pageToken": first["nextPageToken"]}
    )
    assert [d["id"] for d in rest["datasets"]] == ["demo-project:sales"]
    assert "nextPageToken" not in rest


def test_jobs_list_is_the_callers_own_newest_first() -> None:
    metadata, _, store = api()
    for i, owner in enumerate([AGENT.email, "other@example.com", AGENT.email]):
        job = Job.new(
            job_id=f"j{i}",
            project="demo-project",
            location="US",
            sql="SELECT 1",
            owner=owner,
            now_ms=1000 + i,
            classification=Classification(statements=("SELECT",)),
        )
        job.state = DONE
        store.create(job)
    body = metadata.list_jobs(AGENT, "demo-project", {"projection": "full"})
    assert [j["jobReference"]["jobId"] for j in body["jobs"]] == ["j2", "j0"]
    assert body["jobs"][0]["statistics"]["query"]["statementType"] == "SELECT"
    page = metadata.list_jobs(AGENT, "demo-project", {"maxResults": "1"})
    assert [j["id"] for j in page["jobs"]] == ["demo-project:US.j2"] and page["nextPageToken"]
    assert page["jobs"][0]["configuration"] == {"jobType": "QUERY"}  # minimal projection
    nxt = metadata.list_jobs(AGENT, "demo-project", {"pageToken": page["nextPageToken"]})
    assert [j["jobReference"]["jobId"] for j in nxt["jobs"]] == ["j0"]
    with pytest.raises(AccessDenied):
        metadata.list_jobs(AGENT, "demo-project", {"allUsers": "true"})
    with pytest.raises(InvalidRequest):
        metadata.list_jobs(AGENT, "demo-project", {"stateFilter": "sleeping"})


def test_the_cache_is_bounded_and_remembers_misses() -> None:
    raw = FakeCatalog()
    now = [0.0]
    cache = CachedCatalog(raw, ttl_s=60, max_entries=3, clock=lambda: now[0])
    assert cache.get_table("p", "sales", "nope") is None
    assert cache.get_table("p", "sales", "nope") is None
    got = cache.get_table("p", "sales", "customers")
    assert got is not None
    got["schema"] = "changed by a caller"
    assert cache.get_table("p", "sales", "customers")["schema"] != "changed by a caller"  # type: ignore[index]
    assert len(raw.calls) == 2
    for name in ("a", "b", "c"):
        cache.get_dataset("p", name)
    assert len(cache._entries) == 3
    now[0] = 61.0
    cache.get_table("p", "sales", "nope")
    assert len(raw.calls) == 6


def test_insert_all_rows_become_one_typed_insert_statement() -> None:
    schema: list[dict[str, Any]] = [
        {"name": "id", "type": "INTEGER", "mode": "REQUIRED"},
        {"name": "tags", "type": "STRING", "mode": "REPEATED"},
        {"name": "at", "type": "TIMESTAMP"},
        {"name": "r", "type": "RECORD", "fields": [{"name": "x", "type": "FLOAT"}]},
    ]
    row = row_literals({"id": "7", "tags": ["a'b"], "at": 1.5, "r": {"x": 2}}, schema, False)
    assert row == {
        "id": "7",
        "tags": "ARRAY<STRING>['a\\'b']",
        "at": "TIMESTAMP_MICROS(1500000)",
        "r": "STRUCT<`x` FLOAT64>(2.0)",
    }
    sql = insert_statement("p.d.t", schema, [row])
    assert sql.startswith("INSERT INTO `p.d.t` (`id`, `tags`, `at`, `r`)\nVALUES\n(7, ")
    for bad, needle in (
        ({"tags": ["x"]}, "required"),
        ({"id": 1, "zzz": 1}, "no such field: zzz"),
        ({"id": 1.5}, "not an integer"),
        ({"id": 1, "tags": "x"}, "expected a list"),
    ):
        with pytest.raises(ValueError, match=needle):
            row_literals(bad, schema, False)
    assert row_literals({"id": 1, "zzz": 1}, schema, True)["id"] == "1"


def test_routes_cover_the_served_discovery_methods() -> None:
    from bqgate.wire.discovery import discovery_document

    doc = discovery_document("http://gw/")
    for resource in doc["resources"].values():
        for method in resource["methods"].values():
            path = "/bigquery/v2/" + method["path"].replace("{+projectId}", "p").replace(
                "{+datasetId}", "d"
            ).replace("{+tableId}", "t").replace("{+jobId}", "j")
            assert route(method["httpMethod"], path) is not None, method["id"]


def test_anonymous_destination_only_for_clients_that_need_one() -> None:
    job = Job.new(
        job_id="j1",
        project="p",
        location="US",
        sql="SELECT 1",
        owner="a",
        now_ms=1,
        classification=Classification(statements=("SELECT",)),
    )
    job.state, job.schema, job.total_rows = DONE, [{"name": "x", "type": "INTEGER"}], 1
    assert wire.anonymous_destination(job) is None  # plain clients: none (no Storage Read API)
    job.use_query_cache = False  # ibis's session probe
    assert wire.anonymous_destination(job) == {
        "projectId": "p",
        "datasetId": "_bqgate_anonymous",
        "tableId": "anon_j1",
    }
    job.use_query_cache, job.labels = None, {"dbt_invocation_id": "x"}
    job.classification = replace(job.classification, tables=("p.d.t",))
    job.total_rows = 5000
    assert wire.anonymous_destination(job) is not None
    assert json.loads(json.dumps(wire.anonymous_table(job)))["numRows"] == "5000"
