"""Column lineage of a BigQuery query's output, for masking.

:func:`output_lineage` answers, for every column the query returns, which source
table columns its value derives from and whether the value reaches the output
unchanged (``direct``), as a counting aggregate (``counting``), or through
anything else. Masking uses the answer: a sensitive column referenced directly
gets the policy's strategy, a derived one is nullified, a count stays.

The query is parsed with sqlglot (dialect ``bigquery``) and qualified with a
schema built from the caller's :data:`SchemaProvider`; sqlglot expands stars,
``USING``/``NATURAL`` joins and qualifies every column. The lineage itself is
a walk over sqlglot's scopes written here, so every construct this module does
not understand ends in ``unknown`` (fail closed) rather than in a guess.

Known limits (documented, by design): lineage follows the values in the
SELECT list only. Filters (``WHERE ssn LIKE '1%'``) narrow which rows come back
but are not treated as revealing values; the policy's classification and cost
guards are the control for that.

>>> schemas = {"p.d.people": [{"name": "id", "type": "INT64"},
...                           {"name": "email", "type": "STRING"}]}
>>> cols = output_lineage("SELECT id, UPPER(email) AS e, COUNT(*) OVER () FROM d.people",
...                       schemas=schemas.__getitem__, default_project="p")
>>> [(c.name, sorted(c.sources), c.direct, c.counting) for c in cols]
[('id', ['p.d.people.id'], True, False), ('e', ['p.d.people.email'], False, False), \
('f0_', [], False, True)]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, build_scope
from sqlglot.schema import MappingSchema

from bqgate.sql.names import Defaults, resolve_table_name
from bqgate.vocabulary import field_type

__all__ = ["ColumnLineage", "SchemaProvider", "output_lineage"]

SchemaProvider = Callable[[str], Sequence[Mapping[str, Any]]]
"""Table fqn ``project.dataset.table`` -> BigQuery REST ``schema.fields``; KeyError if unknown."""

DIALECT = "bigquery"

# Aggregates whose value is a count: they reveal no source value.
COUNTING_AGGREGATES: tuple[type[exp.Expr], ...] = (
    exp.Count,
    exp.ApproxDistinct,
    exp.CountIf,
)

# Pseudo-columns BigQuery exposes on tables; they carry no row data.
PSEUDO_COLUMNS = frozenset({"_partitiontime", "_partitiondate", "_table_suffix", "_file_name"})


@dataclass(frozen=True)
class ColumnLineage:
    """Where one output column's value comes from.

    Attributes:
        name: Output column name as BigQuery names it (alias, column, or ``f0_``...).
        sources: Every ``project.dataset.table.column`` (column lower-case) it derives from.
        direct: The value is a plain reference to the source column(s), unchanged.
        counting: The value is a counting aggregate (reveals no source value).
        unknown: Why lineage could not be established; the column must then be masked.
        fields: Per-field lineage of a STRUCT output, when known.
    """

    name: str
    sources: frozenset[str] = frozenset()
    direct: bool = False
    counting: bool = False
    unknown: str | None = None
    fields: tuple[ColumnLineage, ...] = field(default=())

    def renamed(self, name: str) -> ColumnLineage:
        """The same lineage under another output name.

        >>> ColumnLineage("a", direct=True).renamed("b").name
        'b'
        """
        return ColumnLineage(
            name, self.sources, self.direct, self.counting, self.unknown, self.fields
        )


def _derived(name: str, parts: Iterable[ColumnLineage]) -> ColumnLineage:
    """Lineage of a value computed from ``parts``: union of sources, not direct."""
    sources: set[str] = set()
    unknown: str | None = None
    for part in parts:
        sources |= part.sources
        for f in _flatten_fields(part):
            sources |= f.sources
            if unknown is None and f.unknown is not None:
                unknown = f.unknown
        if unknown is None and part.unknown is not None:
            unknown = part.unknown
    return ColumnLineage(name, frozenset(sources), False, False, unknown)


def _flatten_fields(lin: ColumnLineage) -> Iterable[ColumnLineage]:
    for f in lin.fields:
        yield f
        yield from _flatten_fields(f)


def _unknown(name: str, reason: str) -> ColumnLineage:
    return ColumnLineage(name, frozenset(), False, False, reason)


def _rest_type(fld: Mapping[str, Any]) -> str:
    """sqlglot type text for one REST schema field.

    >>> _rest_type({"name": "a", "type": "RECORD", "mode": "REPEATED",
    ...             "fields": [{"name": "x", "type": "INTEGER"}]})
    'ARRAY<STRUCT<`x` INT64>>'
    """
    typ = field_type(fld)
    if typ == "RECORD":
        inner = ", ".join(f"`{sub['name']}` {_rest_type(sub)}" for sub in fld.get("fields") or ())
        typ = f"STRUCT<{inner}>" if inner else "STRING"
    elif typ not in {
        "STRING",
        "BYTES",
        "INT64",
        "FLOAT64",
        "NUMERIC",
        "BIGNUMERIC",
        "BOOL",
        "TIMESTAMP",
        "DATE",
        "TIME",
        "DATETIME",
        "GEOGRAPHY",
        "JSON",
        "INTERVAL",
    }:
        typ = "STRING"  # RANGE and future types: the type does not matter for lineage
    if str(fld.get("mode", "")).upper() == "REPEATED":
        typ = f"ARRAY<{typ}>"
    return typ


def _split_table_names(tree: exp.Expr) -> None:
    """Rewrite ```p.d.t``` (one quoted identifier) into catalog/db/name parts, in place."""
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            continue
        parts = [p for p in (table.catalog, table.db) if p]
        parts.extend(table.name.split("."))
        if len(parts) > 3 or "." not in table.name:
            continue
        ids = [exp.to_identifier(p, quoted=True) for p in parts]
        table.set("this", ids[-1])
        table.set("db", ids[-2] if len(ids) >= 2 else None)
        table.set("catalog", ids[-3] if len(ids) == 3 else None)


def _name_anonymous(query: exp.Expr) -> None:
    """Alias unnamed outermost projections ``f0_``, ``f1_``... as BigQuery does."""
    while isinstance(query, exp.SetOperation | exp.Subquery):
        query = query.this
    if not isinstance(query, exp.Select):
        return
    n = 0
    for proj in list(query.expressions):
        if isinstance(proj, exp.Alias | exp.Column | exp.Star) or (
            isinstance(proj, exp.Dot) and isinstance(proj.expression, exp.Identifier)
        ):
            continue
        proj.replace(exp.alias_(proj.copy(), f"f{n}_", quoted=True))
        n += 1


class _Resolver:
    """One call's state: table schemas (cached) and per-scope outputs (memoised)."""

    def __init__(
        self,
        schemas: SchemaProvider,
        default_project: str,
        default_dataset: str | None,
        udfs: frozenset[str],
    ) -> None:
        self._provider = schemas
        self.default_project = default_project
        self.default_dataset = default_dataset
        self.udfs = udfs
        self._tables: dict[str, list[Mapping[str, Any]] | None] = {}
        self._scopes: dict[int, list[ColumnLineage]] = {}
        self._in_progress: set[int] = set()
        self._query_scopes: dict[int, Scope] = {}

    # -- tables -------------------------------------------------------------------------

    def table_fqn(self, table: exp.Table) -> str | None:
        # The one resolver the classifier and the masking rewrite use (bqgate.sql.names).
        return resolve_table_name(table, Defaults(self.default_project, self.default_dataset))

    def table_schema(self, fqn: str) -> list[Mapping[str, Any]] | None:
        """The table's fields, or None when unknown (KeyError) or the lookup failed.

        Any provider failure (a warehouse error, say) makes the table unknown, so its
        columns are masked rather than the whole job failing.
        """
        if fqn not in self._tables:
            try:
                self._tables[fqn] = list(self._provider(fqn))
            except Exception:  # fail closed: the table is unknown, its columns masked
                self._tables[fqn] = None
        return self._tables[fqn]

    def mapping_schema(self, tree: exp.Expr) -> MappingSchema:
        cte_names = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
        nested: dict[str, Any] = {}
        for table in tree.find_all(exp.Table):
            if not table.catalog and not table.db and table.name.lower() in cte_names:
                continue
            fqn = self.table_fqn(table)
            fields = self.table_schema(fqn) if fqn else None
            if fqn is None or fields is None:
                continue
            project, dataset, name = fqn.split(".")
            cols = {str(f["name"]): _rest_type(f) for f in fields}
            nested.setdefault(project, {}).setdefault(dataset, {})[name] = cols
        return MappingSchema(nested, dialect=DIALECT)

    def table_columns(self, table: exp.Table) -> list[ColumnLineage] | str:
        """Direct lineage of every column of a base table, or why it is unknown."""
        fqn = self.table_fqn(table)
        if fqn is None:
            return f"cannot resolve table {table.sql(DIALECT)}"
        fields = self.table_schema(fqn)
        if fields is None:
            return f"schema of {fqn} is unknown"
        return [
            ColumnLineage(str(f["name"]), frozenset({f"{fqn}.{str(f['name']).lower()}"}), True)
            for f in fields
        ]

    # -- scopes -------------------------------------------------------------------------

    def index(self, root: Scope) -> None:
        for scope in root.traverse():
            self._query_scopes[id(scope.expression)] = scope

    def scope_outputs(self, scope: Scope) -> list[ColumnLineage]:
        key = id(scope)
        if key in self._scopes:
            return self._scopes[key]
        if key in self._in_progress:
            return [_unknown("?", "recursive query")]
        self._in_progress.add(key)
        try:
            result = self._scope_outputs(scope)
        finally:
            self._in_progress.discard(key)
        self._scopes[key] = result
        return result

    def _scope_outputs(self, scope: Scope) -> list[ColumnLineage]:
        node = scope.expression
        if isinstance(node, exp.SetOperation):
            branches = getattr(scope, "set_operation_scopes", None) or getattr(
                scope, "union_scopes", []
            )
            if len(branches) != 2:
                return [_unknown("?", "set operation not understood")]
            left, right = (self.scope_outputs(s) for s in branches)
            return _combine_set(left, right, by_name=bool(node.args.get("by_name")))
        if isinstance(node, exp.Select):
            if node.args.get("kind"):
                return [_unknown(p.alias_or_name, "SELECT AS STRUCT/VALUE") for p in node.selects]
            out = []
            for proj in node.selects:
                name = proj.alias_or_name
                if isinstance(proj, exp.Star) or (
                    isinstance(proj, exp.Column) and isinstance(proj.this, exp.Star)
                ):
                    out.append(_unknown("*", "star not expanded (unknown schema)"))
                    continue
                out.append(self.expr(proj.unalias(), scope).renamed(name))
            return out
        return [_unknown("?", f"unsupported query node {type(node).__name__}")]

    def _find_source(self, scope: Scope, alias: str) -> tuple[Scope, Any] | None:
        """The source named ``alias`` seen from ``scope`` (walking out for correlation)."""
        wanted = alias.lower()
        current: Scope | None = scope
        while current is not None:
            for key, source in current.sources.items():
                if key.lower() == wanted:
                    return current, source
            current = current.parent
        return None

    def source_columns(self, owner: Scope, source: Any) -> list[ColumnLineage] | str:
        """All output columns of a FROM source (table or scope)."""
        if isinstance(source, exp.Table):
            cols = self.table_columns(source)
            if isinstance(cols, list) and source.args.get("pivots"):
                return [_derived(c.name, cols) for c in cols]
            return cols
        if isinstance(source, Scope):
            if isinstance(source.expression, exp.Unnest):
                return [self._unnest_element(source)]
            cols = self.scope_outputs(source)
            parent = source.expression.parent
            if isinstance(parent, exp.Subquery) and parent.args.get("pivots"):
                return [_derived(c.name, cols) for c in cols]
            return cols
        return f"unsupported source {type(source).__name__}"

    def _unnest_element(self, scope: Scope) -> ColumnLineage:
        unnest = scope.expression
        return _derived("", (self.expr(e, scope) for e in unnest.expressions))

    # -- expressions --------------------------------------------------------------------

    def resolve_column(self, col: exp.Column, scope: Scope) -> ColumnLineage:
        name = col.name.lower()
        if not col.table:
            found = self._find_source(scope, col.name)
            if found is not None:  # a whole row `t` qualify left unqualified
                return self.whole_row(col.name, found[0], found[1])
            if name in PSEUDO_COLUMNS:
                return ColumnLineage(name)
            why = [
                c
                for c in (self.source_columns(scope, src) for src in scope.sources.values())
                if isinstance(c, str)
            ]
            detail = f" ({'; '.join(why)})" if why else ""
            return _unknown(name, f"cannot resolve column {col.sql(DIALECT)}{detail}")
        if col.args.get("db") or col.args.get("catalog"):
            return _unknown(name, f"cannot resolve column {col.sql(DIALECT)}")
        found = self._find_source(scope, col.table)
        if found is None:
            pivoted = self._pivot_source(scope, col.table)
            if pivoted is not None:
                return pivoted
            return _unknown(name, f"cannot resolve column {col.sql(DIALECT)}")
        owner, source = found
        if isinstance(source, Scope) and isinstance(source.expression, exp.Unnest):
            offset = source.expression.args.get("offset")
            if isinstance(offset, exp.Expr) and offset.name.lower() == name:
                # An offset reveals where an element sits in the array: it derives from it.
                return self._unnest_element(source).renamed(name)
            return self._unnest_element(source)
        cols = self.source_columns(owner, source)
        if isinstance(cols, str):
            return _unknown(name, cols)
        matches = [c for c in cols if c.name.lower() == name]
        if len(matches) == 1:
            return matches[0]
        if not matches and isinstance(source, exp.Table) and name in PSEUDO_COLUMNS:
            return ColumnLineage(name)
        kind = "ambiguous" if matches else "unknown"
        return _unknown(name, f"{kind} column {col.sql(DIALECT)}")

    def _pivot_source(self, scope: Scope, alias: str) -> ColumnLineage | None:
        """Conservative lineage for a column of a PIVOT/UNPIVOT output named ``alias``."""
        for pivot in scope.expression.find_all(exp.Pivot):
            if pivot.alias_or_name.lower() != alias.lower():
                continue
            holder = pivot.parent
            if isinstance(holder, exp.Table):
                cols = self.table_columns(holder)
            elif isinstance(holder, exp.Subquery) and id(holder.this) in self._query_scopes:
                cols = self.scope_outputs(self._query_scopes[id(holder.this)])
            else:
                cols = "unsupported PIVOT source"
            if isinstance(cols, str):
                return _unknown(alias, cols)
            return _derived(alias, cols)
        return None

    def whole_row(self, name: str, owner: Scope, source: Any) -> ColumnLineage:
        cols = self.source_columns(owner, source)
        if isinstance(cols, str):
            return _unknown(name, cols)
        if isinstance(source, Scope) and isinstance(source.expression, exp.Unnest):
            return cols[0].renamed(name)
        base = _derived(name, cols)
        return ColumnLineage(name, base.sources, False, False, None, tuple(cols))

    def expr(self, node: exp.Expr, scope: Scope) -> ColumnLineage:
        """Lineage of one value expression evaluated in ``scope`` (name left empty)."""
        while isinstance(node, exp.Paren | exp.Alias | exp.PropertyEQ):
            node = node.this if not isinstance(node, exp.PropertyEQ) else node.expression
        if isinstance(node, exp.Column):
            if isinstance(node.this, exp.Star):
                return _unknown("*", "star inside an expression")
            return self.resolve_column(node, scope)
        if isinstance(node, exp.TableColumn):
            found = self._find_source(scope, node.name)
            if found is None:
                return _unknown(node.name, f"cannot resolve row {node.name}")
            return self.whole_row(node.name, *found)
        if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Identifier):
            return self._field_access(node, scope)
        if isinstance(node, exp.Struct):
            return self._struct(node, scope)
        inner = node.this if isinstance(node, exp.Window) else node
        if isinstance(inner, COUNTING_AGGREGATES):
            # A count reveals no value, but one computed from a sensitive value (COUNTIF
            # over it, COUNT(DISTINCT it)) says something about it: keep its sources.
            parts = _derived("", (self.expr(c, scope) for c in inner.iter_expressions()))
            return ColumnLineage("", parts.sources, False, True, parts.unknown)
        if isinstance(node, exp.Subquery):
            node = node.this
        if isinstance(node, exp.Query):
            sub = self._query_scopes.get(id(node))
            if sub is None:
                return _unknown("", "subquery not understood")
            return _derived("", self.scope_outputs(sub))
        if isinstance(node, exp.Anonymous) and node.name.lower() in self.udfs:
            return _unknown("", f"user-defined function {node.name}")
        if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
            # A persistent routine: its value derives from its arguments (which the masking
            # rewrite masked). What its body reads is the dry run's to show: the executor
            # always dry-runs a statement that calls a routine and blocks a body that reads
            # a table the classifier did not see, unless readable and free of sensitive data.
            return _derived("", (self.expr(a, scope) for a in node.expression.iter_expressions()))
        if isinstance(node, exp.Command):
            return _unknown("", "unparsed SQL")
        return _derived("", (self.expr(child, scope) for child in node.iter_expressions()))

    def _field_access(self, node: exp.Dot, scope: Scope) -> ColumnLineage:
        base = self.expr(node.this, scope)
        wanted = node.expression.name.lower()
        matches = [f for f in base.fields if f.name.lower() == wanted]
        if len(matches) == 1:
            return matches[0]
        return _derived(wanted, (base,))

    def _struct(self, node: exp.Struct, scope: Scope) -> ColumnLineage:
        fields = []
        for arg in node.expressions:
            if isinstance(arg, exp.PropertyEQ):
                name = arg.this.name
            elif isinstance(arg, exp.Alias | exp.Column | exp.Dot):
                name = arg.alias_or_name
            else:
                name = ""
            fields.append(self.expr(arg, scope).renamed(name))
        base = _derived("", fields)
        return ColumnLineage("", base.sources, False, False, base.unknown, tuple(fields))


