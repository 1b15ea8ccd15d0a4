"""The gateway's job: one agent request, from classification to its result pages.

A job moves through these states (``state``), recorded in the job store:

    PENDING_APPROVAL --approved--> PENDING --executor--> RUNNING --> DONE
           |                          |                              ^
           +--denied/expired----------+------blocked/failed----------+

``DONE`` jobs carry either a result (schema, pages) or an ``error``. The agent
sees BigQuery's states: PENDING_APPROVAL is reported as ``PENDING``.

>>> job = Job.new(job_id="j1", project="p", location="US", sql="SELECT 1",
...               owner="a@x", now_ms=1000)
>>> job.state, job.bigquery_state
('PENDING', 'PENDING')
>>> Job.from_doc(job.to_doc()) == job
True
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field, fields
from typing import Any

from bqgate.classification import Classification

PENDING = "PENDING"
PENDING_APPROVAL = "PENDING_APPROVAL"
RUNNING = "RUNNING"
DONE = "DONE"


def warehouse_job_id(job_id: str) -> str:
    """The BigQuery job id the executor uses for a gateway job.

    Derived from the gateway job id, so a redelivered or retried execution attaches
    to the same BigQuery job instead of running the statement twice.

    >>> warehouse_job_id("abc")
    'bqgate_ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
    """
    return "bqgate_" + hashlib.sha256(job_id.encode()).hexdigest()


def handed_over_job_id(job: Job) -> str:
    """The BigQuery job id of a read the executor runs while its creation commits
    (:func:`bqgate.service.dispatch.directly_acceptable`): derived from the job id, its
    owner and its creation time, so it names that one submission only.

    Such a read starts on BigQuery before the commit that would fail on a duplicate job
    id. Under :func:`warehouse_job_id` a read submitted with someone else's job id would
    create the BigQuery job their own job later attaches to (an approved statement would
    "finish" with another statement's result); in a namespace of its own (a NUL, which no
    job id holds, separates the parts) it collides with no other job's. A redelivery of
    the job attaches to the same BigQuery job (the claim stores this id).

    >>> j = Job(job_id="abc", project="p", location="US", sql="", owner="a", created_ms=1)
    >>> handed_over_job_id(j) != warehouse_job_id("abc")
    True
    >>> handed_over_job_id(j) == handed_over_job_id(Job(job_id="abc", project="p",
    ...     location="US", sql="", owner="b", created_ms=1))
    False
    """
    key = "\0".join(("handed-over", job.job_id, job.owner, str(job.created_ms)))
    return "bqgate_" + hashlib.sha256(key.encode()).hexdigest()


@dataclass
class Job:
    job_id: str
    project: str
    location: str
    sql: str
    owner: str
    groups: list[str] = field(default_factory=list)
    claims: dict[str, Any] = field(default_factory=dict)
    issuer: str = ""
    default_dataset: dict[str, str] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    query_parameters: list[dict[str, Any]] = field(default_factory=list)
    parameter_mode: str | None = None
    session_id: str = ""
    request_kind: str = "jobs.insert"
    dry_run: bool = False
    # Client options, honoured: the executor bills at most the lower of this and the policy's
    # cap; priority is passed to BigQuery; the write disposition is echoed (no destination).
    maximum_bytes_billed: int | None = None
    priority: str | None = None
    write_disposition: str | None = None
    use_query_cache: bool | None = None
    #: Rows the client asked for in its first answer (``jobs.query`` ``maxResults``): the
    #: executor cuts the first result page there, so that answer reads one page.
    first_page_rows: int | None = None
    #: The classifier's verdict (``Classification()``: never classified, blocked).
    classification: Classification = field(default_factory=Classification)
    state: str = PENDING
    error: dict[str, str] | None = None
    created_ms: int = 0
    started_ms: int | None = None
    ended_ms: int | None = None
    # Result metadata, set by the executor.
    schema: list[dict[str, Any]] | None = None
    total_rows: int | None = None
    page_starts: list[int] = field(default_factory=list)
    truncated: bool = False
    statement_type: str | None = None
    num_dml_affected_rows: int | None = None
    total_bytes_processed: int | None = None
    bytes_estimate: int | None = None
    #: Tables a dry run reports as referenced (``project.dataset.table``).
    referenced_tables: list[str] = field(default_factory=list)
    warehouse_job_id: str | None = None
    masking: list[dict[str, Any]] = field(default_factory=list)
    # The statement that ran after the masking rewrite (None: nothing was rewritten), and
    # the measured blast radius of a write (see bqgate.sql.blast).
    rewritten_sql: str | None = None
    blast_radius: list[dict[str, Any]] = field(default_factory=list)
    detector_hits: dict[str, int] = field(default_factory=dict)
    executions: int = 0
    #: Deliveries that failed on a dependency outage (the executor gives up after a few).
    transient_failures: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    # Approval state (see bqgate.approvals). ``needs_approval`` is set by the classifier's
    # ``approve`` decision or by the executor's cost guard; ``approval`` is the decision record.
    needs_approval: bool = False
    approval_requested_ms: int | None = None
    approval: dict[str, Any] = field(default_factory=dict)
    expire_at_ms: int | None = None

    @classmethod
    def new(cls, **kwargs: Any) -> Job:
        now_ms = kwargs.pop("now_ms")
        return cls(created_ms=now_ms, **kwargs)

    @property
    def bigquery_state(self) -> str:
        """The state as BigQuery names it (PENDING, RUNNING or DONE)."""
        return PENDING if self.state == PENDING_APPROVAL else self.state

    @property
    def done(self) -> bool:
        return self.state == DONE

    def to_doc(self) -> dict[str, Any]:
        """The stored document (plain values: the classification as its dict)."""
        return {
            f.name: (
                self.classification.to_dict()
                if f.name == "classification"
                else copy.deepcopy(getattr(self, f.name))
            )
            for f in fields(self)
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Job:
        """The job a stored document holds. A key that is neither a field nor one of
        :data:`STORE_KEYS` is an error: a misspelt field would otherwise be written and
        vanish on read.

        >>> Job.from_doc({**Job("j", "p", "US", "SELECT 1", "a@x").to_doc(), "stat": "DONE"})
        Traceback (most recent call last):
        ...
        ValueError: a stored job has fields that Job does not: stat
        """
        unknown = sorted(set(doc) - _FIELDS - STORE_KEYS)
        if unknown:
            raise ValueError(f"a stored job has fields that Job does not: {', '.join(unknown)}")
        values = {k: v for k, v in doc.items() if k in _FIELDS}
        if "classification" in values:
            values["classification"] = Classification.from_dict(values["classification"] or {})
        return cls(**values)


#: Keys a job store keeps in a job's document for itself (Firestore's TTL timestamp).
STORE_KEYS = frozenset({"expire_at"})
_FIELDS = frozenset(f.name for f in fields(Job))


def changed_fields(before: Job, after: Job) -> dict[str, Any]:
    """The stored fields ``after`` differs from ``before`` in (what a store writes).

    >>> from dataclasses import replace
    >>> j = Job("j", "p", "US", "SELECT 1", "a@x")
    >>> changed_fields(j, replace(j, state=DONE, ended_ms=5))
    {'state': 'DONE', 'ended_ms': 5}
    >>> changed_fields(j, replace(j))
    {}
    """
    old, new = before.to_doc(), after.to_doc()
    return {k: v for k, v in new.items() if old.get(k) != v}


@dataclass(frozen=True)
class Transition:
    """What a job store's ``transition`` did: the job as it read it (``before``) and as it
    now stands (``after``); ``changed`` when it wrote something."""

    before: Job
    after: Job
    changed: bool

    @classmethod
    def unchanged(cls, job: Job) -> Transition:
        return cls(job, job, False)
