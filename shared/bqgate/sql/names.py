"""One scope-aware resolver for every name a BigQuery statement references.

The classifier (deny by default), column lineage (masking's second line), the
masking rewrite and ``bqgate explain`` all ask this module "which object is this
name?", so they cannot disagree. It answers for every kind of name BigQuery has:

* tables and views (``table``), wildcard tables (``wildcard``), ``INFORMATION_SCHEMA``
  views (``metadata``), datasets (``dataset``: ``CREATE SCHEMA``, ``GRANT ... ON SCHEMA``);
* routines: persistent UDFs (``routine``), table functions (``table_function``),
  procedures (``procedure``, ``CALL``); temporary functions are ``temp_function``;
* models (``model``: ``ML.PREDICT(MODEL m, ...)``, ``CREATE MODEL``);
* connections (``connection``: ``connection_id =>`` arguments, ``EXTERNAL_QUERY``,
  ``OBJ.MAKE_REF``, ``REMOTE WITH CONNECTION``).

Paths get BigQuery's defaults: ``a.b.c`` is project ``a``, dataset ``b``; ``b.c`` is in
the project the job runs in; a bare ``c`` needs the default dataset (and takes that
dataset's project). A backquoted path with dots (```p.d.t```) is split like an
unquoted one. A CTE name shadows a table only where the CTE is visible: CTE *i* of a
``WITH`` sees CTEs *0..i-1* (and itself when ``RECURSIVE``), the statement's body sees
them all, a subquery's CTEs are invisible outside it.

The walk visits every node of the statement, so no table, function or connection
escapes judgement: what it cannot place is a *problem* (the classifier blocks it).

>>> import sqlglot
>>> stmt = sqlglot.parse_one(
...     "WITH c AS (SELECT * FROM sales.customers) "
...     "SELECT analytics.f(c.x), ML.PREDICT(MODEL m.churn, (SELECT 1)) FROM c JOIN t USING (x)",
...     read="bigquery")
>>> names = resolve(stmt, Defaults("p", "p.ds"))
>>> [(r.kind, r.fqn, r.role) for r in names.refs]  # doctest: +NORMALIZE_WHITESPACE
[('table', 'p.sales.customers', 'read'), ('routine', 'p.analytics.f', 'read'),
 ('model', 'p.m.churn', 'read'), ('table', 'p.ds.t', 'read')]
>>> names.problems
()
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from sqlglot import exp

DIALECT = "bigquery"

RefKind = Literal[
    "table",
    "wildcard",
    "metadata",
    "dataset",
    "routine",
    "table_function",
    "procedure",
    "temp_function",
    "model",
    "connection",
]
Role = Literal["read", "target"]

#: Kinds whose rows a statement reads or writes (the dry run's ``referencedTables``).
TABLE_KINDS: frozenset[str] = frozenset({"table", "wildcard", "metadata"})
#: Kinds that are code or models run on the caller's behalf.
ROUTINE_KINDS: frozenset[str] = frozenset({"routine", "table_function", "procedure", "model"})

# Arguments of a statement node whose objects are the statement's targets (written,
# created, dropped, granted on); every other object in the statement is read.
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

#: Function namespaces that are BigQuery's own (``ML.PREDICT``, ``NET.HOST``...): a call
#: qualified by one of these is a builtin, never a routine in a dataset of that name.
BUILTIN_NAMESPACES: frozenset[str] = frozenset(
    {"ML", "AI", "NET", "SAFE", "KEYS", "AEAD", "HLL_COUNT", "KLL_QUANTILES", "OBJ"}
)

#: sqlglot nodes of ML functions whose ``this`` argument is a model.
MODEL_FUNCTIONS: tuple[type[exp.Expr], ...] = (
    exp.Predict,
    exp.GenerateEmbedding,
    exp.GenerateText,
    exp.GenerateTable,
    exp.GenerateBool,
    exp.GenerateInt,
    exp.GenerateDouble,
    exp.MLForecast,
    exp.MLTranslate,
)

#: Builtins that send data out of BigQuery (to another database or to a hosted model):
#: the classifier judges them as the statement class ``external``.
EXTERNAL_NODES: tuple[type[exp.Expr], ...] = (
    exp.AIGenerate,
    exp.AIEmbed,
    exp.AISimilarity,
    exp.GenerateEmbedding,
    exp.GenerateText,
    exp.GenerateTable,
    exp.GenerateBool,
    exp.GenerateInt,
    exp.GenerateDouble,
    exp.MLTranslate,
)
#: The same, as names (of ``AI.*`` / ``ML.*`` calls sqlglot leaves anonymous, and
#: unqualified ones).
EXTERNAL_NAMES: frozenset[str] = frozenset(
    {
        "EXTERNAL_QUERY",
        "ML.GENERATE_TEXT",
        "ML.GENERATE_EMBEDDING",
        "ML.GENERATE_TEXT_EMBEDDING",
        "ML.TRANSLATE",
        "ML.UNDERSTAND_TEXT",
        "ML.PROCESS_DOCUMENT",
        "ML.TRANSCRIBE",
        "ML.ANNOTATE_IMAGE",
        "OBJ.FETCH_METADATA",
        "OBJ.GET_ACCESS_URL",
    }
)

#: Keyword arguments that name a connection (``AI.GENERATE(..., connection_id => 'p.us.c')``).
CONNECTION_KWARGS: frozenset[str] = frozenset({"connection_id", "connection"})

#: Builtin table functions called without a dataset (their table arguments are walked).
BUILTIN_TABLE_FUNCTIONS: frozenset[str] = frozenset(
    {"UNNEST", "GAP_FILL", "APPENDS", "CHANGES", "RANGE_SESSIONIZE", "VECTOR_SEARCH"}
)

#: System variables that change how names resolve: a statement setting one is refused.
RESOLUTION_VARIABLES: frozenset[str] = frozenset(
    {"dataset_id", "dataset_project_id", "project_id", "location"}
)

# Nodes that never hold a name: the walk does not descend into them.
_LEAVES = (exp.Identifier, exp.Literal, exp.Var, exp.DataType, exp.Boolean, exp.Null)

_CONNECTION_RESOURCE = re.compile(r"^projects/([^/]+)/locations/([^/]+)/connections/([^/]+)$")


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Defaults:
    """What BigQuery fills into partial paths.

    Attributes:
        project: The project the job runs in (``dataset.table`` resolves there).
        dataset: The default dataset, ``dataset`` (in ``project``) or ``project.dataset``;
            only bare ``table`` names use it.

    >>> Defaults("job-p", "other-p.ds").dataset_path
    ('other-p', 'ds')
    >>> Defaults("job-p", "ds").dataset_path, Defaults("job-p").dataset_path
    (('job-p', 'ds'), None)
    """

    project: str
    dataset: str | None = None

    @classmethod
    def of(cls, project: str, default_dataset: Mapping[str, str] | str | None) -> Defaults:
        """From a job's project and its REST ``defaultDataset`` (or ``p.d`` text).

        >>> Defaults.of("p", {"projectId": "q", "datasetId": "d"})
        Defaults(project='p', dataset='q.d')
        >>> Defaults.of("p", {"datasetId": "d"}).dataset_path
        ('p', 'd')
        """
        if isinstance(default_dataset, Mapping):
            ds = default_dataset.get("datasetId")
            dp = default_dataset.get("projectId") or project
            return cls(project, f"{dp}.{ds}" if ds else None)
        return cls(project, default_dataset or None)

    @property
    def dataset_path(self) -> tuple[str, str] | None:
        if not self.dataset:
            return None
        if "." in self.dataset:
            project, dataset = self.dataset.rsplit(".", 1)
            return project, dataset
        return self.project, self.dataset


@dataclass(frozen=True)
class Ref:
    """One object a statement references.

    Attributes:
        kind: See :data:`RefKind`.
        fqn: ``project.dataset.name`` (``project.location.connection`` for connections,
            ``project.dataset`` for datasets).
        project, dataset, name: The parts (``dataset`` is the location for a connection).
        role: ``target`` when the statement writes, creates, drops or grants on it.
        node: The sqlglot node naming it (a ``Table`` for table-like sources).
        alias: The name a FROM source goes by in its scope (explicit alias, else the
            last path part); empty for everything that is not a FROM source.
        view: The ``INFORMATION_SCHEMA`` view name (upper case) of a ``metadata`` ref.
        level: ``dataset``, ``project`` or ``region`` for a ``metadata`` ref.
    """

    kind: RefKind
    fqn: str
    project: str
    dataset: str
    name: str
    role: Role
    node: exp.Expr = field(compare=False, repr=False)
    alias: str = ""
    view: str = ""
    level: str = ""

    @property
    def target(self) -> bool:
        return self.role == "target"


@dataclass(frozen=True)
class Names:
    """Everything :func:`resolve` found in one statement.

    Attributes:
        refs: Every resolved reference, in the order the walk met them.
        problems: Names that cannot be placed (each one blocks the statement).
        external: Builtins that send data out of BigQuery (``EXTERNAL_QUERY``, ``AI.*``).
        temp_functions: Temporary functions the statement itself defines (upper case).
    """

    refs: tuple[Ref, ...]
    problems: tuple[str, ...]
    external: tuple[str, ...]
    temp_functions: frozenset[str] = frozenset()

    def of_kind(self, *kinds: str) -> tuple[Ref, ...]:
        return tuple(r for r in self.refs if r.kind in kinds)

    @property
    def tables(self) -> tuple[Ref, ...]:
        """References whose rows the statement reads or writes."""
        return self.of_kind(*TABLE_KINDS)


# --------------------------------------------------------------------------- paths


def split_path(parts: Iterable[str]) -> list[str]:
    """Path parts with backquoted dotted parts split (```p.d`.t`` -> ``p, d, t``).

    >>> split_path(["p.d", "t"]), split_path(["", "d", "t"])
    (['p', 'd', 't'], ['d', 't'])
    """
    out: list[str] = []
    for part in parts:
        if part:
            out.extend(part.split("."))
    return out


def place(parts: list[str], defaults: Defaults) -> tuple[str, str, str] | str:
    """``(project, dataset, name)`` of a 1- to 3-part path, or why it cannot be placed.

    >>> place(["t"], Defaults("p", "q.d")), place(["d", "t"], Defaults("p", "q.d"))
    (('q', 'd', 't'), ('p', 'd', 't'))
    >>> place(["t"], Defaults("p"))
    'has no dataset and no default dataset is set'
    >>> place(["a", "b", "c", "d"], Defaults("p"))
    'has too many parts'
    """
    if any(not p for p in parts) or not parts:
        return "has an empty part"
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return defaults.project, parts[0], parts[1]
    if len(parts) == 1:
        path = defaults.dataset_path
        if path is None:
            return "has no dataset and no default dataset is set"
        return path[0], path[1], parts[0]
    return "has too many parts"


def table_path(table: exp.Table) -> list[str]:
    """The path parts of a ``Table`` node naming a table (split, unresolved).

    >>> import sqlglot
    >>> table_path(sqlglot.parse_one("SELECT 1 FROM `p.d`.t", read="bigquery").find(exp.Table))
    ['p', 'd', 't']
    """
    name = table.name if isinstance(table.this, exp.Identifier) else ""
    return split_path([table.catalog, table.db, name])


def resolve_table_name(table: exp.Table, defaults: Defaults) -> str | None:
    """``project.dataset.table`` of a plain table node, ``None`` if it cannot be placed.

    (CTE shadowing is not considered here; :func:`resolve` does that.)

    >>> import sqlglot
    >>> t = sqlglot.parse_one("SELECT 1 FROM d.t", read="bigquery").find(exp.Table)
    >>> resolve_table_name(t, Defaults("p", "q.x"))
    'p.d.t'
    """
    if not isinstance(table.this, exp.Identifier):
        return None
    placed = place(table_path(table), defaults)
    return ".".join(placed) if isinstance(placed, tuple) else None


def connection_path(text: str, defaults: Defaults) -> tuple[str, str, str] | None:
    """``(project, location, connection)`` of a connection id, ``None`` if malformed.

    >>> connection_path("p.us.c", Defaults("x")), connection_path("eu.c", Defaults("x"))
    (('p', 'us', 'c'), ('x', 'eu', 'c'))
    >>> connection_path("projects/p/locations/us/connections/c", Defaults("x"))
    ('p', 'us', 'c')
    >>> connection_path("c", Defaults("x")) is None
    True
    """
    text = text.strip()
    match = _CONNECTION_RESOURCE.match(text)
    if match:
        return match.group(1), match.group(2), match.group(3)
    parts = text.split(".")
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    if len(parts) == 2 and all(parts):
        return defaults.project, parts[0], parts[1]
    return None


def _qualifier_parts(node: exp.Expr) -> list[str] | None:
    """The identifiers of a function call's qualifier (``a.b`` in ``a.b.f()``)."""
    if isinstance(node, exp.Identifier | exp.Var):
        return [str(node.this)]
    if isinstance(node, exp.Column):
        if not isinstance(node.this, exp.Identifier):
            return None
        return [p for p in (node.catalog, node.db, node.table, node.name) if p]
    if isinstance(node, exp.Dot):
        left = _qualifier_parts(node.this)
        right = _qualifier_parts(node.expression)
        if left is None or right is None:
            return None
        return left + right
    return None