def _combine_set(
    left: list[ColumnLineage], right: list[ColumnLineage], *, by_name: bool
) -> list[ColumnLineage]:
    """Output i of a set operation derives from column i of each branch (or by name)."""
    if by_name:
        index = {c.name.lower(): c for c in right}
        pairs = [(c, index.get(c.name.lower())) for c in left]
    elif len(left) != len(right):
        return [_unknown(c.name, "set operation branches differ in width") for c in left]
    else:
        pairs = list(zip(left, right, strict=True))
    return [_merge(a, b) for a, b in pairs]


def _merge(a: ColumnLineage, b: ColumnLineage | None) -> ColumnLineage:
    if b is None:
        return _unknown(a.name, f"set operation column {a.name} has no match")
    fields: tuple[ColumnLineage, ...] = ()
    if a.fields and len(a.fields) == len(b.fields):
        fields = tuple(_merge(x, y) for x, y in zip(a.fields, b.fields, strict=True))
    sources = a.sources | b.sources
    # A branch without sources (a literal, NULL) adds no data: `x UNION ALL NULL` stays direct.
    direct = bool(sources) and (a.direct or not a.sources) and (b.direct or not b.sources)
    return ColumnLineage(
        a.name,
        sources,
        direct,
        a.counting and b.counting,
        a.unknown or b.unknown,
        fields,
    )


