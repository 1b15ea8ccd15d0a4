"""Re-judging a recorded session under another policy (``bqgate sessions replay --policy``).

Every recorded statement, with the decision it got then, is judged again by a ``judge``
(the classifier under the policy being tried); :func:`rejudge` says what would change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bqgate.audit.chain import Event
from bqgate.vocabulary import Decision

if TYPE_CHECKING:
    from bqgate.policy import Policy

__all__ = ["Judge", "RecordedRequest", "Rejudged", "judge_under", "recorded_requests", "rejudge"]


@dataclass(frozen=True)
class RecordedRequest:
    """A statement as the session recorded it, with the decision it got then."""

    job_id: str
    at_ms: int
    sql: str
    principal: str
    groups: tuple[str, ...]
    default_project: str
    default_dataset: str | None
    #: The decision as recorded (``unknown`` when the record has none), shown as it stands.
    decision: str
    reasons: tuple[str, ...]


def recorded_requests(events: Iterable[Event]) -> list[RecordedRequest]:
    """Every recorded statement, in order, with its recorded classification."""
    requests: dict[str, Event] = {}
    verdicts: dict[str, Mapping[str, Any]] = {}
    for e in events:
        if e.kind == "request" and e.job_id not in requests:
            requests[e.job_id] = e
        elif e.kind == "classification":
            verdicts.setdefault(e.job_id, e.data)
    out = []
    for job_id, e in requests.items():
        d = e.data
        v = verdicts.get(job_id, {})
        out.append(
            RecordedRequest(
                job_id=job_id,
                at_ms=e.at_ms,
                sql=str(d.get("statement", "")),
                principal=str(d.get("principal") or e.principal),
                groups=tuple(str(g) for g in d.get("groups") or ()),
                # As BigQuery resolves names: `dataset.table` in the job's project, a bare
                # `table` in the default dataset (which may live in another project).
                default_project=str(d.get("project") or d.get("default_project") or ""),
                default_dataset=(
                    f"{d.get('default_project') or d.get('project')}.{d['default_dataset']}"
                    if d.get("default_dataset")
                    else None
                ),
                decision=str(v.get("decision", "unknown")),
                reasons=tuple(str(r) for r in v.get("reasons") or ()),
            )
        )
    return out


@dataclass(frozen=True)
class Rejudged:
    """A recorded statement judged again under another policy."""

    request: RecordedRequest
    decision: Decision
    reasons: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return self.decision != self.request.decision


#: ``judge(request) -> (decision, reasons)`` under the policy being tried.
Judge = Callable[[RecordedRequest], tuple[Decision, Sequence[str]]]


def judge_under(policy: Policy) -> Judge:
    """The classifier under ``policy``, judging a recorded statement as the gateway would
    have (its principal, groups and default dataset as recorded)."""
    from bqgate.sql.classify import classify  # sqlglot loads with the first judgement

    def judge(req: RecordedRequest) -> tuple[Decision, Sequence[str]]:
        verdict = classify(
            req.sql,
            policy=policy,
            principal=req.principal,
            groups=req.groups,
            default_project=req.default_project,
            default_dataset=req.default_dataset,
        )
        return verdict.decision, verdict.reasons

    return judge


def rejudge(events: Iterable[Event], judge: Judge) -> list[Rejudged]:
    """Judge every recorded statement again.

    >>> from bqgate.audit.chain import seal
    >>> from bqgate.chain import ChainKey
    >>> key = ChainKey(b"k" * 32)
    >>> a = seal(session_id="s", seq=1, kind="request", at_ms=0, job_id="j1", principal="a@x",
    ...          data={"statement": "SELECT 1", "groups": []}, prev=None, expire_at_ms=0,
    ...          key=key)
    >>> b = seal(session_id="s", seq=2, kind="classification", at_ms=0, job_id="j1",
    ...          principal="a@x", data={"decision": "allow", "reasons": []}, prev=a,
    ...          expire_at_ms=0, key=key)
    >>> [r.changed for r in rejudge([a, b], lambda req: ("block", ["stricter"]))]
    [True]
    """
    out = []
    for req in recorded_requests(events):
        decision, reasons = judge(req)
        out.append(Rejudged(req, decision, tuple(reasons)))
    return out
