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

from bqgate.adapters.google_errors import outage_as_unavailable, retry
from bqgate.errors import Duplicate, NotFound, Unavailable
from bqgate.jobs import Job
from bqgate.wire.bigquery import is_job_id

JOBS = "jobs"
PAGES = "pages"
#: Seconds per Firestore call (with the library's retries of a refused connection).
CALL_TIMEOUT_S = 5.0
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
