"""The gateway policy: a validated, frozen view of ``policies/*.yaml``.

The policy names which datasets exist (and their tier), which groups may do what
on each tier, which columns are sensitive, and the approval, cost, identity and
session settings. Anything it does not name is denied.

Validation collects every problem with its path in the file and raises one
:class:`~bqgate.errors.PolicyError` listing them all:

>>> parse_policy("version: 1\\ntiers: [dev]\\ndatasets: {p.d: prod}\\ngroups: {}\\nrules: []")
Traceback (most recent call last):
...
bqgate.errors.PolicyError: <string>: datasets.p.d: unknown tier "prod"
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from bqgate.errors import PolicyError
from bqgate.vocabulary import (
    DECISIONS,
    MASK_STRATEGIES,
    STATEMENT_CLASSES,
    Decision,
    StatementClass,
    strictest_decision,
)

#: A tier's ``writes.max_fraction`` when the policy does not set one: a write touching more
#: than half of its target table is never automatic.
DEFAULT_MAX_FRACTION = 0.5

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class Rule:
    """What ``groups`` may do on ``tiers``: statement class -> action (omitted classes block).

    ``claims`` (from ``when: {claims: {...}}``) limits the rule to principals whose token
    carries every named claim with one of the listed values.
    """

    groups: tuple[str, ...]
    tiers: tuple[str, ...]
    actions: Mapping[StatementClass, Decision]
    claims: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))

    def matches_claims(self, claims: Mapping[str, object]) -> bool:
        """Whether the principal's token claims satisfy ``when.claims``.

        >>> r = Rule(("g",), ("t",), {}, {"env": ("production",)})
        >>> [r.matches_claims(c) for c in ({"env": "production"}, {"env": "dev"}, {})]
        [True, False, False]
        """
        return all(claim_text(claims.get(k)) in wanted for k, wanted in self.claims.items())

    def action(self, statement_class: StatementClass) -> Decision:
        """The action for one statement class.

        >>> Rule(("g",), ("t",), {"read": "allow"}).action("write")
        'block'
        """
        return self.actions.get(statement_class, "block")


def claim_text(value: object) -> str | None:
    """A claim value as policy compares it (``True`` -> ``"true"``; lists/None -> None).

    >>> claim_text("prod"), claim_text(True), claim_text(3), claim_text(None)
    ('prod', 'true', '3', None)
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


@dataclass(frozen=True)
class WriteLimits:
    """Blast-radius limits of one tier: a DELETE/UPDATE/MERGE whose measured rows exceed
    ``max_rows`` or ``max_fraction`` of its target table goes to ``above`` (approve/block).

    ``None`` means no limit of that kind.
    """

    max_rows: int | None = None
    max_fraction: float | None = DEFAULT_MAX_FRACTION
    above: Decision = "approve"

    def exceeded(self, touched: int, total: int) -> str | None:
        """Why ``touched`` of ``total`` rows is over the limits (``None``: within them).

        >>> WriteLimits(max_rows=10, max_fraction=0.5).exceeded(3, 100) is None
        True
        >>> WriteLimits(max_rows=10, max_fraction=0.5).exceeded(60, 100)
        'over the limit of 10 rows; over the limit of 50% of the table'
        >>> WriteLimits().exceeded(0, 0) is None
        True
        """
        why = []
        if self.max_rows is not None and touched > self.max_rows:
            why.append(f"over the limit of {self.max_rows:,} rows")
        if self.max_fraction is not None and total > 0 and touched / total > self.max_fraction:
            why.append(f"over the limit of {self.max_fraction:.0%} of the table")
        return "; ".join(why) or None

    def describe(self) -> str:
        """One line for explain and the approver.

        >>> WriteLimits(100, 0.1).describe()
        'at most 100 rows and at most 10% of the target table (above: approve)'
        """
        parts = []
        if self.max_rows is not None:
            parts.append(f"at most {self.max_rows:,} rows")
        if self.max_fraction is not None:
            parts.append(f"at most {self.max_fraction:.0%} of the target table")
        return (" and ".join(parts) or "no limit") + f" (above: {self.above})"


