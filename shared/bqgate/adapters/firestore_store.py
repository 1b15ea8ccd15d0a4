"""The job store on Firestore: ``jobs/{job_id}`` and ``jobs/{job_id}/pages/{n}``.

Every call has a deadline (``call_timeout_s``; reads also retry refused connections within
it), so a Firestore outage answers within seconds as :class:`bqgate.errors.Unavailable`
instead of waiting out the client library's 60-300 s defaults. A transition is an
optimistic compare-and-set on the document's ``update_time`` (no Firestore transaction:
their begin/commit calls take no deadline, and on the emulator they wait out lock timeouts
under contention).
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from bqgate.adapters.google_errors import outage_as_unavailable, retry
from bqgate.errors import Duplicate, NotFound, Unavailable
from bqgate.jobs import Job
from bqgate.ports import DecisionQuery
from bqgate.wire.bigquery import is_job_id

JOBS = "jobs"
PAGES = "pages"
#: The job field a decided approval request is ordered by (see firestore.tf's indexes).
DECIDED_AT = "approval.decided_at_ms"
#: Seconds per Firestore call (with the library's retries of a refused connection).
CALL_TIMEOUT_S = 5.0
#: Seconds a console query over decided requests may take (not on an agent's request path).
HISTORY_TIMEOUT_S = 30.0
#: Longest a transition keeps retrying when other writers keep changing the job.
CONTENTION_DEADLINE_S = 10.0
#: What a lost compare-and-set looks like.
_LOST_RACE = (gexc.FailedPrecondition, gexc.Aborted, gexc.Conflict)


def page_id(index: int) -> str:
    return f"{index:06d}"


class FirestoreJobStore:
    """Jobs and result pages. Every document carries ``expire_at`` (a timestamp), the field
    Firestore's TTL policy deletes by (see infra/terraform/firestore.tf): retention comes from
    the policy's ``sessions.retention``."""

    def __init__(
        self,
        client: firestore.Client,
        collection: str = JOBS,
        retention_seconds: int = 30 * 86400,
        call_timeout_s: float = CALL_TIMEOUT_S,
        contention_deadline_s: float = CONTENTION_DEADLINE_S,
    ) -> None:
        self.client = client
        self.jobs = client.collection(collection)
        self.retention_seconds = retention_seconds
        self.timeout = call_timeout_s
        self.retry = retry(call_timeout_s)
        self.contention_deadline_s = contention_deadline_s
        self._rng = random.Random()

    def _expire_at(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.retention_seconds)

    def create(self, job: Job) -> None:
        # No retry: a retried create that had succeeded would look like a duplicate.
        try:
            with outage_as_unavailable("Firestore"):
                self.jobs.document(job.job_id).create(
                    {**job.to_doc(), "expire_at": self._expire_at()}, timeout=self.timeout
                )
        except gexc.AlreadyExists:
            raise Duplicate(f"Already Exists: Job {job.project}:{job.job_id}") from None

    def _snapshot(self, job_id: str) -> Any:
        with outage_as_unavailable("Firestore"):
            return self.jobs.document(job_id).get(retry=self.retry, timeout=self.timeout)

    def get(self, job_id: str) -> Job | None:
        if not is_job_id(job_id):
            return None  # not an id this store can hold
        snap = self._snapshot(job_id)
        return Job.from_doc(snap.to_dict() or {}) if snap.exists else None

    def transition(self, job_id: str, change: Callable[[Job], dict[str, Any] | None]) -> Job:
        if not is_job_id(job_id):
            raise NotFound(f"Not found: Job {job_id[:100]}")
        ref = self.jobs.document(job_id)
        deadline = time.monotonic() + self.contention_deadline_s
        tries = 0
        while True:
            snap = self._snapshot(job_id)
            if not snap.exists:
                raise NotFound(f"Not found: Job {job_id}")
            job = Job.from_doc(snap.to_dict() or {})
            fields = change(job)
            if not fields:
                return job
            try:
                with outage_as_unavailable("Firestore"):
                    # Holds only if nobody wrote the job since it was read.
                    ref.update(
                        fields,
                        option=self.client.write_option(last_update_time=snap.update_time),
                        timeout=self.timeout,
                    )
            except _LOST_RACE:
                tries += 1
                if time.monotonic() >= deadline:
                    raise Unavailable(
                        "Firestore: the job kept changing under concurrent writers; try again"
                    ) from None
                time.sleep(self._rng.uniform(0, min(0.01 * 2**tries, 0.5)))
                continue
            doc = job.to_doc()
            doc.update(fields)
            return Job.from_doc(doc)

    def list_owned(
        self, owner: str, *, limit: int, created_before_ms: int | None = None
    ) -> list[Job]:
        """The owner's jobs, newest first (index ``jobs_by_owner`` in firestore.tf)."""
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self.jobs.where(filter=FieldFilter("owner", "==", owner))
        if created_before_ms is not None:
            query = query.where(filter=FieldFilter("created_ms", "<", created_before_ms))
        query = query.order_by("created_ms", direction=firestore.Query.DESCENDING).limit(limit)
        with outage_as_unavailable("Firestore"):
            snaps = list(query.stream(retry=self.retry, timeout=self.timeout))
        return [Job.from_doc(snap.to_dict() or {}) for snap in snaps]

    def put_page(self, job_id: str, index: int, start: int, rows_json: str) -> None:
        with outage_as_unavailable("Firestore"):
            self.jobs.document(job_id).collection(PAGES).document(page_id(index)).set(
                {"index": index, "start": start, "rows": rows_json, "expire_at": self._expire_at()},
                retry=self.retry,
                timeout=self.timeout,
            )

    def get_pages(self, job_id: str, first: int, last: int) -> list[tuple[int, str]]:
        pages = self.jobs.document(job_id).collection(PAGES)
        refs = [pages.document(page_id(i)) for i in range(first, last + 1)]
        with outage_as_unavailable("Firestore"):
            docs = {
                s.id: s.to_dict() or {}
                for s in self.client.get_all(refs, retry=self.retry, timeout=self.timeout)
                if s.exists
            }
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
            with outage_as_unavailable("Firestore"):
                snaps = list(q.stream(retry=retry(HISTORY_TIMEOUT_S), timeout=HISTORY_TIMEOUT_S))
            return [Job.from_doc(snap.to_dict() or {}) for snap in snaps]

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