def _qualify_tables(tree: exp.Expr, resolver: _Resolver) -> None:
    """Write every table's resolved ``project.dataset`` into the tree (CTEs left alone),
    so sqlglot's qualifier cannot place a name differently than the shared resolver."""
    cte_names = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            continue
        if not table.catalog and not table.db and table.name.lower() in cte_names:
            continue
        fqn = resolver.table_fqn(table)
        if fqn is None:
            continue
        project, dataset, _ = fqn.split(".", 2)
        table.set("catalog", exp.to_identifier(project, quoted=True))
        table.set("db", exp.to_identifier(dataset, quoted=True))


def output_lineage(
    sql: str, *, schemas: SchemaProvider, default_project: str, default_dataset: str | None = None
) -> list[ColumnLineage]:
    """Lineage of every output column of the final SELECT in ``sql``.

    Args:
        sql: GoogleSQL text; a script's last query statement is the one analysed.
        schemas: Table fqn -> REST schema fields (KeyError when unknown).
        default_project: The job's project (``dataset.table`` references resolve there).
        default_dataset: ``dataset`` or ``project.dataset`` for bare ``table`` references.

    Returns:
        One :class:`ColumnLineage` per output column, in order; ``[]`` when the
        output's shape cannot be established (unparsable SQL, unexpanded ``*``) or
        there is no SELECT. An empty list must be treated as "mask everything".

    >>> schemas = {"p.d.t": [{"name": "ssn", "type": "STRING"}]}.__getitem__
    >>> [(c.name, sorted(c.sources), c.direct) for c in output_lineage(
    ...     "WITH a AS (SELECT ssn AS x FROM `p.d.t`) SELECT x FROM a UNION ALL SELECT 'n'",
    ...     schemas=schemas, default_project="p")]
    [('x', ['p.d.t.ssn'], True)]
    >>> output_lineage("DELETE FROM d.t WHERE TRUE", schemas=schemas, default_project="p")
    []
    """
    try:
        statements = [s for s in sqlglot.parse(sql, read=DIALECT) if s is not None]
    except SqlglotError:
        return []
    udfs = frozenset(
        name.name.lower()
        for s in statements
        if isinstance(s, exp.Create) and str(s.args.get("kind", "")).upper() == "FUNCTION"
        for name in s.this.find_all(exp.Table)
    )
    queries = [s for s in statements if isinstance(s, exp.Query)]
    if not queries:
        return []
    tree = queries[-1]
    if tree.find(exp.Command) is not None:
        return []
    resolver = _Resolver(schemas, default_project, default_dataset, udfs)
    try:
        _split_table_names(tree)
        _name_anonymous(tree)
        path = Defaults(default_project, default_dataset).dataset_path
        _qualify_tables(tree, resolver)
        tree = qualify(
            tree,
            dialect=DIALECT,
            schema=resolver.mapping_schema(tree),
            catalog=path[0] if path else default_project,
            db=path[1] if path else None,
            validate_qualify_columns=False,
            quote_identifiers=False,
        )
        root = build_scope(tree)
        if root is None:
            return []
        resolver.index(root)
        outputs = resolver.scope_outputs(root)
    except (SqlglotError, RecursionError, KeyError, ValueError, TypeError, AttributeError):
        return []
    if any(c.name == "*" and c.unknown for c in outputs):
        return []
    return outputs