@dataclass(frozen=True)
class UnmaskedGrant:
    """Unmasked reads of ``columns`` (all sensitive ones when empty) of ``table`` for ``groups``."""

    groups: tuple[str, ...]
    table: str
    columns: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ApprovalSettings:
    """Who approves, how many approvals are needed, how long a request waits, and how
    many requests one principal may have waiting at once."""

    approver_groups: tuple[str, ...]
    required: int = 1
    ttl_seconds: int = 900
    owners: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    max_pending_per_principal: int = 10


@dataclass(frozen=True)
class CostLimits:
    """Byte limits (``None`` = no limit) and the result row cap."""

    max_bytes_billed: int | None
    approve_above_bytes: int | None
    block_above_bytes: int | None
    max_result_rows: int


@dataclass(frozen=True)
class Issuer:
    """One trusted OIDC issuer."""

    issuer: str
    audiences: tuple[str, ...]
    jwks_uri: str
    principal_claim: str = "email"
    groups_claim: str | None = None
    dev_only: bool = False


@dataclass(frozen=True)
class IdentitySettings:
    """Trusted issuers and the allowed clock skew."""

    issuers: tuple[Issuer, ...]
    clock_skew_seconds: int = 60


@dataclass(frozen=True)
class SessionSettings:
    """How long session records are kept and how many masked rows each job keeps."""

    retention_seconds: int
    record_rows: int


#: ``execution.inline_result_bytes`` by default, and at most (a commit holds the pages).
INLINE_RESULT_BYTES = 1024 * 1024
MAX_INLINE_RESULT_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ExecutionSettings:
    """How the executor hands results back.

    ``inline_result_bytes``: a result whose masked rows encode (as JSON) to at most this
    many bytes is answered inline on the direct-call path: the executor's answer carries
    the rows to the ingress, which answers the agent from them, and its pages are written
    in the same commit that ends the job. Larger results stream into pages. 0: never inline.
    """

    inline_result_bytes: int = INLINE_RESULT_BYTES


