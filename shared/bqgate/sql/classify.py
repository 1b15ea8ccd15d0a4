"""Classify BigQuery SQL against the policy: allow, approve or block.

Every statement of a script is parsed with sqlglot (dialect ``bigquery``), mapped
to a statement class through the declarative tables below, its tables are
resolved to ``project.dataset.table`` and looked up in the policy. The script
gets the strictest decision of its statements. Anything that cannot be parsed,
resolved or recognised is blocked (fail closed).

>>> from bqgate.policy import parse_policy
>>> policy = parse_policy('''
... version: 1
... tiers: [dev]
... datasets: {p.d: dev}
... groups: {agents: {members: [a@x.com]}}
... rules: [{groups: [agents], tiers: [dev], read: allow, write: allow}]
... ''')
>>> c = classify("SELECT name FROM d.t", policy=policy, principal="a@x.com", groups=(),
...              default_project="p")
>>> c.decision, c.statements, c.tables
('allow', ('SELECT',), ('p.d.t',))
>>> classify("DELETE FROM p.d.t WHERE 1 = 1", policy=policy, principal="a@x.com", groups=(),
...          default_project="p").reasons
('statement 1 (DELETE): WHERE clause is always true (whole-table DELETE) on p.d.t',)
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.tokenizer_core import Token

from bqgate.policy import ACTION_RANK, Policy
from bqgate.sql.fold import always_true

# sqlglot logs a warning for every statement it falls back to exp.Command on; the
# classifier reports those itself, so keep them off stderr unless logging is configured.
logging.getLogger("sqlglot").addHandler(logging.NullHandler())

DIALECT = "bigquery"

# --------------------------------------------------------------------------- risk tables

# Statement node type -> statement kind (CREATE gets its object kind appended).
KIND_BY_TYPE: Mapping[type[exp.Expr], str] = MappingProxyType(
    {
        exp.Select: "SELECT",
        exp.Union: "SELECT",
        exp.Intersect: "SELECT",
        exp.Except: "SELECT",
        exp.Subquery: "SELECT",
        exp.Values: "SELECT",
        exp.Insert: "INSERT",
        exp.Update: "UPDATE",
        exp.Delete: "DELETE",
        exp.Merge: "MERGE",
        exp.Create: "CREATE",
        exp.Drop: "DROP",
        exp.Alter: "ALTER",
        exp.TruncateTable: "TRUNCATE",
        exp.Grant: "GRANT",
        exp.Revoke: "REVOKE",
        exp.Export: "EXPORT_DATA",
        exp.LoadData: "LOAD_DATA",
        exp.Declare: "DECLARE",
        exp.Set: "SET",
        exp.Transaction: "BEGIN_TRANSACTION",
        exp.Commit: "COMMIT",
        exp.Rollback: "ROLLBACK",
        exp.EndStatement: "END",
        exp.Execute: "EXECUTE_IMMEDIATE",
        exp.ExecuteSql: "EXECUTE_IMMEDIATE",
        exp.Command: "COMMAND",
    }
)

# Leading keyword of an exp.Command (sqlglot's fallback) -> statement kind.
COMMAND_KINDS: Mapping[str, str] = MappingProxyType(
    {
        "EXECUTE": "EXECUTE_IMMEDIATE",
        "CALL": "CALL",
        "BEGIN": "BEGIN",
        "END": "END",
        "IF": "IF",
        "ELSE": "IF",
        "ELSEIF": "IF",
        "LOOP": "LOOP",
        "WHILE": "WHILE",
        "REPEAT": "REPEAT",
        "FOR": "FOR",
        "BREAK": "BREAK",
        "LEAVE": "LEAVE",
        "CONTINUE": "CONTINUE",
        "ITERATE": "ITERATE",
        "RETURN": "RETURN",
        "RAISE": "RAISE",
        "ASSERT": "ASSERT",
        "CREATE": "CREATE",
        "ALTER": "ALTER",
        "DROP": "DROP",
        "UNDROP": "UNDROP",
        "GRANT": "GRANT",
        "REVOKE": "REVOKE",
        "EXPORT": "EXPORT_DATA",
        "LOAD": "LOAD_DATA",
        "INSERT": "INSERT",
        "UPDATE": "UPDATE",
        "DELETE": "DELETE",
        "MERGE": "MERGE",
        "TRUNCATE": "TRUNCATE",
    }
)

# Statement kind -> policy statement class. Kinds not listed are blocked as unknown.
CLASS_BY_KIND: Mapping[str, str] = MappingProxyType(
    {
        "SELECT": "read",
        "INSERT": "write",
        "UPDATE": "write",
        "DELETE": "write",
        "MERGE": "write",
        "CREATE": "ddl",
        "DROP": "ddl",
        "UNDROP": "ddl",
        "ALTER": "ddl",
        "TRUNCATE": "ddl",
        "GRANT": "dcl",
        "REVOKE": "dcl",
        "EXPORT_DATA": "export",
        "LOAD_DATA": "load",
        "DECLARE": "procedural",
        "SET": "procedural",
        "BEGIN_TRANSACTION": "procedural",
        "COMMIT": "procedural",
        "ROLLBACK": "procedural",
        "END": "procedural",
        "EXECUTE_IMMEDIATE": "procedural",
        "CALL": "procedural",
        "BEGIN": "procedural",
        "IF": "procedural",
        "LOOP": "procedural",
        "WHILE": "procedural",
        "REPEAT": "procedural",
        "FOR": "procedural",
        "BREAK": "procedural",
        "LEAVE": "procedural",
        "CONTINUE": "procedural",
        "ITERATE": "procedural",
        "RETURN": "procedural",
        "RAISE": "procedural",
        "ASSERT": "procedural",
        "COMMAND": "procedural",
    }
)

# Arguments of a statement node whose tables are the statement's targets (written,
# created, dropped, granted on); every other table in the statement is read.
TARGET_ARGS: Mapping[type[exp.Expr], tuple[str, ...]] = MappingProxyType(
    {
        exp.Insert: ("this",),
        exp.Update: ("this",),
        exp.Delete: ("this", "tables"),
        exp.Merge: ("this",),
        exp.Create: ("this",),
        exp.Drop: ("this", "tables"),
        exp.Alter: ("this",),
        exp.TruncateTable: ("expressions",),
        exp.LoadData: ("this",),
        exp.Grant: ("securable",),
        exp.Revoke: ("securable",),
    }
)

# Statement classes whose data flow out of the source tables (sensitive columns matter).
COPYING_CLASSES = frozenset({"write", "ddl", "export"})

# Table-valued functions that reach outside BigQuery: statement class "external".
EXTERNAL_FUNCTIONS = frozenset({"EXTERNAL_QUERY"})

CLASS_LABELS: Mapping[str, str] = MappingProxyType(
    {
        "read": "read",
        "write": "write",
        "ddl": "DDL",
        "dcl": "DCL",
        "procedural": "procedural SQL",
        "export": "EXPORT DATA",
        "load": "LOAD DATA",
        "external": "EXTERNAL_QUERY",
    }
)

_VERBS: Mapping[str, str] = MappingProxyType(
    {"allow": "is allowed", "approve": "needs approval", "block": "is blocked by policy"}
)

# Above this many characters the normalized SQL is rendered from the token stream
# instead of sqlglot's generator (which costs ~2 ms per KB on big scripts).
GENERATE_MAX_CHARS = 20_000

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CACHE_SIZE = 2048

# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class StatementVerdict:
    """The decision for one statement of a script."""

    kind: str
    decision: str
    reasons: tuple[str, ...]
    tables: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "kind": self.kind,
            "decision": self.decision,
            "reasons": list(self.reasons),
            "tables": list(self.tables),
        }


@dataclass(frozen=True)
class Classification:
    """The decision for a whole SQL text (the strictest over its statements)."""

    decision: str
    reasons: tuple[str, ...]
    statements: tuple[str, ...]
    tables: tuple[str, ...]
    written_tables: tuple[str, ...]
    normalized_sql: str
    statement_hash: str
    per_statement: tuple[StatementVerdict, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (keys: decision, reasons, statements, tables, ...)."""
        return {
            "decision": self.decision,
            "reasons": list(self.reasons),
            "statements": list(self.statements),
            "tables": list(self.tables),
            "written_tables": list(self.written_tables),
            "normalized_sql": self.normalized_sql,
            "statement_hash": self.statement_hash,
            "per_statement": [v.to_dict() for v in self.per_statement],
        }


