"""Mask at the source: rewrite every read of a protected table.

Before a statement runs, each reference to a table with sensitive columns — in FROM and
JOIN, subqueries and CTEs (correlated ones too), ``MERGE ... USING``, ``INSERT ... SELECT``
and ``UPDATE ... FROM`` sources, TABLE arguments of table functions, wildcard tables whose
match includes it, ``FOR SYSTEM_TIME AS OF`` — is replaced by a derived table that exposes
each sensitive column as its masked expression (:mod:`bqgate.sql.masks`) under its own
name, keeping the alias::

    FROM sales.customers AS c
    -> FROM (SELECT * REPLACE (<last4>(ssn) AS ssn, ...) FROM sales.customers) AS c

So every operation of the agent's SQL sees masked values only: nothing downstream has to
be right about what leaks. A write's *target* is never rewritten (that would write masks
back into the data); the classifier sends such writes to a human.

References are found by the one resolver (:mod:`bqgate.sql.names`) the classifier uses.
Statements of a script without a protected read are passed through as written.

Query parameters: the HMAC key travels as two BYTES parameters (named, or positional when
the agent's own parameters are positional — :attr:`Rewrite.parameters` is then the merged
list in the order of the ``?`` marks in the rewritten text).

>>> schema = {"p.s.c": [{"name": "id", "type": "INTEGER"}, {"name": "ssn", "type": "STRING"}]}
>>> out = rewrite("SELECT c.ssn FROM s.c AS c WHERE c.id = 1", defaults=Defaults("p"),
...               sensitive_for=lambda t: {"ssn": "last4"} if t == "p.s.c" else {},
...               schema_for=schema.__getitem__)
>>> out.changed, out.masked
(True, (('p.s.c', 'ssn', 'last4'),))
>>> out.sql.startswith("SELECT c.ssn FROM (SELECT * EXCEPT (__bqgate_h0x, __bqgate_h0n) REPLACE (")
True
>>> out.sql.endswith(" FROM s.c)) AS c WHERE c.id = 1")
True
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.tokenizer_core import TokenType

from bqgate.sql import masks
from bqgate.sql.names import Defaults, Ref, resolve, script_temp_functions
from bqgate.vocabulary import field_type

DIALECT = "bigquery"

SensitiveFor = Callable[[str], Mapping[str, str]]
SchemaFor = Callable[[str], Sequence[Mapping[str, Any]]]

#: Placeholder names for derived tables are salted per process: agent SQL cannot guess them.
_MARK_SALT = secrets.token_hex(8)

#: Prefix of the markers positional ``?`` parameters become while the statement is rewritten.
_POS_MARK = "bqgate_pos_"

# Table arguments that stay on the base table inside the derived table.
_INNER_ARGS = ("version", "sample")
# Table arguments that move to the derived table (they apply to the source as a whole).
_OUTER_ARGS = ("pivots", "joins", "laterals")
_NAME_ARGS = ("this", "db", "catalog", "alias")


class RewriteError(Exception):
    """The statement reads a protected table in a way the rewrite cannot mask (fail closed)."""


@dataclass(frozen=True)
class Rewrite:
    """The statement that will run, and what was masked in it.

    Attributes:
        sql: The text to send to BigQuery (the original when nothing was protected).
        changed: Whether any reference was rewritten.
        masked: ``(table, column, strategy)`` of every masked column (deduplicated).
        parameters: REST ``queryParameters`` to send: the agent's plus the key's.
        parameter_mode: ``NAMED`` or ``POSITIONAL`` (``None`` when there are none).
        tables: Every table and wildcard the statement reads (resolved).
        marked_sql: The rewritten text with the agent's ``?`` marks still named (what
            derived statements, such as the blast-radius count, are built from; pass
            them through :meth:`finalize`).
    """

    sql: str
    changed: bool
    masked: tuple[tuple[str, str, str], ...] = ()
    parameters: tuple[Mapping[str, Any], ...] = ()
    parameter_mode: str | None = None
    tables: tuple[str, ...] = ()
    marked_sql: str = ""
    positional: bool = False
    agent_parameters: tuple[Mapping[str, Any], ...] = ()
    key: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def masked_sources(self) -> frozenset[str]:
        """``table.column`` (lower case) of every column masked at the source."""
        return frozenset(f"{t}.{c}".lower() for t, c, _ in self.masked)

    def finalize(self, marked: str) -> tuple[str, tuple[Mapping[str, Any], ...], str | None]:
        """SQL text, parameters and mode for a statement derived from :attr:`marked_sql`."""
        return _finalize(marked, self.agent_parameters, self.positional, self.key)


def rewrite(
    sql: str,
    *,
    defaults: Defaults,
    sensitive_for: SensitiveFor,
    schema_for: SchemaFor,
    parameters: Sequence[Mapping[str, Any]] = (),
    parameter_mode: str | None = None,
    hmac_key: bytes | None = None,
    unmasked_for: Callable[[str], frozenset[str]] | None = None,
) -> Rewrite:
    """Rewrite ``sql`` so that it reads only masked values of protected tables.

    Args:
        sql: The agent's GoogleSQL text (one statement or a script).
        defaults: The job's project and default dataset.
        sensitive_for: Table fqn -> ``{column: strategy}`` (the policy's).
        schema_for: Table fqn -> REST schema fields (KeyError when unknown).
        parameters, parameter_mode: The agent's query parameters.
        hmac_key: The deployment's masking key (needed when an ``hmac`` column is read).
        unmasked_for: Table fqn -> columns the caller may read unmasked (``{"*"}``: all).

    Raises:
        RewriteError: when a protected table is read where it cannot be masked, its schema
            is unknown, or an ``hmac`` column is read without a key.
    """
    positional = _is_positional(parameters, parameter_mode)
    text = _mark_positional(sql) if positional else sql
    try:
        statements = [s for s in sqlglot.parse(text, read=DIALECT) if s is not None]
    except Exception as exc:  # the classifier parsed it; a failure here is a bug: fail closed
        raise RewriteError(f"the statement cannot be parsed for masking: {exc}") from None

    masked: dict[tuple[str, str, str], None] = {}
    splices: dict[str, str] = {}
    needs_key = False
    changed = False
    rendered: list[str] = []
    temp: set[str] = set()
    tables: set[str] = set()
    for stmt in statements:
        names = resolve(stmt, defaults, frozenset(temp))
        temp |= script_temp_functions([stmt])
        touched = False
        # A write's own table may feed the write raw (UPDATE t SET a = (SELECT .. FROM t)):
        # those values never leave their table; every other source is masked.
        targets = {r.fqn.lower() for r in names.refs if r.target}
        for ref in names.refs:
            if ref.kind not in ("table", "wildcard") or ref.target:
                continue
            if ref.fqn.lower() in targets:
                continue
            tables.add(ref.fqn)
            columns = dict(sensitive_for(ref.fqn))
            if unmasked_for is not None:
                granted = unmasked_for(ref.fqn)
                columns = (
                    {}
                    if "*" in granted
                    else {c: s for c, s in columns.items() if c.lower() not in granted}
                )
            if not columns:
                continue
            used_key = _replace(ref, columns, schema_for, masked, splices)
            needs_key = needs_key or used_key
            touched = changed = True
        rendered.append(_splice(stmt.sql(dialect=DIALECT), splices) if touched else "")
    if needs_key and hmac_key is None:
        raise RewriteError("an hmac-masked column is read but the gateway has no masking key")
    marked = _join_script(text, statements, rendered) if changed else text
    key = hmac_key if needs_key else None
    if changed:
        out_sql, params, mode = _finalize(
            marked, tuple(parameters), positional, key, uses_key=needs_key
        )
    else:
        out_sql, params = sql, tuple(parameters)
        mode = parameter_mode if parameters else None
    return Rewrite(
        sql=out_sql,
        changed=changed,
        masked=tuple(masked),
        parameters=params,
        parameter_mode=mode,
        tables=tuple(sorted(tables)),
        marked_sql=marked,
        positional=positional,
        agent_parameters=tuple(parameters),
        key=key,
    )


def _replace(
    ref: Ref,
    columns: Mapping[str, str],
    schema_for: SchemaFor,
    masked: dict[tuple[str, str, str], None],
    splices: dict[str, str],
) -> bool:
    """Replace ``ref``'s Table node with the masking derived table; True if it needs the key.

    The node becomes a placeholder name; its derived-table text (cached per table schema
    and policy) is spliced into the generated statement, so generation costs only what the
    agent wrote.
    """
    table = ref.node
    assert isinstance(table, exp.Table)
    fields = _schema(ref, schema_for)
    by_name = {str(f.get("name", "")).lower(): f for f in fields}
    chosen: list[tuple[str, str, str, str]] = []
    for column, strategy in sorted(columns.items()):
        fld = by_name.get(column.lower())
        if fld is None:
            continue  # the policy names a column this table does not have
        chosen.append((str(fld["name"]), strategy, field_type(fld), str(fld.get("mode", ""))))
    if not chosen:
        return False
    unexpected = [
        k for k, v in table.args.items() if v and k not in (*_NAME_ARGS, *_INNER_ARGS, *_OUTER_ARGS)
    ]
    if unexpected:
        raise RewriteError(
            f"{ref.fqn} is read with {', '.join(unexpected)}, which the masking rewrite "
            "does not support"
        )
    for name, strategy, _, _ in chosen:
        masked[(ref.fqn, name.lower(), strategy)] = None
    base = exp.Table(
        this=table.this.copy() if table.this else None,
        db=table.args["db"].copy() if table.args.get("db") else None,
        catalog=table.args["catalog"].copy() if table.args.get("catalog") else None,
    )
    for key in _INNER_ARGS:
        if table.args.get(key):
            base.set(key, table.args[key].copy())
    derived, needs_key = _projection(
        tuple(chosen), ref.kind == "wildcard", base.sql(dialect=DIALECT)
    )
    marker = f"__bqgate_masked_{_MARK_SALT}_{len(splices)}__"
    splices[marker] = derived
    placeholder = exp.Table(this=exp.to_identifier(marker))
    if table.args.get("alias") is not None:
        placeholder.set("alias", table.args["alias"].copy())
    elif ref.kind == "table":
        # Keep the implicit alias (the table's name), so `customers.ssn` still resolves.
        placeholder.set("alias", exp.TableAlias(this=exp.to_identifier(ref.alias)))
    for key in _OUTER_ARGS:
        if table.args.get(key):
            placeholder.set(key, [x.copy() for x in table.args[key]])
    table.replace(placeholder)
    return needs_key


@functools.lru_cache(maxsize=1024)
def _projection(
    chosen: tuple[tuple[str, str, str, str], ...], wildcard: bool, base: str
) -> tuple[str, bool]:
    """``(SELECT * REPLACE (<mask> AS col, ...) FROM base)`` for the chosen (name, strategy,
    type, mode); costly pieces of a mask are helper columns of an inner derived table,
    computed once per row and dropped again (``* EXCEPT``)."""
    parts = []
    helpers: list[tuple[str, str]] = []
    needs_key = False
    for i, (name, strategy, typ, mode) in enumerate(chosen):
        fld = {"name": name, "type": typ, "mode": mode}
        ident = exp.to_identifier(name, quoted=True)
        text, extra = masks.mask_with_helpers(strategy, exp.column(ident), fld, f"__bqgate_h{i}")
        parts.append(f"{text} AS {ident.sql(dialect=DIALECT)}")
        helpers.extend(extra)
        needs_key = needs_key or masks.uses_key(strategy, fld)
    suffix = ", _TABLE_SUFFIX AS _TABLE_SUFFIX" if wildcard else ""
    replace = "REPLACE (" + ", ".join(parts) + ")"
    if not helpers:
        return f"(SELECT * {replace}{suffix} FROM {base})", needs_key
    inner = ", ".join(f"{sql} AS {name}" for name, sql in helpers)
    dropped = ", ".join(name for name, _ in helpers)
    return (
        f"(SELECT * EXCEPT ({dropped}) {replace} FROM (SELECT *{suffix}, {inner} FROM {base}))",
        needs_key,
    )


def _splice(text: str, splices: Mapping[str, str]) -> str:
    for marker, derived in splices.items():
        text = text.replace(marker, derived)
    return text


def _schema(ref: Ref, schema_for: SchemaFor) -> list[Mapping[str, Any]]:
    try:
        return list(schema_for(ref.fqn))
    except KeyError:
        raise RewriteError(
            f"the schema of {ref.fqn} is unknown, so its sensitive columns cannot be masked"
        ) from None


def _join_script(original: str, statements: list[exp.Expr], rendered: list[str]) -> str:
    """The script with rewritten statements regenerated and the others kept as written."""
    if len(statements) == 1:
        return rendered[0] or statements[0].sql(dialect=DIALECT)
    return ";\n".join(
        text if text else stmt.sql(dialect=DIALECT)
        for stmt, text in zip(statements, rendered, strict=True)
    )


# --------------------------------------------------------------------------- parameters


def _is_positional(parameters: Sequence[Mapping[str, Any]], mode: str | None) -> bool:
    if mode is not None:
        return str(mode).upper() == "POSITIONAL"
    return bool(parameters) and not any(p.get("name") for p in parameters)


def _mark_positional(sql: str) -> str:
    """Turn each ``?`` into ``@bqgate_pos_<n>`` (n = its order in the text)."""
    tokens = Dialect.get_or_raise(DIALECT).tokenize(sql)
    out: list[str] = []
    last = 0
    n = 0
    for token in tokens:
        if token.token_type == TokenType.PLACEHOLDER and token.text == "?":
            out.append(sql[last : token.start])
            out.append(f"@{_POS_MARK}{n}")
            last = token.end + 1
            n += 1
    out.append(sql[last:])
    return "".join(out)


def _unmark_positional(sql: str) -> str:
    tokens = Dialect.get_or_raise(DIALECT).tokenize(sql)
    out: list[str] = []
    last = 0
    for i, token in enumerate(tokens):
        if token.token_type == TokenType.PARAMETER and i + 1 < len(tokens):
            name = tokens[i + 1].text
            if name.startswith(_POS_MARK) or name in (masks.KEY_IPAD, masks.KEY_OPAD):
                out.append(sql[last : token.start])
                out.append("?")
                last = tokens[i + 1].end + 1
    out.append(sql[last:])
    return "".join(out)


def _finalize(
    marked: str,
    agent: Sequence[Mapping[str, Any]],
    positional: bool,
    key: bytes | None,
    *,
    uses_key: bool | None = None,
) -> tuple[str, tuple[Mapping[str, Any], ...], str | None]:
    """Text, parameters and mode to send for a statement in marked form.

    Named: the agent's parameters plus the key's (when the text uses it). Positional:
    every ``@bqgate_pos_N`` and key mark becomes ``?`` and the parameters are listed in
    the order of the marks in the text. ``uses_key``: whether the text uses the key, when
    the caller knows (the rewrite itself does; a statement derived from it is tokenized).
    """
    used: list[str] = []
    if positional or uses_key is None:
        tokens = Dialect.get_or_raise(DIALECT).tokenize(marked)
        for i, token in enumerate(tokens):
            if token.token_type == TokenType.PARAMETER and i + 1 < len(tokens):
                used.append(tokens[i + 1].text)
        uses_key = masks.KEY_IPAD in used or masks.KEY_OPAD in used
    if uses_key and key is None:
        raise RewriteError("the statement needs the masking key, which is not available")
    if not positional:
        params = list(agent)
        if uses_key and key is not None:
            params.extend(masks.key_parameters(key))
        return marked, tuple(params), ("NAMED" if params else None)
    key_params = masks.key_parameters(key, positional=True) if key is not None else []
    by_name = {masks.KEY_IPAD: key_params[0], masks.KEY_OPAD: key_params[1]} if key_params else {}
    ordered: list[Mapping[str, Any]] = []
    for name in used:
        if name.startswith(_POS_MARK):
            index = int(name[len(_POS_MARK) :])
            if index >= len(agent):
                raise RewriteError("the statement uses more ? parameters than were given")
            ordered.append(agent[index])
        elif name in by_name:
            ordered.append(by_name[name])
    return _unmark_positional(marked), tuple(ordered), "POSITIONAL"