@dataclass(frozen=True)
class Policy:
    """A loaded, validated policy. Build it with :func:`load_policy` or :func:`parse_policy`."""

    version: int
    tiers: tuple[str, ...]
    datasets: Mapping[str, str]
    groups: Mapping[str, tuple[str, ...]]
    rules: tuple[Rule, ...]
    sensitive_columns: Mapping[str, Mapping[str, str]]
    approvals: ApprovalSettings
    cost: CostLimits
    identity: IdentitySettings
    sessions: SessionSettings
    source: str
    digest: str
    writes: Mapping[str, WriteLimits] = field(default_factory=lambda: MappingProxyType({}))
    connections: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    agent_groups: frozenset[str] = frozenset()
    unmasked: tuple[UnmaskedGrant, ...] = ()
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)

    def write_limits(self, tier: str) -> WriteLimits:
        """The blast-radius limits of ``tier`` (the defaults when the policy sets none)."""
        return self.writes.get(tier) or WriteLimits()

    def connection_tier(self, fqn: str) -> str | None:
        """The tier of connection ``project.location.connection`` (None: not in the policy).

        >>> parse_policy(_MINIMAL).connection_tier("p.us.c") is None
        True
        """
        return self.connections.get(fqn.lower())

    def is_agent(self, principal: str, groups: Iterable[str]) -> bool:
        """Agents are members of an ``agents: true`` group or identities with an owner."""
        return bool(self.agent_groups.intersection(groups)) or (
            principal.strip().lower() in self.approvals.owners
        )

    def unmasked_for(self, principal: str, groups: Iterable[str], table_fqn: str) -> frozenset[str]:
        """Sensitive columns of ``table_fqn`` the principal may read unmasked (agents: none).

        ``{"*"}`` stands for every sensitive column of the table.
        """
        wanted = set(groups)
        if not self.unmasked or self.is_agent(principal, wanted):
            return frozenset()
        key = table_fqn.lower()
        out: set[str] = set()
        for grant in self.unmasked:
            if grant.table == key and wanted.intersection(grant.groups):
                out |= grant.columns or {"*"}
        return frozenset(out)

    def groups_for(self, principal: str, claimed: Iterable[str] = ()) -> frozenset[str]:
        """Static group membership of ``principal`` (emails case-insensitive) plus claimed.

        >>> p = parse_policy(_MINIMAL)
        >>> sorted(p.groups_for("Agent@X.com", ["extra"]))
        ['agents', 'extra']
        """
        who = principal.strip().lower()
        static = {g for g, members in self.groups.items() if who in members}
        return frozenset(static | set(claimed))

    def tier_of(self, project: str, dataset: str) -> str | None:
        """The tier of ``project.dataset``, or ``None`` when the policy does not name it.

        >>> p = parse_policy(_MINIMAL)
        >>> p.tier_of("p", "d"), p.tier_of("p", "other")
        ('dev', None)
        """
        return self.datasets.get(f"{project}.{dataset}")

    def sensitive_for(self, table_fqn: str) -> Mapping[str, str]:
        """Sensitive ``{column: strategy}`` of a table (lower-case names); ``{}`` if none.

        Table names are compared case-insensitively; a wildcard table (``p.d.cust*``)
        gets the union of the sensitive columns of every table it may match.

        >>> p = parse_policy(_MINIMAL)
        >>> dict(p.sensitive_for("p.d.People")), dict(p.sensitive_for("p.d.peo*"))
        ({'email': 'email'}, {'email': 'email'})
        >>> dict(p.sensitive_for("p.d.other"))
        {}
        """
        key = table_fqn.lower()
        found = self.sensitive_columns.get(key)
        if found is not None:
            return found
        if "*" not in key:
            return _EMPTY
        merged: dict[str, str] = {}
        for table, columns in self.sensitive_columns.items():
            if fnmatch.fnmatchcase(table, key):
                merged.update(columns)
        return MappingProxyType(merged) if merged else _EMPTY

    def known_groups(self) -> frozenset[str]:
        """Every group the policy mentions (declared, in rules, or approvers)."""
        names = set(self.groups)
        for rule in self.rules:
            names.update(rule.groups)
        names.update(self.approvals.approver_groups)
        return frozenset(names)

    def action_for(
        self,
        groups: Iterable[str],
        tier: str,
        statement_class: StatementClass,
        claims: Mapping[str, object] | None = None,
    ) -> Decision | None:
        """Strictest action of the rules matching ``groups`` (and ``claims``) on ``tier``
        (``None``: no rule).

        >>> p = parse_policy(_MINIMAL)
        >>> p.action_for({"agents"}, "dev", "read"), p.action_for({"agents"}, "dev", "ddl")
        ('allow', 'block')
        >>> p.action_for({"nobody"}, "dev", "read") is None
        True
        """
        wanted = set(groups)
        claims = claims or {}
        actions = [
            rule.action(statement_class)
            for rule in self.rules
            if tier in rule.tiers
            and wanted.intersection(rule.groups)
            and rule.matches_claims(claims)
        ]
        return strictest_decision(actions) if actions else None


# A tiny valid policy used by the doctests above.
_MINIMAL = """\
version: 1
tiers: [dev]
datasets: {p.d: dev}
groups: {agents: {members: [agent@x.com]}}
rules: [{groups: [agents], tiers: [dev], read: allow}]
sensitive_columns: {p.d.people: {EMAIL: email}}
"""


# --------------------------------------------------------------------------- units