# --------------------------------------------------------------------------- public API


def classify(
    sql: str,
    *,
    policy: Policy,
    principal: str,
    groups: Iterable[str],
    default_project: str,
    default_dataset: str | None = None,
) -> Classification:
    """Classify ``sql`` for ``principal`` (member of ``groups``) under ``policy``.

    ``groups`` are added to the principal's static groups from the policy. Results
    are cached (LRU) per SQL text, policy digest, principal, groups and defaults.

    >>> from bqgate.policy import parse_policy
    >>> policy = parse_policy("version: 1\\ntiers: [dev]\\ndatasets: {}\\n"
    ...                       "groups: {g: {members: [a@x.com]}}\\nrules: []")
    >>> classify("SELECT 1 -- ; DROP TABLE x", policy=policy, principal="a@x.com", groups=(),
    ...          default_project="p").decision
    'allow'
    >>> classify("SELEKT 1", policy=policy, principal="a@x.com", groups=(),
    ...          default_project="p").decision
    'block'
    """
    effective = policy.groups_for(principal, groups)
    key = (sql, policy.digest, principal, effective, default_project, default_dataset)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    result = classify_uncached(
        sql,
        policy=policy,
        principal=principal,
        groups=effective,
        default_project=default_project,
        default_dataset=default_dataset,
    )
    with _cache_lock:
        _cache[key] = result
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return result


