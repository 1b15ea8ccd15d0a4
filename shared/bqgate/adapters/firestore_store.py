"""The job store on Firestore: ``jobs/{job_id}`` and ``jobs/{job_id}/pages/{n}``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from bqgate.errors import Duplicate, NotFound
from bqgate.jobs import Job
from bqgate.ports import DecisionQuery

JOBS = "jobs"
PAGES = "pages"
#: The job field a decided approval request is ordered by (see firestore.tf's indexes).
DECIDED_AT = "approval.decided_at_ms"


def page_id(index: int) -> str:
    return f"{index:06d}"


class FirestoreJobStore:
    """Jobs and result pages. Every document carries ``expire_at`` (a timestamp), the field
    Firestore's TTL policy deletes by (see infra/terraform/firestore.tf): retention comes from
    the policy's ``sessions.retention``."""

    def __init__(
        self, client: firestore.Client, collection: str = JOBS, retention_seconds: int = 30 * 86400
    ) -> None:
        self.client = client
        self.jobs = client.collection(collection)
        self.retention_seconds = retention_seconds

    def _expire_at(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.retention_seconds)

    def create(self, job: Job) -> None:
        try:
            self.jobs.document(job.job_id).create({**job.to_doc(), "expire_at": self._expire_at()})
        except gexc.AlreadyExists:
            raise Duplicate(f"Already Exists: Job {job.project}:{job.job_id}") from None

    def get(self, job_id: str) -> Job | None:
        snap = self.jobs.document(job_id).get()
        return Job.from_doc(snap.to_dict() or {}) if snap.exists else None

    def transition(self, job_id: str, change: Callable[[Job], dict[str, Any] | None]) -> Job:
        ref = self.jobs.document(job_id)

        @firestore.transactional
        def run(txn: firestore.Transaction) -> Job:
            snap = ref.get(transaction=txn)
            if not snap.exists:
                raise NotFound(f"Not found: Job {job_id}")
            job = Job.from_doc(snap.to_dict() or {})
            fields = change(job)
            if fields:
                txn.update(ref, fields)
                doc = job.to_doc()
                doc.update(fields)
                job = Job.from_doc(doc)
            return job

        result: Job = run(self.client.transaction())
        return result

    def list_owned(
        self, owner: str, *, limit: int, created_before_ms: int | None = None
    ) -> list[Job]:
        """The owner's jobs, newest first (index ``jobs_by_owner`` in firestore.tf)."""
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self.jobs.where(filter=FieldFilter("owner", "==", owner))
        if created_before_ms is not None:
            query = query.where(filter=FieldFilter("created_ms", "<", created_before_ms))
        query = query.order_by("created_ms", direction=firestore.Query.DESCENDING).limit(limit)
        return [Job.from_doc(snap.to_dict() or {}) for snap in query.stream(timeout=10)]

    def put_page(self, job_id: str, index: int, start: int, rows_json: str) -> None:
        self.jobs.document(job_id).collection(PAGES).document(page_id(index)).set(
            {"index": index, "start": start, "rows": rows_json, "expire_at": self._expire_at()}
        )

    def get_pages(self, job_id: str, first: int, last: int) -> list[tuple[int, str]]:
        pages = self.jobs.document(job_id).collection(PAGES)
        refs = [pages.document(page_id(i)) for i in range(first, last + 1)]
        docs = {s.id: s.to_dict() or {} for s in self.client.get_all(refs) if s.exists}
        out = []
        for i in range(first, last + 1):
            doc = docs.get(page_id(i))
            if doc is None:
                raise NotFound(f"Not found: result page {i} of job {job_id}")
            out.append((int(doc["start"]), str(doc["rows"])))
        return out

    def decided(self, query: DecisionQuery) -> list[Job]:
        """Decided approval requests, latest decision first (``DecisionHistory``).

        Every filter runs in Firestore beside the range on the decision time (served by
        the composite indexes in firestore.tf). A principal is matched as requester and
        as decider by two queries, merged here; Firestore allows one ``array_contains``
        per query, so the decider query checks the table here.
        """
        Filter = tuple[str, str, Any]

        def run(filters: list[Filter]) -> list[Job]:
            q: Any = self.jobs.where(filter=FieldFilter(DECIDED_AT, ">=", query.since_ms or 0))
            if query.before_ms is not None:
                q = q.where(filter=FieldFilter(DECIDED_AT, "<", query.before_ms))
            if query.status:
                q = q.where(filter=FieldFilter("approval.status", "==", query.status))
            for path, op, value in filters:
                q = q.where(filter=FieldFilter(path, op, value))
            q = q.order_by(DECIDED_AT, direction=firestore.Query.DESCENDING).limit(query.limit)
            return [Job.from_doc(snap.to_dict() or {}) for snap in q.stream(timeout=30)]

        table: list[Filter] = (
            [("classification.tables", "array_contains", query.table)] if query.table else []
        )
        if query.principal:
            jobs = run([("owner", "==", query.principal), *table])
            jobs += run([("approval.deciders", "array_contains", query.principal)])
        else:
            jobs = run(table)
        found = {
            j.job_id: j
            for j in jobs
            if not query.table or query.table in (j.classification or {}).get("tables", [])
        }
        ordered = sorted(
            found.values(),
            key=lambda j: (-int((j.approval or {}).get("decided_at_ms") or 0), j.job_id),
        )
        return ordered[: query.limit]
