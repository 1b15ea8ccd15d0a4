"""The gateway's words, each defined once: what the policy file says and the code acts on.

The policy validator, the classifier, the masking rewrite, the executor and the pages all
import these, so what a policy may name and what the code does with it cannot drift apart.

>>> strictest_decision(["allow", "block", "approve"]), MASK_STRATEGIES[0]
('block', 'nullify')
>>> field_type({"type": "integer"}), repeated({"mode": "REPEATED"}), human_bytes(1536)
('INT64', True, '1.5 KiB (1,536 bytes)')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Literal, get_args

#: What a policy rule does with a statement, least strict first.
Decision = Literal["allow", "approve", "block"]
DECISIONS: tuple[Decision, ...] = get_args(Decision)

#: The statement classes a policy rule names (``read: allow``); the classifier maps every
#: statement kind to one of them.
StatementClass = Literal["read", "write", "ddl", "dcl", "procedural", "export", "load", "external"]
STATEMENT_CLASSES: tuple[StatementClass, ...] = get_args(StatementClass)

#: How a sensitive column is masked, strictest first (``hmac`` before ``sha256``: an unkeyed
#: hash of a low-entropy value such as an SSN can be reversed by enumeration, a keyed one
#: cannot). Where several apply, the strictest wins.
MaskStrategy = Literal["nullify", "default", "hmac", "sha256", "year", "email", "first4", "last4"]
MASK_STRATEGIES: tuple[MaskStrategy, ...] = get_args(MaskStrategy)

#: The legacy (REST) names of BigQuery field types -> the names the code uses (GoogleSQL's,
#: and ``RECORD`` for a STRUCT).
TYPE_ALIASES: Mapping[str, str] = MappingProxyType(
    {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "STRUCT": "RECORD"}
)


def strictest_decision(decisions: Iterable[Decision]) -> Decision:
    """The strictest of ``decisions`` (``allow`` when there are none).

    >>> strictest_decision([]), strictest_decision(["approve", "allow"])
    ('allow', 'approve')
    """
    return max(decisions, key=DECISIONS.index, default="allow")


def as_decision(value: object) -> Decision:
    """A decision read back from storage; anything that is not one is ``block`` (fail closed).

    >>> as_decision("approve"), as_decision("maybe"), as_decision(None)
    ('approve', 'block', 'block')
    """
    for decision in DECISIONS:
        if value == decision:
            return decision
    return "block"


def field_type(fld: Mapping[str, Any]) -> str:
    """The type name of a REST schema field, legacy names resolved (``INTEGER`` -> ``INT64``).

    >>> field_type({"type": "INTEGER"}), field_type({"type": "struct"}), field_type({})
    ('INT64', 'RECORD', 'STRING')
    """
    typ = str(fld.get("type", "STRING")).upper()
    return TYPE_ALIASES.get(typ, typ)


def repeated(fld: Mapping[str, Any]) -> bool:
    """Whether a REST schema field is an ARRAY (``mode: REPEATED``)."""
    return str(fld.get("mode", "NULLABLE")).upper() == "REPEATED"


def human_bytes(n: int | None) -> str:
    """A byte count for people (binary units, as BigQuery bills), with the exact count.

    >>> human_bytes(0), human_bytes(1536), human_bytes(5 * 1024**4)
    ('0 B', '1.5 KiB (1,536 bytes)', '5.0 TiB (5,497,558,138,880 bytes)')
    >>> human_bytes(None)
    'unknown (not estimated yet)'
    """
    if n is None:
        return "unknown (not estimated yet)"
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        value /= 1024
        if value < 1024 or unit == "EiB":
            return f"{value:.1f} {unit} ({n:,} bytes)"
    raise AssertionError("unreachable")  # pragma: no cover