_cache: OrderedDict[tuple[Any, ...], Classification] = OrderedDict()
_cache_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every cached classification."""
    with _cache_lock:
        _cache.clear()


def classify_uncached(
    sql: str,
    *,
    policy: Policy,
    principal: str,
    groups: Iterable[str],
    default_project: str,
    default_dataset: str | None = None,
) -> Classification:
    """:func:`classify` without the cache (what the benchmark measures)."""
    ctx = _Context.build(policy, principal, groups, default_project, default_dataset)
    if not sql.strip():
        return _unparseable(sql, "empty SQL")
    try:
        dialect = Dialect.get_or_raise(DIALECT)
        tokens = dialect.tokenize(sql)
        parsed = dialect.parser().parse(tokens, sql)
    except Exception as exc:  # any sqlglot failure (ParseError, TokenError, ...) blocks
        return _unparseable(sql, f"sqlglot cannot parse the SQL: {_trim(exc)}")
    statements = [s for s in parsed if s is not None]
    if not statements:
        return _unparseable(sql, "no SQL statement (only comments or semicolons)")

    verdicts: list[StatementVerdict] = []
    normalized: list[str] = []
    all_tables: set[str] = set()
    written: set[str] = set()
    for index, stmt in enumerate(statements, start=1):
        analysis = _judge(index, stmt, ctx)
        verdicts.append(analysis.verdict)
        all_tables.update(analysis.verdict.tables)
        written.update(analysis.written)
        if len(sql) <= GENERATE_MAX_CHARS:
            normalized.append(_normalize(stmt))

    decision = max((v.decision for v in verdicts), key=ACTION_RANK.__getitem__)
    reasons = _unique(r for v in verdicts if v.decision == decision for r in v.reasons)
    text = ";\n".join(normalized) if len(sql) <= GENERATE_MAX_CHARS else render_tokens(tokens)
    return Classification(
        decision=decision,
        reasons=reasons,
        statements=tuple(v.kind for v in verdicts),
        tables=tuple(sorted(all_tables)),
        written_tables=tuple(sorted(written)),
        normalized_sql=text,
        statement_hash=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        per_statement=tuple(verdicts),
    )


def statement_kind(stmt: exp.Expr) -> str:
    """The kind of one parsed statement (``UNKNOWN:<Type>`` if the tables do not know it).

    >>> import sqlglot
    >>> statement_kind(sqlglot.parse_one("CREATE VIEW p.d.v AS SELECT 1", read="bigquery"))
    'CREATE_VIEW'
    >>> statement_kind(sqlglot.parse_one("WITH a AS (SELECT 1) SELECT * FROM a", read="bigquery"))
    'SELECT'
    """
    kind = KIND_BY_TYPE.get(type(stmt))
    if kind is None:
        return f"UNKNOWN:{type(stmt).__name__}"
    if kind == "CREATE":
        obj = str(stmt.args.get("kind") or "").strip().upper().replace(" ", "_")
        return f"CREATE_{obj}" if obj else "CREATE"
    if kind == "COMMAND":
        word = str(stmt.this or "").strip().upper()
        return COMMAND_KINDS.get(word, "COMMAND")
    return kind


def statement_class(kind: str) -> str | None:
    """Policy statement class of a kind (``None`` if unknown).

    >>> statement_class("CREATE_TABLE"), statement_class("MERGE"), statement_class("UNKNOWN:X")
    ('ddl', 'write', None)
    """
    return CLASS_BY_KIND.get(kind.split("_", 1)[0] if kind.startswith("CREATE") else kind)


# --------------------------------------------------------------------------- internals


@dataclass(frozen=True)
class _Context:
    policy: Policy
    principal: str
    groups: frozenset[str]
    in_policy_group: bool
    default_project: str
    default_dataset: str | None
    projects: frozenset[str]

    @classmethod
    def build(
        cls,
        policy: Policy,
        principal: str,
        groups: Iterable[str],
        default_project: str,
        default_dataset: str | None,
    ) -> _Context:
        effective = policy.groups_for(principal, groups)
        project = default_project
        dataset = default_dataset
        if dataset and "." in dataset:  # "project.dataset" given as the default dataset
            project, dataset = dataset.rsplit(".", 1)
        return cls(
            policy=policy,
            principal=principal,
            groups=effective,
            in_policy_group=bool(effective & policy.known_groups()),
            default_project=project,
            default_dataset=dataset or None,
            projects=frozenset(name.rsplit(".", 1)[0].lower() for name in policy.datasets)
            | {project.lower()},
        )


@dataclass
class _Ref:
    """One table (or dataset, routine, metadata view) a statement touches."""

    fqn: str
    project: str
    dataset: str
    target: bool
    alias: str
    problem: str | None = None


@dataclass
class _Scan:
    """Everything one walk over a statement collects."""

    refs: list[_Ref] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    nested: list[str] = field(default_factory=list)
    columns: list[exp.Column] = field(default_factory=list)
    stars: list[exp.Star] = field(default_factory=list)


@dataclass(frozen=True)
class _Analysis:
    verdict: StatementVerdict
    written: tuple[str, ...]


class _Findings:
    """(action, reason) pairs for one statement."""

    def __init__(self, index: int, kind: str) -> None:
        self.prefix = f"statement {index} ({kind}): "
        self.items: list[tuple[str, str]] = []

    def add(self, action: str, reason: str) -> None:
        self.items.append((action, self.prefix + reason))

    def decision(self) -> tuple[str, tuple[str, ...]]:
        if not self.items:
            return "block", (self.prefix + "nothing to judge (blocked by default)",)
        top = max((a for a, _ in self.items), key=ACTION_RANK.__getitem__)
        return top, _unique(r for a, r in self.items if a == top)


def _judge(index: int, stmt: exp.Expr, ctx: _Context) -> _Analysis:
    kind = statement_kind(stmt)
    found = _Findings(index, kind)
    cls = statement_class(kind)

    if not ctx.in_policy_group:
        found.add("block", f"principal {ctx.principal} is not in any policy group")
    if isinstance(stmt, exp.Command):
        found.add(
            "block",
            f"sqlglot does not understand this statement ({_snippet(stmt)}); "
            "unsupported syntax is blocked",
        )
    if cls is None:
        found.add("block", f"unknown statement type {type(stmt).__name__} is blocked")
        cls = "procedural"

    scan = _scan(stmt, ctx)
    for problem in scan.problems:
        found.add("block", problem)
    for nested in scan.nested:
        found.add("block", f"{nested} nested inside {kind} is not supported")

    accesses: list[tuple[str, _Ref]] = []
    for ref in scan.refs:
        if ref.problem:
            found.add("block", ref.problem)
            continue
        if ref.target:
            accesses.append((cls, ref))
        else:
            accesses.append(("read", ref))
            if cls == "export":
                accesses.append(("export", ref))
    for access_cls, ref in accesses:
        _judge_access(found, ctx, access_cls, ref)

    if scan.external:
        _judge_tableless(found, ctx, "external")
    if cls == "procedural" or (
        not any(r.target for r in scan.refs) and (cls not in ("read", "export") or not scan.refs)
    ):
        _judge_tableless(found, ctx, cls)

    if isinstance(stmt, exp.Delete | exp.Update | exp.Merge):
        _whole_table_rules(found, stmt, scan)
    if cls in COPYING_CLASSES and not isinstance(stmt, exp.Delete | exp.Drop | exp.TruncateTable):
        _sensitive_copy_rules(found, stmt, scan, ctx)

    decision, reasons = found.decision()
    tables = tuple(sorted({r.fqn for r in scan.refs if r.fqn}))
    written = tuple(sorted({r.fqn for r in scan.refs if r.target and r.fqn}))
    return _Analysis(StatementVerdict(kind, decision, reasons, tables), written)


def _judge_access(found: _Findings, ctx: _Context, cls: str, ref: _Ref) -> None:
    tier = ctx.policy.tier_of(ref.project, ref.dataset)
    label = CLASS_LABELS[cls]
    if tier is None:
        found.add(
            "block",
            f"{label} on {ref.fqn}: dataset {ref.project}.{ref.dataset} is not in the policy "
            "(deny by default)",
        )
        return
    action = ctx.policy.action_for(ctx.groups, tier, cls)
    if action is None:
        found.add(
            "block",
            f"{label} on {ref.fqn}: no policy rule for {_groups(ctx)} on tier {tier}",
        )
        return
    found.add(action, f"{label} on {ref.fqn} ({tier}) {_VERBS[action]}")


def _judge_tableless(found: _Findings, ctx: _Context, cls: str) -> None:
    label = CLASS_LABELS[cls]
    if cls == "read":
        if ctx.in_policy_group:
            found.add("allow", "read without tables is allowed")
        return
    actions = [
        a
        for tier in ctx.policy.tiers
        if (a := ctx.policy.action_for(ctx.groups, tier, cls)) is not None
    ]
    if not actions:
        found.add("block", f"{label} is blocked by policy (no rule for {_groups(ctx)})")
        return
    action = max(actions, key=ACTION_RANK.__getitem__)
    found.add(action, f"{label} {_VERBS[action]}")


def _groups(ctx: _Context) -> str:
    return "groups " + ", ".join(sorted(ctx.groups)) if ctx.groups else "a principal with no group"


# --------------------------------------------------------------------------- the walk


def _scan(stmt: exp.Expr, ctx: _Context) -> _Scan:
    """One iterative, CTE-scope-aware walk collecting tables and risky nodes."""
    scan = _Scan()
    target_keys = TARGET_ARGS.get(type(stmt), ())
    stack: list[tuple[exp.Expr, frozenset[str], bool]] = []
    _push_children(stack, stmt, frozenset(), False, target_keys)
    root_is_merge = isinstance(stmt, exp.Merge)
    while stack:
        node, ctes, target = stack.pop()
        if isinstance(node, exp.Table):
            ref = _resolve(node, ctes, target, ctx, stmt, scan)
            if ref is not None:
                scan.refs.append(ref)
        elif isinstance(node, exp.Column):
            scan.columns.append(node)
        elif isinstance(node, exp.Star):
            if not isinstance(node.parent, exp.Count):
                scan.stars.append(node)
        elif isinstance(node, exp.Anonymous):
            if node.name.upper() in EXTERNAL_FUNCTIONS:
                scan.external.append(node.name.upper())
        elif isinstance(node, exp.Command):
            scan.problems.append(
                f"sqlglot does not understand part of this statement ({_snippet(node)}); "
                "unsupported syntax is blocked"
            )
        elif type(node) in KIND_BY_TYPE:
            nested_kind = statement_kind(node)
            merge_action = root_is_merge and isinstance(node, exp.Insert | exp.Update)
            if statement_class(nested_kind) != "read" and not merge_action:
                scan.nested.append(nested_kind)
        _push_children(stack, node, ctes, target, ())
    return scan


def _push_children(
    stack: list[tuple[exp.Expr, frozenset[str], bool]],
    node: exp.Expr,
    ctes: frozenset[str],
    target: bool,
    target_keys: tuple[str, ...],
) -> None:
    args = node.args
    with_ = args.get("with_") or args.get("with")
    if isinstance(with_, exp.With):
        # CTE i sees CTEs 0..i-1 (and itself when RECURSIVE); the rest of the node sees all.
        names = [c.alias_or_name.lower() for c in with_.expressions]
        recursive = bool(with_.args.get("recursive"))
        for i, cte in enumerate(with_.expressions):
            visible = ctes | set(names[:i]) | ({names[i]} if recursive else set())
            stack.append((cte, frozenset(visible), False))
        ctes = ctes | set(names)
    else:
        with_ = None
    for key, value in args.items():
        if value is None or value is with_:
            continue
        is_target = target or key in target_keys
        if isinstance(value, list):
            for item in value:
                if isinstance(item, exp.Expr) and not isinstance(item, _LEAVES):
                    stack.append((item, ctes, is_target))
        elif isinstance(value, exp.Expr) and not isinstance(value, _LEAVES):
            stack.append((value, ctes, is_target))


# Nodes that never hold a table, column or statement: the walk does not descend into them.
_LEAVES = (exp.Identifier, exp.Literal, exp.Var, exp.DataType, exp.Boolean, exp.Null)


def _resolve(
    table: exp.Table,
    ctes: frozenset[str],
    target: bool,
    ctx: _Context,
    stmt: exp.Expr,
    scan: _Scan,
) -> _Ref | None:
    """Resolve a table node to a fully qualified reference (None for CTEs and builtins)."""
    this = table.this
    catalog, db, name = table.catalog, table.db, table.name
    alias = table.alias_or_name.lower() if isinstance(this, exp.Identifier) else ""

    if isinstance(stmt, exp.Grant | exp.Revoke) and str(stmt.args.get("kind") or "").upper() in (
        "SCHEMA",
        "DATASET",
    ):
        # GRANT ... ON SCHEMA p.d: sqlglot reads "p.d" as db.table.
        catalog, db, name = db, name, ""
        this = None
    if this is None or (isinstance(this, exp.Identifier) and not name):
        if not db:
            return _problem(f"cannot resolve object {table.sql(dialect=DIALECT)!r}", target)
        project = catalog or ctx.default_project
        return _Ref(f"{project}.{db}", project, db, target, alias)
    if isinstance(this, exp.Dot):
        return _problem(
            f"table name {table.sql(dialect=DIALECT)} has too many parts (unresolved)", target
        )
    if isinstance(this, exp.Anonymous):
        fname = this.name.upper()
        if fname in EXTERNAL_FUNCTIONS and not db:
            scan.external.append(fname)
            return None
        if db:
            project = catalog or ctx.default_project
            return _Ref(f"{project}.{db}.{this.name}", project, db, target, alias)
        return _problem(f"unknown table function {this.name}() is blocked", target)
    if not isinstance(this, exp.Identifier):
        return None  # a builtin table function (ML.PREDICT, ...): its table arguments are walked

    if not catalog and not db and name.lower() in ctes:
        return None  # a CTE reference, in scope
    upper_name, upper_db = name.upper(), db.upper()
    if upper_name.startswith("INFORMATION_SCHEMA.") or upper_db == "INFORMATION_SCHEMA":
        return _information_schema(table, catalog, db, name, target, ctx)
    if not db:
        if not ctx.default_dataset:
            return _problem(
                f"table {name} has no dataset and no default dataset is set (unresolved)", target
            )
        return _Ref(
            f"{ctx.default_project}.{ctx.default_dataset}.{name}",
            ctx.default_project,
            ctx.default_dataset,
            target,
            alias,
        )
    project = catalog or ctx.default_project
    return _Ref(f"{project}.{db}.{name}", project, db, target, alias)


def _information_schema(
    table: exp.Table, catalog: str, db: str, name: str, target: bool, ctx: _Context
) -> _Ref:
    region_level = (
        not db
        or db.upper() == "INFORMATION_SCHEMA"
        or db.lower().startswith("region-")
        or (not catalog and db.lower() in ctx.projects)
    )
    shown = table.sql(dialect=DIALECT, comments=False).split(" AS ")[0]
    if region_level:
        return _problem(
            f"project-level INFORMATION_SCHEMA ({shown}) is not tied to a dataset and is blocked",
            target,
        )
    project = catalog or ctx.default_project
    return _Ref(f"{project}.{db}.{name}", project, db, target, "")


def _problem(message: str, target: bool) -> _Ref:
    return _Ref("", "", "", target, "", problem=message)


# --------------------------------------------------------------------------- safety rules


def _whole_table_rules(found: _Findings, stmt: exp.Expr, scan: _Scan) -> None:
    targets = sorted({r.fqn for r in scan.refs if r.target and r.fqn}) or ["the target table"]
    where_target = ", ".join(targets)
    if isinstance(stmt, exp.Delete | exp.Update):
        verb = "DELETE" if isinstance(stmt, exp.Delete) else "UPDATE"
        where = stmt.args.get("where")
        if where is None:
            found.add("block", f"no WHERE clause (whole-table {verb}) on {where_target}")
        elif always_true(where.this):
            found.add(
                "block", f"WHERE clause is always true (whole-table {verb}) on {where_target}"
            )
        elif not _mentions_target(where.this, stmt):
            found.add(
                "block",
                f"WHERE clause references no column of the target (whole-table {verb}) "
                f"on {where_target}",
            )
        return
    assert isinstance(stmt, exp.Merge)
    whens_node = stmt.args.get("whens")
    whens = list(whens_node.expressions) if isinstance(whens_node, exp.Whens) else []
    on = stmt.args.get("on")
    on_always = on is None or always_true(on) or not _mentions_any_column(on)
    for when in whens:
        then = when.args.get("then")
        destructive = isinstance(then, exp.Update) or (
            isinstance(then, exp.Var) and then.name.upper() == "DELETE"
        )
        if not destructive:
            continue
        action = "DELETE" if isinstance(then, exp.Var) else "UPDATE"
        if when.args.get("source"):
            found.add(
                "block",
                f"WHEN NOT MATCHED BY SOURCE THEN {action} touches every target row missing from "
                f"the source (whole-table MERGE) on {where_target}",
            )
        elif when.args.get("matched") and on_always:
            found.add(
                "block",
                f"ON condition is always true with WHEN MATCHED THEN {action} "
                f"(whole-table MERGE) on {where_target}",
            )


def _mentions_any_column(node: exp.Expr) -> bool:
    return any(isinstance(n, exp.Column) for n in node.walk())


def _mentions_target(predicate: exp.Expr, stmt: exp.Expr) -> bool:
    """Does the predicate use a column of the target row (outside subqueries, or qualified)?"""
    target = stmt.this if isinstance(stmt.this, exp.Table) else None
    if target is None:
        tables = stmt.args.get("tables") or []
        target = tables[0] if tables and isinstance(tables[0], exp.Table) else None
    names = {target.alias_or_name.lower(), target.name.lower()} if target is not None else set()
    for node in predicate.walk():
        if not isinstance(node, exp.Column):
            continue
        inside_subquery = False
        parent = node.parent
        while parent is not None and parent is not predicate:
            if isinstance(parent, exp.Query | exp.Subquery):
                inside_subquery = True
                break
            parent = parent.parent
        if not inside_subquery or node.table.lower() in names:
            return True
    return False


def _sensitive_copy_rules(found: _Findings, stmt: exp.Expr, scan: _Scan, ctx: _Context) -> None:
    """Writes (and CTAS, EXPORT) whose values come from sensitive columns need approval."""
    sensitive: dict[str, Mapping[str, str]] = {}
    by_alias: dict[str, str] = {}
    for ref in scan.refs:
        if not ref.fqn or ref.problem:
            continue
        cols = ctx.policy.sensitive_for(ref.fqn)
        if ref.alias:
            by_alias.setdefault(ref.alias, ref.fqn)
        by_alias.setdefault(ref.fqn.rsplit(".", 1)[-1].lower(), ref.fqn)
        if cols:
            sensitive[ref.fqn] = cols
    if not sensitive:
        return
    aliases_of = {fqn: {a for a, f in by_alias.items() if f == fqn} for fqn in sensitive}
    hits: dict[str, set[str]] = {}

    def hit(fqn: str, columns: Iterable[str]) -> None:
        hits.setdefault(fqn, set()).update(columns)

    excluded = _lhs_columns(stmt)
    for col in scan.columns:
        if id(col) in excluded:
            continue
        name, qualifier = col.name.lower(), col.table.lower()
        if isinstance(col.this, exp.Star):
            continue  # t.* handled with the stars below
        candidates = (
            [by_alias[qualifier]] if qualifier and qualifier in by_alias else list(sensitive)
        )
        for fqn in candidates:
            if name in sensitive.get(fqn, _NO_COLUMNS):
                hit(fqn, [name])
        if not qualifier:
            for fqn, aliases in aliases_of.items():
                if name in aliases:  # SELECT c FROM customers c: the whole row as a STRUCT
                    hit(fqn, sensitive[fqn])
    for star in scan.stars:
        qualifier = ""
        parent = star.parent
        if isinstance(parent, exp.Column) and parent.this is star:
            qualifier = parent.table.lower()
        except_ = star.args.get("except_") or star.args.get("except") or []
        dropped = {e.name.lower() for e in except_ if isinstance(e, exp.Expr)}
        candidates = (
            [by_alias[qualifier]] if qualifier and qualifier in by_alias else list(sensitive)
        )
        for fqn in candidates:
            hit(fqn, [c for c in sensitive.get(fqn, _NO_COLUMNS) if c not in dropped])
    for fqn in sorted(hits):
        if hits[fqn]:
            names = ", ".join(f"{fqn}.{c}" for c in sorted(hits[fqn]))
            found.add(
                "approve",
                f"copies values of sensitive column(s) {names} out of reach of masking "
                "(needs approval)",
            )


_NO_COLUMNS: Mapping[str, str] = MappingProxyType({})


def _lhs_columns(stmt: exp.Expr) -> set[int]:
    """Ids of columns that carry no value: INSERT column lists, SET targets, ``* EXCEPT``."""
    out: set[int] = set()
    for node in stmt.walk():
        if isinstance(node, exp.Schema) and isinstance(node.parent, exp.Insert):
            out.update(id(c) for c in node.expressions if isinstance(c, exp.Column))
        elif isinstance(node, exp.Insert) and isinstance(node.this, exp.Tuple):
            out.update(id(c) for c in node.this.expressions if isinstance(c, exp.Column))
        elif isinstance(node, exp.Star):
            for key in ("except_", "except"):
                dropped = node.args.get(key) or []
                out.update(id(c) for c in dropped if isinstance(c, exp.Column))
        elif isinstance(node, exp.Update):
            for assignment in node.expressions:
                if isinstance(assignment, exp.EQ) and isinstance(assignment.this, exp.Column):
                    out.add(id(assignment.this))
    return out


# --------------------------------------------------------------------------- helpers


def _unparseable(sql: str, reason: str) -> Classification:
    text = " ".join(sql.split())
    verdict = StatementVerdict(
        "UNPARSEABLE", "block", (f"statement 1 (UNPARSEABLE): {reason}",), ()
    )
    return Classification(
        decision="block",
        reasons=verdict.reasons,
        statements=("UNPARSEABLE",),
        tables=(),
        written_tables=(),
        normalized_sql=text,
        statement_hash=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        per_statement=(verdict,),
    )


def _normalize(stmt: exp.Expr) -> str:
    try:
        return stmt.sql(dialect=DIALECT, comments=False)
    except Exception:  # generation failure: fall back to sqlglot's repr, still deterministic
        return repr(stmt)


def render_tokens(tokens: Iterable[Token]) -> str:
    """Canonical text of a token stream: comments dropped, single spaces, keywords upper-case.

    Quoted identifiers and string literals are re-quoted with escapes, so different
    token streams never render to the same text.

    >>> render_tokens(Dialect.get_or_raise("bigquery").tokenize("select `a b`, 'x y' -- c"))
    "SELECT `a b` , 'x y'"
    """
    parts: list[str] = []
    for token in tokens:
        kind = token.token_type.name
        text = token.text
        if kind == "IDENTIFIER":
            parts.append("`" + text.replace("\\", "\\\\").replace("`", "\\`") + "`")
        elif kind.endswith("STRING"):
            prefix = _STRING_PREFIXES.get(kind, kind + ":")
            parts.append(prefix + "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'")
        elif kind in ("VAR", "NUMBER"):
            parts.append(text)
        else:
            parts.append(text.upper())
    return " ".join(parts)


_STRING_PREFIXES: Mapping[str, str] = MappingProxyType(
    {"STRING": "", "RAW_STRING": "r", "BYTE_STRING": "b"}
)


def _trim(exc: BaseException, limit: int = 200) -> str:
    """First line of an exception message without ANSI colour codes, at most ``limit`` chars.

    >>> _trim(ValueError("Invalid expression\\n  SELECT \\x1b[4mx\\x1b[0m"))
    'Invalid expression'
    """
    text = _ANSI.sub("", str(exc)).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _snippet(node: exp.Expr, limit: int = 60) -> str:
    try:
        text = " ".join(node.sql(dialect=DIALECT, comments=False).split())
    except Exception:
        text = type(node).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