_SIZE_UNITS: Mapping[str, int] = MappingProxyType(
    {
        "": 1,
        "b": 1,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "tb": 10**12,
        "pb": 10**15,
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
        "tib": 2**40,
        "pib": 2**50,
    }
)
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_DURATION_UNITS: Mapping[str, int] = MappingProxyType(
    {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
)
_DURATION_RE = re.compile(r"^(?:\s*\d+\s*[smhdw])+\s*$", re.IGNORECASE)
_DURATION_PART_RE = re.compile(r"(\d+)\s*([smhdw])", re.IGNORECASE)


def parse_size(value: object) -> int:
    """Bytes from ``10GB`` (decimal), ``1GiB`` (binary), ``500MB`` or a plain int.

    >>> parse_size("10GB"), parse_size("1GiB"), parse_size(42), parse_size("1.5 KB")
    (10000000000, 1073741824, 42, 1500)
    >>> parse_size("ten")
    Traceback (most recent call last):
    ...
    ValueError: expected a size like 10GB, got "ten"
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise ValueError(f"expected a size like 10GB, got {_show(value)}")


def parse_duration(value: object) -> int:
    """Seconds from ``15m``, ``30d``, ``60s``, ``1h30m`` or a plain int (seconds).

    >>> parse_duration("15m"), parse_duration("30d"), parse_duration("1h30m"), parse_duration(5)
    (900, 2592000, 5400, 5)
    >>> parse_duration("soon")
    Traceback (most recent call last):
    ...
    ValueError: expected a duration like 15m, got "soon"
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and _DURATION_RE.match(value):
        return sum(int(n) * _DURATION_UNITS[u.lower()] for n, u in _DURATION_PART_RE.findall(value))
    raise ValueError(f"expected a duration like 15m, got {_show(value)}")


def _show(value: object) -> str:
    """How a bad value appears in a problem message."""
    if isinstance(value, str):
        return '"' + value + '"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


# --------------------------------------------------------------------------- YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (a silent-overwrite trap)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_show(key)}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: ``line N, column M: what``."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    if context and getattr(exc, "problem", None):
        what = f"{what} ({context})"
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: YAML syntax error: {what}"
    return f"YAML syntax error: {what}"


# --------------------------------------------------------------------------- validation


class _Checker:
    """Collects problems while reading the raw YAML document."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}" if path else message)

    def mapping(
        self, value: object, path: str, keys: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """``value`` as a str-keyed mapping; unknown keys (if ``keys`` given) are problems."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.add(path, f"expected a mapping, got {_show(value)}")
            return {}
        out: dict[str, Any] = {}
        allowed = set(keys) if keys is not None else None
        for k, v in value.items():
            if not isinstance(k, str):
                self.add(_join(path, str(k)), "keys must be strings")
                continue
            if allowed is not None and k not in allowed:
                self.add(_join(path, k), "unknown key")
                continue
            out[k] = v
        return out

    def strings(self, value: object, path: str) -> tuple[str, ...]:
        """A list of non-empty strings (a single string is accepted as a one-item list)."""
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.add(path, f"expected a list of strings, got {_show(value)}")
            return ()
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self.add(f"{path}[{i}]", f"expected a non-empty string, got {_show(item)}")
            else:
                out.append(item.strip())
        return tuple(out)

    def string(self, value: object, path: str, default: str | None = None) -> str:
        if value is None and default is not None:
            return default
        if not isinstance(value, str) or not value.strip():
            self.add(path, f"expected a non-empty string, got {_show(value)}")
            return default or ""
        return value.strip()

    def integer(self, value: object, path: str, default: int, minimum: int = 0) -> int:
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            self.add(path, f"expected an integer >= {minimum}, got {_show(value)}")
            return default
        return value

    def boolean(self, value: object, path: str, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.add(path, f"expected true or false, got {_show(value)}")
            return default
        return value

    def convert(
        self, value: object, path: str, parse: Callable[[object], int], default: int | None
    ) -> int | None:
        if value is None:
            return default
        try:
            return parse(value)
        except ValueError as exc:
            self.add(path, str(exc))
            return default


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_TOP_KEYS = (
    "version",
    "tiers",
    "datasets",
    "groups",
    "rules",
    "sensitive_columns",
    "approvals",
    "cost",
    "identity",
    "sessions",
    "connections",
    "unmasked",
    "execution",
)
_REQUIRED_TOP = ("version", "tiers", "datasets", "groups", "rules")
_RULE_KEYS = ("groups", "tiers", "when", *STATEMENT_CLASSES)
_CONNECTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]*\.[A-Za-z0-9_]+$")
_TABLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]*\.[A-Za-z0-9_]+\.[A-Za-z0-9_$-]+$")