def function_name(node: exp.Func) -> str:
    """The SQL name of a function node (``Anonymous`` keeps the name as written).

    >>> import sqlglot
    >>> function_name(sqlglot.parse_one("SELECT my_fn(1)", read="bigquery").find(exp.Func))
    'my_fn'
    """
    if isinstance(node, exp.Anonymous):
        this = node.this
        return this.name if isinstance(this, exp.Identifier) else str(this)
    return node.sql_name()


# --------------------------------------------------------------------------- the walk


def resolve(stmt: exp.Expr, defaults: Defaults, temp_functions: Iterable[str] = ()) -> Names:
    """Resolve every name in one parsed statement (see the module docstring).

    ``temp_functions`` are temporary functions earlier statements of the script defined.
    """
    walker = _Walker(stmt, defaults, temp_functions)
    walker.run()
    return Names(
        refs=tuple(walker.refs),
        problems=tuple(dict.fromkeys(walker.problems)),
        external=tuple(dict.fromkeys(walker.external)),
        temp_functions=frozenset(walker.temp_functions),
    )


# Context of a node in the walk: which CTE names it sees, whether it is (inside) a
# statement target, and what a Table directly below it stands for.
_Frame = tuple[exp.Expr, frozenset[str], bool, str]


class _Walker:
    def __init__(self, stmt: exp.Expr, defaults: Defaults, temp_functions: Iterable[str]) -> None:
        self.stmt = stmt
        self.defaults = defaults
        self.refs: list[Ref] = []
        self.problems: list[str] = []
        self.external: list[str] = []
        self.temp_functions = _temp_functions(stmt) | {t.upper() for t in temp_functions}
        self.grant_on_dataset = isinstance(stmt, exp.Grant | exp.Revoke) and str(
            stmt.args.get("kind") or ""
        ).upper() in ("SCHEMA", "DATASET")

    # -- helpers ----------------------------------------------------------------------

    def _add(
        self,
        kind: RefKind,
        placed: tuple[str, str, str],
        target: bool,
        node: exp.Expr,
        alias: str = "",
        view: str = "",
        level: str = "",
    ) -> None:
        project, dataset, name = placed
        fqn = f"{project}.{dataset}.{name}" if name else f"{project}.{dataset}"
        role: Role = "target" if target else "read"
        self.refs.append(Ref(kind, fqn, project, dataset, name, role, node, alias, view, level))

    def _problem(self, message: str) -> None:
        self.problems.append(message)

    # -- the walk ---------------------------------------------------------------------

    def run(self) -> None:
        if isinstance(self.stmt, exp.Set):
            self._set_variables(self.stmt)
        stack: list[_Frame] = []
        self._push_children(
            stack, self.stmt, frozenset(), False, TARGET_ARGS.get(type(self.stmt), ())
        )
        while stack:
            node, ctes, target, role_hint = stack.pop()
            descend = self._visit(node, ctes, target, role_hint, stack)
            if descend:
                self._push_children(stack, node, ctes, target, ())

    def _push_children(
        self,
        stack: list[_Frame],
        node: exp.Expr,
        ctes: frozenset[str],
        target: bool,
        target_keys: tuple[str, ...],
    ) -> None:
        args = node.args
        items: list[_Frame] = []
        with_ = args.get("with_") or args.get("with")
        if isinstance(with_, exp.With):
            names = [c.alias_or_name.lower() for c in with_.expressions]
            recursive = bool(with_.args.get("recursive"))
            for i, cte in enumerate(with_.expressions):
                visible = ctes | set(names[:i]) | ({names[i]} if recursive else set())
                items.append((cte, frozenset(visible), False, ""))
            ctes = ctes | set(names)
        else:
            with_ = None
        model_arg = "this" if isinstance(node, MODEL_FUNCTIONS) else None
        for key, value in args.items():
            if value is None or value is with_:
                continue
            is_target = target or key in target_keys
            hint = "model" if key == model_arg else ""
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, exp.Expr) and not isinstance(item, _LEAVES):
                        items.append((item, ctes, is_target, hint))
            elif isinstance(value, exp.Expr) and not isinstance(value, _LEAVES):
                items.append((value, ctes, is_target, hint))
        # Reversed, so the stack pops children in source order (refs come out in order).
        stack.extend(reversed(items))

    def _visit(
        self,
        node: exp.Expr,
        ctes: frozenset[str],
        target: bool,
        hint: str,
        stack: list[_Frame],
    ) -> bool:
        """Judge one node; return whether to walk its children."""
        if isinstance(node, exp.Table):
            return self._table(node, ctes, target, hint, stack)
        if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
            return self._qualified_call(node, ctes, target, stack)
        if isinstance(node, exp.Anonymous):
            self._anonymous_call(node, node)
            return True
        if isinstance(node, exp.Kwarg):
            key = node.this.name.lower() if isinstance(node.this, exp.Expr) else ""
            if key in CONNECTION_KWARGS:
                self._connection_arg(node.expression, node)
            return True
        if isinstance(node, exp.RemoteWithConnectionModelProperty):
            conn = node.this
            if isinstance(conn, exp.Table):
                parts = table_path(conn)
                found = connection_path(".".join(parts), self.defaults)
                if found is None:
                    self._problem(f"cannot resolve connection {conn.sql(dialect=DIALECT)}")
                else:
                    self._add("connection", found, False, conn)
            return False
        if isinstance(node, EXTERNAL_NODES) and isinstance(node, exp.Func):
            self.external.append(node.sql_name())
        if isinstance(node, exp.Set):
            self._set_variables(node)
        return True

    # -- tables -----------------------------------------------------------------------

    def _table(
        self,
        table: exp.Table,
        ctes: frozenset[str],
        target: bool,
        hint: str,
        stack: list[_Frame],
    ) -> bool:
        this = table.this
        shown = _Shown(table)
        if self.grant_on_dataset and table is self.stmt.args.get("securable"):
            # GRANT ... ON SCHEMA p.d: sqlglot reads "p.d" as db.table.
            parts = split_path([table.catalog, table.db, table.name])
            return self._dataset(parts, shown, target, table)
        if this is None or (isinstance(this, exp.Identifier) and not table.name):
            # CREATE/DROP SCHEMA [p.]d: the path names a dataset.
            return self._dataset(split_path([table.catalog, table.db]), shown, target, table)
        if isinstance(this, exp.Dot):
            self._problem(f"table name {shown} has too many parts (unresolved)")
            return False
        if isinstance(this, exp.Anonymous):
            self._table_function(table, this, target)
            self._push_args(this, ctes, target, stack)
            return self._walk_table_extras(table, ctes, target, stack)
        if isinstance(this, exp.Func):
            # A builtin table-valued function (ML.PREDICT, VECTOR_SEARCH, GAP_FILL, ...):
            # its arguments (tables, models) are walked.
            stack.append((this, ctes, target, ""))
            return self._walk_table_extras(table, ctes, target, stack)
        if not isinstance(this, exp.Identifier):
            self._problem(f"cannot resolve {shown}")
            return False

        parts = table_path(table)
        if isinstance(self.stmt, exp.Create) and table is _created_object(self.stmt):
            kind = str(self.stmt.args.get("kind") or "").upper()
            if kind == "FUNCTION" and _is_temporary(self.stmt) and len(parts) == 1:
                return self._walk_table_extras(table, ctes, target, stack)  # its own temp fn
            if kind in ("FUNCTION", "TABLE FUNCTION", "PROCEDURE", "MODEL"):
                ref_kind: RefKind = {
                    "FUNCTION": "routine",
                    "TABLE FUNCTION": "table_function",
                    "PROCEDURE": "procedure",
                    "MODEL": "model",
                }[kind]  # type: ignore[assignment]
                self._placed(ref_kind, parts, shown, target, table)
                return self._walk_table_extras(table, ctes, target, stack)
        if hint == "model":
            self._placed("model", parts, shown, target, table)
            return self._walk_table_extras(table, ctes, target, stack)
        if len(parts) == 1 and parts[0].lower() in ctes:
            return self._walk_table_extras(table, ctes, target, stack)  # a CTE in scope
        upper = [p.upper() for p in parts]
        if "INFORMATION_SCHEMA" in upper:
            self._information_schema(table, parts, upper, shown, target)
            return self._walk_table_extras(table, ctes, target, stack)
        alias = table.alias if table.alias else (parts[-1] if parts else "")
        kind2: RefKind = "wildcard" if parts and "*" in parts[-1] else "table"
        self._placed(kind2, parts, shown, target, table, alias=alias)
        return self._walk_table_extras(table, ctes, target, stack)

    def _walk_table_extras(
        self, table: exp.Table, ctes: frozenset[str], target: bool, stack: list[_Frame]
    ) -> bool:
        """Walk what hangs off a Table besides its name (FOR SYSTEM_TIME, joins, pivots...)."""
        for key, value in table.args.items():
            if key in ("this", "db", "catalog", "alias") or value is None:
                continue
            values = value if isinstance(value, list) else [value]
            for item in values:
                if isinstance(item, exp.Expr) and not isinstance(item, _LEAVES):
                    stack.append((item, ctes, target, ""))
        return False

    def _placed(
        self,
        kind: RefKind,
        parts: list[str],
        shown: object,
        target: bool,
        node: exp.Expr,
        alias: str = "",
    ) -> None:
        placed = place(parts, self.defaults)
        if isinstance(placed, str):
            label = {"table": "table", "wildcard": "table"}.get(kind, kind.replace("_", " "))
            bare = parts[-1] if parts else shown
            self._problem(f"{label} {bare if len(parts) == 1 else shown} {placed} (unresolved)")
            return
        self._add(kind, placed, target, node, alias=alias)

    def _dataset(self, parts: list[str], shown: object, target: bool, node: exp.Expr) -> bool:
        if len(parts) == 1:
            self._add("dataset", (self.defaults.project, parts[0], ""), target, node)
        elif len(parts) == 2:
            self._add("dataset", (parts[0], parts[1], ""), target, node)
        else:
            self._problem(f"cannot resolve object {shown!r}")
        return False

    def _information_schema(
        self, table: exp.Table, parts: list[str], upper: list[str], shown: object, target: bool
    ) -> None:
        """``[project.]dataset|region-x.INFORMATION_SCHEMA.VIEW``."""
        at = upper.index("INFORMATION_SCHEMA")
        view = ".".join(upper[at + 1 :])
        before = parts[:at]
        if len(before) == 2:
            project, qualifier = before
        elif len(before) == 1:
            project, qualifier = self.defaults.project, before[0]
        elif not before:
            # Unqualified: BigQuery reads it at project/region level.
            self._add(
                "metadata",
                (self.defaults.project, "", "INFORMATION_SCHEMA." + view),
                target,
                table,
                view=view,
                level="project",
            )
            return
        else:
            self._problem(f"cannot resolve {str(shown).split(' AS ')[0]} (too many parts)")
            return
        level = "region" if qualifier.lower().startswith("region-") else "dataset"
        placed = (project, qualifier, "INFORMATION_SCHEMA." + view)
        self._add("metadata", placed, target, table, view=view, level=level)

    def _table_function(self, table: exp.Table, call: exp.Anonymous, target: bool) -> None:
        name = function_name(call)
        parts = split_path([table.catalog, table.db, name])
        if len(parts) == 1:
            upper = parts[0].upper()
            if upper == "EXTERNAL_QUERY":
                self.external.append(upper)
                args = call.expressions
                if args:
                    self._connection_arg(args[0], call)
                else:
                    self._problem("EXTERNAL_QUERY without a connection id")
                return
            if upper not in BUILTIN_TABLE_FUNCTIONS:
                self._problem(f"unknown table function {name}() is blocked")
            return
        if len(parts) == 2 and parts[0].upper() in BUILTIN_NAMESPACES:
            return  # ML.FEATURE_INFO(...) and friends: builtins
        self._placed("table_function", parts, table.sql(dialect=DIALECT), target, table)

    # -- functions --------------------------------------------------------------------

    def _qualified_call(
        self, dot: exp.Dot, ctes: frozenset[str], target: bool, stack: list[_Frame]
    ) -> bool:
        call = dot.expression
        assert isinstance(call, exp.Func)
        qualifier = _qualifier_parts(dot.this)
        name = function_name(call)
        shown = _Shown(dot)
        if qualifier is None:
            self._problem(f"cannot resolve the function in {str(shown)[:80]}")
            stack.append((dot.this, ctes, target, ""))
            stack.append((call, ctes, target, ""))
            return False
        parts = split_path([*qualifier, name])
        if len(parts) == 2 and parts[0].upper() in BUILTIN_NAMESPACES:
            full = f"{parts[0].upper()}.{parts[1].upper()}"
            if parts[0].upper() == "AI" or full in EXTERNAL_NAMES:
                self.external.append(full)
            if full == "OBJ.MAKE_REF" and len(call.expressions) > 1:
                self._connection_arg(call.expressions[1], call)
            # Walk the call itself (arguments, models) but not as an anonymous routine.
            self._push_args(call, ctes, target, stack)
            return False
        self._placed("routine", parts, _Shown(dot, 80), target, dot)
        self._push_args(call, ctes, target, stack)
        return False

    def _push_args(
        self, call: exp.Func, ctes: frozenset[str], target: bool, stack: list[_Frame]
    ) -> None:
        if isinstance(call, EXTERNAL_NODES):
            self.external.append(call.sql_name())
        if isinstance(call, exp.Anonymous):
            for arg in call.expressions:
                if isinstance(arg, exp.Expr) and not isinstance(arg, _LEAVES):
                    stack.append((arg, ctes, target, ""))
            return
        self._push_children(stack, call, ctes, target, ())

    def _anonymous_call(self, call: exp.Anonymous, node: exp.Expr) -> None:
        """An unqualified call sqlglot does not know, or a backquoted ```p.d.f```()."""
        name = function_name(call)
        parts = split_path([name])
        if len(parts) > 1:
            if len(parts) == 2 and parts[0].upper() in BUILTIN_NAMESPACES:
                return
            self._placed("routine", parts, name, False, node)
            return
        upper = name.upper()
        if upper == "EXTERNAL_QUERY":
            self.external.append(upper)
            if call.expressions:
                self._connection_arg(call.expressions[0], call)
            return
        if upper in self.temp_functions:
            self._add("temp_function", ("", "", name), False, node)
        # Otherwise a builtin sqlglot does not model: BigQuery resolves an unqualified
        # function name to a builtin or a temporary function only, never to a dataset's.

    def _connection_arg(self, value: exp.Expr | None, node: exp.Expr) -> None:
        if not isinstance(value, exp.Literal) or not value.is_string:
            self._problem("a connection must be named by a string literal")
            return
        found = connection_path(str(value.this), self.defaults)
        if found is None:
            self._problem(f"cannot resolve connection {str(value.this)!r}")
            return
        self._add("connection", found, False, node)

    def _set_variables(self, node: exp.Set) -> None:
        for item in node.expressions:
            for param in item.find_all(exp.Parameter):
                name = param.name.lower()
                if isinstance(param.this, exp.Parameter):
                    name = param.this.name.lower()
                if name in RESOLUTION_VARIABLES:
                    self._problem(f"SET @@{name} changes how names resolve and is not allowed")


