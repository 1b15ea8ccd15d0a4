"""BigQuery's metadata API for agents: ``projects.list``, ``datasets.list/get``,
``tables.list/get`` and ``jobs.list``, as the policy lets the caller see them.

Deny by default: a dataset the caller may not read (:func:`bqgate.catalog.can_read`) is
absent from every list and ``notFound`` on every get, worded exactly like a dataset that
does not exist, so the answer does not tell the two apart. Resources come from the
executor (:mod:`bqgate.service.catalog`); ``jobs.list`` lists the caller's own jobs only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bqgate import catalog as shapes
from bqgate.errors import AccessDenied, InvalidRequest, NotFound
from bqgate.identity import Principal
from bqgate.jobs import DONE, PENDING, PENDING_APPROVAL, RUNNING, Job
from bqgate.policy import Policy
from bqgate.ports import Catalog, JobLister
from bqgate.wire import bigquery as wire

#: Items per list page when the client does not say, and at most.
DEFAULT_LIST_ITEMS = 1000
MAX_JOBS_LISTED = 1000
_STATE_FILTERS = {"done": {DONE}, "pending": {PENDING, PENDING_APPROVAL}, "running": {RUNNING}}


def _page(
    items: list[dict[str, Any]], params: Mapping[str, str]
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of ``items`` by ``maxResults`` and a ``pageToken`` this gateway issued."""
    token = params.get("pageToken")
    start = wire.decode_page_token(token) if token else 0
    size = wire._int(params.get("maxResults"), "maxResults") or DEFAULT_LIST_ITEMS
    size = min(size, DEFAULT_LIST_ITEMS)
    end = start + size
    return items[start:end], (wire.encode_page_token(end) if end < len(items) else None)


class MetadataApi:
    def __init__(
        self,
        *,
        catalog: Catalog,
        policy: Policy,
        jobs: JobLister,
        owned_job: Callable[[Principal, str, str], Job] | None = None,
    ) -> None:
        self.catalog = catalog
        self.policy = policy
        self.jobs = jobs
        self.owned_job = owned_job  # Gateway._owned: the caller's job, else NotFound

    def _groups(self, principal: Principal) -> frozenset[str]:
        return self.policy.groups_for(principal.email, principal.groups)

    def _visible(self, principal: Principal, project: str, dataset: str) -> None:
        if not shapes.can_read(self.policy, self._groups(principal), project, dataset):
            raise NotFound(f"Not found: Dataset {project}:{dataset}")

    # --- projects and datasets ---------------------------------------------------

    def list_projects(self, principal: Principal, params: Mapping[str, str]) -> dict[str, Any]:
        projects = [
            {
                "kind": "bigquery#project",
                "id": p,
                "projectReference": {"projectId": p},
                "friendlyName": p,
                # The project number is not the gateway's to tell; clients require the key.
                "numericId": "0",
            }
            for p in shapes.visible_projects(self.policy, self._groups(principal))
        ]
        page, token = _page(projects, params)
        body: dict[str, Any] = {
            "kind": "bigquery#projectList",
            "etag": '"bqgate"',
            "projects": page,
            "totalItems": len(projects),
        }
        if token:
            body["nextPageToken"] = token
        return body

    def list_datasets(
        self, principal: Principal, project: str, params: Mapping[str, str]
    ) -> dict[str, Any]:
        items = []
        for proj, dataset in shapes.visible_datasets(self.policy, self._groups(principal)):
            if proj != project:
                continue
            found = self.catalog.get_dataset(proj, dataset)
            if found is not None:  # named by the policy but absent from the warehouse
                items.append(shapes.shape_dataset(found, item=True))
        page, token = _page(items, params)
        body: dict[str, Any] = {"kind": "bigquery#datasetList", "etag": '"bqgate"'}
        if page:
            body["datasets"] = page
        if token:
            body["nextPageToken"] = token
        return body

    def get_dataset(self, principal: Principal, project: str, dataset: str) -> dict[str, Any]:
        self._visible(principal, project, dataset)
        found = self.catalog.get_dataset(project, dataset)
        if found is None:
            raise NotFound(f"Not found: Dataset {project}:{dataset}")
        return found

    # --- tables --------------------------------------------------------------------

    def list_tables(
        self, principal: Principal, project: str, dataset: str, params: Mapping[str, str]
    ) -> dict[str, Any]:
        self._visible(principal, project, dataset)
        items = self.catalog.list_tables(project, dataset)
        if items is None:
            raise NotFound(f"Not found: Dataset {project}:{dataset}")
        page, token = _page(items, params)
        body: dict[str, Any] = {
            "kind": "bigquery#tableList",
            "etag": '"bqgate"',
            "totalItems": len(items),
        }
        if page:
            body["tables"] = page
        if token:
            body["nextPageToken"] = token
        return body

    def get_table(
        self, principal: Principal, project: str, dataset: str, table: str
    ) -> dict[str, Any]:
        job_id = wire.anonymous_job_id(dataset, table)
        if job_id is not None and self.owned_job is not None:
            job = self.owned_job(principal, project, job_id)
            if not job.done or job.error or job.schema is None:
                raise NotFound(f"Not found: Table {project}:{dataset}.{table}")
            return wire.anonymous_table(job)
        self._visible(principal, project, dataset)
        found = self.catalog.get_table(project, dataset, table)
        if found is None:
            raise NotFound(f"Not found: Table {project}:{dataset}.{table}")
        return found

    # --- jobs ----------------------------------------------------------------------

    def list_jobs(
        self, principal: Principal, project: str, params: Mapping[str, str]
    ) -> dict[str, Any]:
        if (params.get("allUsers") or "").lower() in ("true", "1"):
            raise AccessDenied("bqgate lists only your own jobs (allUsers is not offered)")
        body: dict[str, Any] = {"kind": "bigquery#jobList", "etag": '"bqgate"', "jobs": []}
        if params.get("parentJobId"):
            return body  # the gateway's jobs have no child jobs
        states: set[str] = set()
        for name in (params.get("stateFilter") or "").split(","):
            if name.strip():
                if name.strip().lower() not in _STATE_FILTERS:
                    raise InvalidRequest(f"Invalid value at 'stateFilter': {name.strip()}")
                states |= _STATE_FILTERS[name.strip().lower()]
        low = wire._int(params.get("minCreationTime"), "minCreationTime")
        high = wire._int(params.get("maxCreationTime"), "maxCreationTime")
        token = params.get("pageToken")
        before = wire.decode_page_token(token) if token else None
        size = min(wire._int(params.get("maxResults"), "maxResults") or 50, MAX_JOBS_LISTED)
        if high is not None:
            before = min(before, high + 1) if before is not None else high + 1
        jobs = [
            j
            for j in self.jobs.list_owned(principal.email, limit=size + 1, created_before_ms=before)
            if j.project == project
        ]
        more = len(jobs) > size
        jobs = jobs[:size]
        listed = []
        for job in jobs:
            if low is not None and job.created_ms < low:
                more = False
                break
            if states and job.state not in states:
                continue
            res = wire.job_resource(job)
            res["state"] = res["status"]["state"]
            if job.error:
                res["errorResult"] = dict(job.error)
            if params.get("projection", "").lower() != "full":
                res["configuration"] = {"jobType": "QUERY"}
            listed.append(res)
        body["jobs"] = listed
        if more and jobs:
            body["nextPageToken"] = wire.encode_page_token(jobs[-1].created_ms)
        return body


__all__ = ["MetadataApi"]