def parse_policy(text: str, source: str = "<string>") -> Policy:
    """Parse and validate policy YAML ``text``; raise :class:`PolicyError` listing every problem.

    >>> p = parse_policy(_MINIMAL)
    >>> p.tiers, p.tier_of("p", "d"), p.approvals.ttl_seconds, p.cost.max_bytes_billed
    (('dev',), 'dev', 900, None)
    >>> parse_policy("version: [1")
    Traceback (most recent call last):
    ...
    bqgate.errors.PolicyError: <string>: line 1, column 12: YAML syntax error: ...
    """
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise PolicyError([_yaml_problem(exc)], source=source) from None
    c = _Checker()
    if raw is None:
        raw = {}
    top = c.mapping(raw, "", _TOP_KEYS)
    if not isinstance(raw, dict):
        raise PolicyError(c.problems, source=source)
    for key in _REQUIRED_TOP:
        if key not in raw:
            c.add(key, "missing required key")

    version = c.integer(top.get("version"), "version", 1, minimum=1)
    if version != 1:
        c.add("version", f"unsupported version {version} (expected 1)")

    tiers, writes = _tiers(c, top.get("tiers"))
    if "tiers" in top and not tiers:
        c.add("tiers", "at least one tier is required")
    for dup in sorted({t for t in tiers if tiers.count(t) > 1}):
        c.add("tiers", f'duplicate tier "{dup}"')
    tier_set = set(tiers)

    datasets: dict[str, str] = {}
    for name, tier in c.mapping(top.get("datasets"), "datasets").items():
        path = _join("datasets", name)
        if not _DATASET_RE.match(name):
            c.add(path, 'expected a dataset name like "project.dataset"')
        elif not isinstance(tier, str):
            c.add(path, f"expected a tier name, got {_show(tier)}")
        elif tier not in tier_set:
            c.add(path, f'unknown tier "{tier}"')
        else:
            datasets[name] = tier

    groups: dict[str, tuple[str, ...]] = {}
    agent_groups: set[str] = set()
    for name, body in c.mapping(top.get("groups"), "groups").items():
        spec = c.mapping(body, _join("groups", name), ("members", "agents"))
        members = c.strings(spec.get("members"), _join(_join("groups", name), "members"))
        groups[name] = tuple(sorted({m.lower() for m in members}))
        if c.boolean(spec.get("agents"), _join(_join("groups", name), "agents"), False):
            agent_groups.add(name)
    declared_groups = set(groups)

    rules: list[Rule] = []
    raw_rules = top.get("rules")
    if raw_rules is not None and not isinstance(raw_rules, list):
        c.add("rules", f"expected a list of rules, got {_show(raw_rules)}")
        raw_rules = []
    for i, body in enumerate(raw_rules or []):
        path = f"rules[{i}]"
        spec = c.mapping(body, path, _RULE_KEYS)
        rule_groups = c.strings(spec.get("groups"), f"{path}.groups")
        rule_tiers = c.strings(spec.get("tiers"), f"{path}.tiers")
        if not rule_groups:
            c.add(f"{path}.groups", "at least one group is required")
        if not rule_tiers:
            c.add(f"{path}.tiers", "at least one tier is required")
        for g in rule_groups:
            if g not in declared_groups:
                c.add(f"{path}.groups", f'unknown group "{g}" (declare it under groups)')
        for t in rule_tiers:
            if t not in tier_set:
                c.add(f"{path}.tiers", f'unknown tier "{t}"')
        actions: dict[StatementClass, Decision] = {}
        for cls in STATEMENT_CLASSES:
            if cls in spec:
                action = spec[cls]
                if action not in DECISIONS:
                    c.add(f"{path}.{cls}", f"expected allow, approve or block, got {_show(action)}")
                else:
                    actions[cls] = action
        claims = _when(c, spec.get("when"), f"{path}.when")
        rules.append(Rule(rule_groups, rule_tiers, MappingProxyType(actions), claims))

    sensitive: dict[str, Mapping[str, str]] = {}
    for table, columns in c.mapping(top.get("sensitive_columns"), "sensitive_columns").items():
        path = _join("sensitive_columns", table)
        if not _TABLE_RE.match(table):
            c.add(path, 'expected a table name like "project.dataset.table"')
            continue
        cols: dict[str, str] = {}
        for column, strategy in c.mapping(columns, path).items():
            if strategy not in MASK_STRATEGIES:
                c.add(
                    _join(path, column),
                    f"unknown strategy {_show(strategy)} (one of {', '.join(MASK_STRATEGIES)})",
                )
            elif column.lower() in cols:
                c.add(_join(path, column), "duplicate column (names are case-insensitive)")
            else:
                cols[column.lower()] = str(strategy)
        sensitive[table.lower()] = MappingProxyType(cols)

    connections: dict[str, str] = {}
    for name, tier in c.mapping(top.get("connections"), "connections").items():
        path = _join("connections", name)
        if not _CONNECTION_RE.match(name) or name.count(".") != 2:
            c.add(path, 'expected a connection name like "project.location.connection"')
        elif not isinstance(tier, str):
            c.add(path, f"expected a tier name, got {_show(tier)}")
        elif tier not in tier_set:
            c.add(path, f'unknown tier "{tier}"')
        else:
            connections[name.lower()] = tier

    unmasked = _unmasked(c, top.get("unmasked"), declared_groups, agent_groups, sensitive)
    approvals = _approvals(c, top.get("approvals"), declared_groups)
    cost = _cost(c, top.get("cost"))
    identity = _identity(c, top.get("identity"))
    sessions = _sessions(c, top.get("sessions"))
    execution = _execution(c, top.get("execution"))

    if c.problems:
        raise PolicyError(c.problems, source=source)
    return Policy(
        version=version,
        tiers=tiers,
        datasets=MappingProxyType(datasets),
        groups=MappingProxyType(groups),
        rules=tuple(rules),
        sensitive_columns=MappingProxyType(sensitive),
        approvals=approvals,
        cost=cost,
        identity=identity,
        sessions=sessions,
        source=source,
        digest=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        writes=MappingProxyType(writes),
        connections=MappingProxyType(connections),
        agent_groups=frozenset(agent_groups),
        unmasked=unmasked,
        execution=execution,
    )