class _Shown:
    """A node's SQL, generated only if a problem message needs it (generation is costly)."""

    __slots__ = ("limit", "node")

    def __init__(self, node: exp.Expr, limit: int = 200) -> None:
        self.node = node
        self.limit = limit

    def __str__(self) -> str:
        return self.node.sql(dialect=DIALECT, comments=False)[: self.limit]

    def __repr__(self) -> str:
        return repr(str(self))


def _created_object(stmt: exp.Create) -> exp.Expr | None:
    this: exp.Expr | None = stmt.this
    if isinstance(this, exp.UserDefinedFunction | exp.Schema):
        inner: exp.Expr | None = this.this
        return inner
    return this


def _is_temporary(stmt: exp.Create) -> bool:
    props = stmt.args.get("properties")
    return isinstance(props, exp.Properties) and any(
        isinstance(p, exp.TemporaryProperty) for p in props.expressions
    )


def _temp_functions(stmt: exp.Expr) -> set[str]:
    """Names of temporary functions a statement defines (``CREATE TEMP FUNCTION f``)."""
    if not isinstance(stmt, exp.Create) or not _is_temporary(stmt):
        return set()
    obj = _created_object(stmt)
    if isinstance(obj, exp.Table) and not obj.db:
        return {obj.name.upper()}
    return set()


def script_temp_functions(statements: Iterable[exp.Expr]) -> frozenset[str]:
    """Temporary function names a whole script defines (visible to later statements)."""
    found: set[str] = set()
    for stmt in statements:
        found |= _temp_functions(stmt)
    return frozenset(found)


def iter_sources(names: Names) -> Iterator[Ref]:
    """Table-like references that are FROM sources (they have an alias)."""
    return (r for r in names.refs if r.alias)
