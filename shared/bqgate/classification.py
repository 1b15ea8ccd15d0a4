"""What the classifier says about a statement, as a value: from ``bqgate.sql.classify``
to the gateway, the executor, the approvals, the pages and the store, typed all the way.

A job store keeps it as a plain document (:meth:`Classification.to_dict`); reading one
back (:meth:`Classification.from_dict`) is strict: a key the types do not have is an
error, never dropped. Keys added after a document was written read back as their
defaults (a document written before ``writes`` existed has no writes).

>>> c = Classification("approve", ("restricted read",), ("SELECT",), ("p.d.t",),
...                    statement_hash="ab12")
>>> Classification.from_dict(c.to_dict()) == c
True
>>> c.to_dict()["tables"], Classification().to_dict()
(['p.d.t'], {})
>>> Classification.from_dict({"decision": "allow", "reson": []})
Traceback (most recent call last):
...
ValueError: a stored classification has keys that Classification does not: reson
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from bqgate.policy import WriteLimits
from bqgate.vocabulary import Decision, as_decision


def _strict(what: str, doc: Mapping[str, Any], known: frozenset[str]) -> None:
    """Refuse a stored document of ``what`` with keys outside ``known``."""
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ValueError(
            f"a stored {what.lower()} has keys that {what} does not: {', '.join(unknown)}"
        )


def _strs(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value or ())


@dataclass(frozen=True)
class WriteCheck:
    """A DELETE/UPDATE/MERGE whose blast radius the executor measures before it commits."""

    statement: int
    kind: str
    target: str
    tier: str
    max_rows: int | None
    max_fraction: float | None
    above: Decision

    def to_dict(self) -> dict[str, Any]:
        return {
            "statement": self.statement,
            "kind": self.kind,
            "target": self.target,
            "tier": self.tier,
            "max_rows": self.max_rows,
            "max_fraction": self.max_fraction,
            "above": self.above,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> WriteCheck:
        _strict("WriteCheck", doc, _WRITE_KEYS)
        return cls(
            statement=int(doc.get("statement", 1)),
            kind=str(doc.get("kind", "")),
            target=str(doc.get("target", "")),
            tier=str(doc.get("tier", "")),
            max_rows=doc.get("max_rows"),
            max_fraction=doc.get("max_fraction"),
            above=as_decision(doc.get("above", "approve")),
        )

    @property
    def limits(self) -> WriteLimits:
        """The tier's write limits this check measures against."""
        return WriteLimits(self.max_rows, self.max_fraction, self.above)

    def describe(self) -> str:
        return (
            f"statement {self.statement} ({self.kind}) on {self.target}: blast radius is "
            f"measured at execution (rows touched vs the table's rows), limits of tier "
            f"{self.tier}: {self.limits.describe()}"
        )


@dataclass(frozen=True)
class StatementVerdict:
    """The decision for one statement of a script. ``refs`` are the names it uses, as
    ``(kind, name, role)``."""

    kind: str
    decision: Decision
    reasons: tuple[str, ...]
    tables: tuple[str, ...]
    refs: tuple[tuple[str, str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "kind": self.kind,
            "decision": self.decision,
            "reasons": list(self.reasons),
            "tables": list(self.tables),
            "refs": [{"kind": k, "name": n, "role": r} for k, n, r in self.refs],
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> StatementVerdict:
        _strict("StatementVerdict", doc, _VERDICT_KEYS)
        refs = []
        for ref in doc.get("refs") or ():
            _strict("Ref", ref, _REF_KEYS)
            refs.append(
                (str(ref.get("kind", "")), str(ref.get("name", "")), str(ref.get("role", "")))
            )
        return cls(
            kind=str(doc.get("kind", "")),
            decision=as_decision(doc.get("decision")),
            reasons=_strs(doc.get("reasons")),
            tables=_strs(doc.get("tables")),
            refs=tuple(refs),
        )


@dataclass(frozen=True)
class Classification:
    """The decision for a whole SQL text (the strictest over its statements).

    ``Classification()`` is a job no classifier has judged: blocked, knowing nothing
    (stored as ``{}``)."""

    decision: Decision = "block"
    reasons: tuple[str, ...] = ()
    statements: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    written_tables: tuple[str, ...] = ()
    normalized_sql: str = ""
    statement_hash: str = ""
    per_statement: tuple[StatementVerdict, ...] = ()
    writes: tuple[WriteCheck, ...] = ()
    notes: tuple[str, ...] = ()
    #: The statement is one sqlglot cannot parse: BigQuery's dry run decides (the executor).
    second_opinion: bool = False

    @property
    def read_only(self) -> bool:
        """Only queries: every statement a SELECT, nothing written, nothing sqlglot could
        not parse (the executor may start such a job alongside its claim).

        >>> Classification(decision="allow", statements=("SELECT", "SELECT")).read_only
        True
        >>> Classification(statements=("SELECT",), written_tables=("p.d.t",)).read_only
        False
        >>> Classification().read_only, Classification(statements=("DELETE",)).read_only
        (False, False)
        """
        return (
            bool(self.statements)
            and all(kind == "SELECT" for kind in self.statements)
            and not self.written_tables
            and not self.writes
            and not self.second_opinion
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (keys: decision, reasons, statements, tables, ...); ``{}`` for
        the unjudged ``Classification()``."""
        if self == _UNJUDGED:
            return {}
        return {
            "decision": self.decision,
            "reasons": list(self.reasons),
            "statements": list(self.statements),
            "tables": list(self.tables),
            "written_tables": list(self.written_tables),
            "normalized_sql": self.normalized_sql,
            "statement_hash": self.statement_hash,
            "per_statement": [v.to_dict() for v in self.per_statement],
            "writes": [w.to_dict() for w in self.writes],
            "notes": list(self.notes),
            "second_opinion": self.second_opinion,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Classification:
        """The classification a stored document holds (keys it lacks: their defaults)."""
        if not doc:
            return _UNJUDGED
        _strict("Classification", doc, _CLASSIFICATION_KEYS)
        return cls(
            decision=as_decision(doc.get("decision")),
            reasons=_strs(doc.get("reasons")),
            statements=_strs(doc.get("statements")),
            tables=_strs(doc.get("tables")),
            written_tables=_strs(doc.get("written_tables")),
            normalized_sql=str(doc.get("normalized_sql", "")),
            statement_hash=str(doc.get("statement_hash", "")),
            per_statement=tuple(
                StatementVerdict.from_dict(v) for v in doc.get("per_statement") or ()
            ),
            writes=tuple(WriteCheck.from_dict(w) for w in doc.get("writes") or ()),
            notes=_strs(doc.get("notes")),
            second_opinion=bool(doc.get("second_opinion", False)),
        )


_UNJUDGED = Classification()
_WRITE_KEYS = frozenset(f.name for f in fields(WriteCheck))
_VERDICT_KEYS = frozenset(f.name for f in fields(StatementVerdict))
_REF_KEYS = frozenset({"kind", "name", "role"})
_CLASSIFICATION_KEYS = frozenset(f.name for f in fields(Classification))