_WRITES_KEYS = ("max_rows", "max_fraction", "above")


def _tiers(c: _Checker, raw: object) -> tuple[tuple[str, ...], dict[str, WriteLimits]]:
    """``tiers`` as a list of names, or a mapping of name -> ``{writes: {...}}``."""
    if not isinstance(raw, dict):
        return c.strings(raw, "tiers"), {}
    names: list[str] = []
    writes: dict[str, WriteLimits] = {}
    for name, body in c.mapping(raw, "tiers").items():
        names.append(name)
        spec = c.mapping(body, _join("tiers", name), ("writes",))
        if "writes" in spec:
            writes[name] = _write_limits(
                c, spec.get("writes"), _join(_join("tiers", name), "writes")
            )
    return tuple(names), writes


def _write_limits(c: _Checker, raw: object, path: str) -> WriteLimits:
    spec = c.mapping(raw, path, _WRITES_KEYS)
    max_rows = spec.get("max_rows")
    rows: int | None = None
    if max_rows is not None:
        rows = c.integer(max_rows, f"{path}.max_rows", 0)
    fraction: float | None = DEFAULT_MAX_FRACTION
    if "max_fraction" in spec:
        value = spec.get("max_fraction")
        if value is None:
            fraction = None
        elif (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and 0 <= float(value) <= 1
        ):
            fraction = float(value)
        else:
            c.add(f"{path}.max_fraction", f"expected a number from 0 to 1, got {_show(value)}")
    above = spec.get("above", "approve")
    if above not in ("approve", "block"):
        c.add(f"{path}.above", f"expected approve or block, got {_show(above)}")
        above = "approve"
    return WriteLimits(max_rows=rows, max_fraction=fraction, above=above)


