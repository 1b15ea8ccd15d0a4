"""Documents an earlier bqgate stored read back exactly (tests/fixtures/stored/jobs.json): a job
document of every kind of verdict, written by a dev stack run, is the same document after
``Job.from_doc`` and ``to_doc`` (the same keys, values and JSON types), so nothing a store
rewrites changes; what the gateway records as the ``classification`` event of a typed
verdict is the text the session record holds (its hash chain is unchanged); and a
classification written before later keys existed reads back with their defaults."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from bqgate.audit.chain import canonical_json
from bqgate.classification import Classification, StatementVerdict, WriteCheck
from bqgate.jobs import Job, changed_fields

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "stored" / "jobs.json"
STORED: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
RUN: dict[str, Any] = STORED["stack_run"]
OLD: dict[str, Any] = STORED["before_writes"]


def same(a: Any, b: Any) -> bool:
    """Equal as stored: the same JSON text (so ``True`` is not ``1``, nor ``1.0`` ``1``)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_the_fixture_holds_every_kind_of_verdict() -> None:
    decisions = {v["job"]["classification"]["decision"] for v in RUN.values()}
    assert decisions == {"allow", "approve", "block"}
    cls = [v["job"]["classification"] for v in RUN.values()]
    assert any(c["writes"] for c in cls) and any(c["second_opinion"] for c in cls)
    assert any(r for c in cls for s in c["per_statement"] for r in s["refs"])
    assert any(len(c["statements"]) > 1 for c in cls)


@pytest.mark.parametrize("name", sorted(RUN))
def test_a_stored_job_reads_back_as_the_same_document(name: str) -> None:
    doc = RUN[name]["job"]
    job = Job.from_doc(json.loads(json.dumps(doc)))
    assert isinstance(job.classification, Classification)
    assert job.classification.decision == doc["classification"]["decision"]
    assert same(job.to_doc(), doc)
    assert changed_fields(job, Job.from_doc(doc)) == {}  # nothing a store would rewrite
    assert same(Classification.from_dict(doc["classification"]).to_dict(), doc["classification"])


@pytest.mark.parametrize("name", sorted(RUN))
def test_the_recorded_classification_event_is_the_same_text(name: str) -> None:
    (text,) = RUN[name]["classification_events"]
    recorded = Classification.from_dict(json.loads(text))
    assert canonical_json(recorded.to_dict()) == text  # what the gateway records now
    stored = Job.from_doc(RUN[name]["job"]).classification
    if name == "write_over":
        # The executor added the measured blast radius to the reasons after recording.
        assert stored.reasons[: len(recorded.reasons)] == recorded.reasons
        stored = replace(stored, reasons=recorded.reasons)
    assert stored == recorded


def test_a_typed_verdict_carries_what_the_stored_one_said() -> None:
    write = Job.from_doc(RUN["write_over"]["job"]).classification
    (check,) = write.writes
    assert check == WriteCheck(
        statement=1,
        kind="DELETE",
        target="demo-project.analytics.events",
        tier="non-production",
        max_rows=1000,
        max_fraction=0.1,
        above="approve",
    )
    assert check.limits.describe() == (
        "at most 1,000 rows and at most 10% of the target table (above: approve)"
    )
    routine = Job.from_doc(RUN["routine"]["job"]).classification
    assert routine.per_statement[0].refs == (
        ("routine", "demo-project.analytics.normalize_name", "read"),
    )
    assert Job.from_doc(RUN["second_opinion"]["job"]).classification.second_opinion


@pytest.mark.parametrize("name", sorted(OLD))
def test_a_classification_written_before_later_keys_reads_with_their_defaults(
    name: str,
) -> None:
    old = OLD[name]
    c = Classification.from_dict(old)
    assert (c.decision, c.normalized_sql, c.statement_hash) == (
        old["decision"],
        old["normalized_sql"],
        old["statement_hash"],
    )
    assert (list(c.reasons), list(c.statements), list(c.tables), list(c.written_tables)) == (
        old["reasons"],
        old["statements"],
        old["tables"],
        old["written_tables"],
    )
    assert (c.writes, c.notes, c.second_opinion) == ((), (), False)
    assert c.per_statement == tuple(
        StatementVerdict(s["kind"], s["decision"], tuple(s["reasons"]), tuple(s["tables"]))
        for s in old["per_statement"]
    )
    # Written again, it carries every key (the later ones at their defaults) ...
    assert same(
        c.to_dict(),
        {
            **old,
            "per_statement": [{**s, "refs": []} for s in old["per_statement"]],
            "writes": [],
            "notes": [],
            "second_opinion": False,
        },
    )
    # ... and a job holding it reads back.
    doc = {**RUN["allow"]["job"], "classification": old}
    assert Job.from_doc(doc).classification == c


@pytest.mark.parametrize(
    ("doc", "unknown"),
    [
        ({**OLD["allow"], "decison": "allow"}, "Classification does not: decison"),
        (
            {**OLD["allow"], "per_statement": [{**OLD["allow"]["per_statement"][0], "x": 1}]},
            "StatementVerdict does not: x",
        ),
        (
            {**RUN["write_over"]["job"]["classification"], "writes": [{"statement": 1, "y": 2}]},
            "WriteCheck does not: y",
        ),
    ],
)
def test_an_unknown_stored_key_is_an_error(doc: dict[str, Any], unknown: str) -> None:
    with pytest.raises(ValueError, match=unknown):
        Classification.from_dict(doc)
    with pytest.raises(ValueError, match=unknown):
        Job.from_doc({**RUN["allow"]["job"], "classification": doc})


def test_an_unjudged_job_is_stored_as_before() -> None:
    job = Job("j", "p", "US", "SELECT 1", "a@x")
    assert job.classification == Classification() and job.classification.decision == "block"
    assert job.to_doc()["classification"] == {}
    assert Job.from_doc(job.to_doc()) == job