def _when(c: _Checker, raw: object, path: str) -> Mapping[str, tuple[str, ...]]:
    """``when: {claims: {name: value | [values]}}`` of a rule."""
    if raw is None:
        return MappingProxyType({})
    spec = c.mapping(raw, path, ("claims",))
    out: dict[str, tuple[str, ...]] = {}
    for name, value in c.mapping(spec.get("claims"), f"{path}.claims").items():
        values = value if isinstance(value, list) else [value]
        texts = [claim_text(v) for v in values]
        if not values or any(t is None for t in texts):
            c.add(
                _join(f"{path}.claims", name),
                f"expected a string, number or boolean (or a list of them), got {_show(value)}",
            )
            continue
        out[name] = tuple(t for t in texts if t is not None)
    if "claims" in spec and not out and not c.problems:
        c.add(f"{path}.claims", "at least one claim is required")
    return MappingProxyType(out)


def _unmasked(
    c: _Checker,
    raw: object,
    declared_groups: set[str],
    agent_groups: set[str],
    sensitive: Mapping[str, Mapping[str, str]],
) -> tuple[UnmaskedGrant, ...]:
    """``unmasked: [{groups: [...], tables: [...], columns: [...]}]`` (agents never)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        c.add("unmasked", f"expected a list of grants, got {_show(raw)}")
        return ()
    grants: list[UnmaskedGrant] = []
    for i, body in enumerate(raw):
        path = f"unmasked[{i}]"
        spec = c.mapping(body, path, ("groups", "tables", "columns"))
        groups = c.strings(spec.get("groups"), f"{path}.groups")
        tables = c.strings(spec.get("tables"), f"{path}.tables")
        columns = frozenset(
            col.lower() for col in c.strings(spec.get("columns"), f"{path}.columns")
        )
        if not groups:
            c.add(f"{path}.groups", "at least one group is required")
        if not tables:
            c.add(f"{path}.tables", "at least one table is required")
        for g in groups:
            if g not in declared_groups:
                c.add(f"{path}.groups", f'unknown group "{g}" (declare it under groups)')
            elif g in agent_groups:
                c.add(f"{path}.groups", f'"{g}" is an agents group: agents never read unmasked')
        for table in tables:
            key = table.lower()
            if key not in sensitive:
                c.add(f"{path}.tables", f'"{table}" has no sensitive_columns entry')
                continue
            unknown = sorted(columns - set(sensitive[key]))
            if unknown:
                c.add(f"{path}.columns", f"not sensitive columns of {table}: {', '.join(unknown)}")
            grants.append(UnmaskedGrant(groups, key, columns))
    return tuple(grants)


def _approvals(c: _Checker, raw: object, declared_groups: set[str]) -> ApprovalSettings:
    spec = c.mapping(
        raw,
        "approvals",
        ("approver_groups", "required", "ttl", "owners", "max_pending_per_principal"),
    )
    approver_groups = c.strings(spec.get("approver_groups"), "approvals.approver_groups")
    for g in approver_groups:
        if g not in declared_groups:
            c.add("approvals.approver_groups", f'unknown group "{g}" (declare it under groups)')
    required = c.integer(spec.get("required"), "approvals.required", 1, minimum=1)
    max_pending = c.integer(
        spec.get("max_pending_per_principal"), "approvals.max_pending_per_principal", 10, minimum=1
    )
    ttl = c.convert(spec.get("ttl"), "approvals.ttl", parse_duration, 900)
    owners: dict[str, str] = {}
    for agent, owner in c.mapping(spec.get("owners"), "approvals.owners").items():
        if not isinstance(owner, str) or "@" not in owner:
            c.add(_join("approvals.owners", agent), f"expected an owner email, got {_show(owner)}")
        else:
            owners[agent.strip().lower()] = owner.strip().lower()
    return ApprovalSettings(
        approver_groups=approver_groups,
        required=required,
        ttl_seconds=ttl if ttl is not None else 900,
        owners=MappingProxyType(owners),
        max_pending_per_principal=max_pending,
    )


def _cost(c: _Checker, raw: object) -> CostLimits:
    spec = c.mapping(
        raw,
        "cost",
        ("max_bytes_billed", "approve_above_bytes", "block_above_bytes", "max_result_rows"),
    )
    limits = {
        key: c.convert(spec.get(key), f"cost.{key}", parse_size, None)
        for key in ("max_bytes_billed", "approve_above_bytes", "block_above_bytes")
    }
    approve, block = limits["approve_above_bytes"], limits["block_above_bytes"]
    if approve is not None and block is not None and approve > block:
        c.add("cost.approve_above_bytes", "must not exceed cost.block_above_bytes")
    return CostLimits(
        max_bytes_billed=limits["max_bytes_billed"],
        approve_above_bytes=approve,
        block_above_bytes=block,
        max_result_rows=c.integer(spec.get("max_result_rows"), "cost.max_result_rows", 100000, 1),
    )


_ISSUER_KEYS = ("issuer", "audiences", "jwks_uri", "principal_claim", "groups_claim", "dev_only")


def _identity(c: _Checker, raw: object) -> IdentitySettings:
    spec = c.mapping(raw, "identity", ("issuers", "clock_skew"))
    skew = c.convert(spec.get("clock_skew"), "identity.clock_skew", parse_duration, 60)
    raw_issuers = spec.get("issuers")
    if raw_issuers is not None and not isinstance(raw_issuers, list):
        c.add("identity.issuers", f"expected a list of issuers, got {_show(raw_issuers)}")
        raw_issuers = []
    issuers: list[Issuer] = []
    for i, body in enumerate(raw_issuers or []):
        path = f"identity.issuers[{i}]"
        item = c.mapping(body, path, _ISSUER_KEYS)
        audiences = c.strings(item.get("audiences"), f"{path}.audiences")
        if not audiences:
            c.add(f"{path}.audiences", "at least one audience is required")
        groups_claim = item.get("groups_claim")
        issuers.append(
            Issuer(
                issuer=c.string(item.get("issuer"), f"{path}.issuer"),
                audiences=audiences,
                jwks_uri=c.string(item.get("jwks_uri"), f"{path}.jwks_uri"),
                principal_claim=c.string(
                    item.get("principal_claim"), f"{path}.principal_claim", "email"
                ),
                groups_claim=(
                    None if groups_claim is None else c.string(groups_claim, f"{path}.groups_claim")
                ),
                dev_only=c.boolean(item.get("dev_only"), f"{path}.dev_only", False),
            )
        )
    return IdentitySettings(issuers=tuple(issuers), clock_skew_seconds=skew or 0)


def _sessions(c: _Checker, raw: object) -> SessionSettings:
    spec = c.mapping(raw, "sessions", ("retention", "record_rows"))
    retention = c.convert(spec.get("retention"), "sessions.retention", parse_duration, 30 * 86400)
    return SessionSettings(
        retention_seconds=retention if retention is not None else 30 * 86400,
        record_rows=c.integer(spec.get("record_rows"), "sessions.record_rows", 100),
    )


def _execution(c: _Checker, raw: object) -> ExecutionSettings:
    """``execution``; ``inline_result_bytes`` is a size (``1MiB``, ``512KB`` or bytes)
    from 0 (never inline) to 8 MiB.

    >>> parse_policy(_MINIMAL + "execution: {inline_result_bytes: 256KiB}").execution
    ExecutionSettings(inline_result_bytes=262144)
    >>> parse_policy(_MINIMAL).execution.inline_result_bytes
    1048576
    """
    spec = c.mapping(raw, "execution", ("inline_result_bytes",))
    path = "execution.inline_result_bytes"
    size = c.convert(spec.get("inline_result_bytes"), path, parse_size, INLINE_RESULT_BYTES)
    if size is not None and size > MAX_INLINE_RESULT_BYTES:
        c.add(path, f"must be at most {MAX_INLINE_RESULT_BYTES} bytes (8MiB), got {size}")
        size = INLINE_RESULT_BYTES
    return ExecutionSettings(inline_result_bytes=INLINE_RESULT_BYTES if size is None else size)


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate the policy file at ``path`` (an unreadable file is a PolicyError)."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PolicyError([f"cannot read policy file: {reason}"], source=source) from None
    return parse_policy(text, source=source)
