"""Measure, don't prove: the blast radius of a DELETE, UPDATE or MERGE.

Proving that a WHERE clause is not always true is a losing game (``x IS NOT NULL``,
``x > 0 OR x <= 0``, ``STARTS_WITH(name, '')`` ...). Instead the executor counts, before
the write runs, how many rows of its target the write would touch, with a query built
from the statement itself — same target, same alias, same condition, same sources — and
how many rows the target has:

* ``DELETE FROM t AS a WHERE c``  ->  rows of ``t AS a`` where ``c``;
* ``UPDATE t AS a SET ... FROM s WHERE c``  ->  rows of ``t AS a, s`` where ``c`` (BigQuery
  fails an UPDATE whose target row matches two source rows, so this is the row count);
* ``MERGE t USING s ON c WHEN ...``  ->  target rows the first matching ``WHEN`` clause
  updates or deletes, over ``t LEFT JOIN s ON c`` for matched rows and target rows no
  source row matches (``NOT MATCHED BY SOURCE``). A target row matched twice is counted
  twice (BigQuery refuses such a MERGE anyway): the count is an upper bound, never less.

The result is one row ``(touched, total)``. It runs on BigQuery and on the emulator.

>>> import sqlglot
>>> sql = measure_sql(sqlglot.parse_one("DELETE FROM d.t AS a WHERE a.x > 0", read="bigquery"))
>>> sql[:60]
'SELECT (SELECT COUNT(*) FROM d.t AS a WHERE a.x > 0) AS touc'
"""

from __future__ import annotations

from sqlglot import exp

DIALECT = "bigquery"

_MATCH_MARK = "__bqgate_matched"


class CannotMeasure(Exception):
    """The statement's shape is not one this module can count (fail closed: approval)."""


def _target(stmt: exp.Expr) -> exp.Table:
    target = stmt.this if isinstance(stmt.this, exp.Table) else None
    if target is None:
        tables = stmt.args.get("tables") or []
        target = tables[0] if tables and isinstance(tables[0], exp.Table) else None
    if target is None:
        raise CannotMeasure("the write has no target table")
    return target


def _bare(table: exp.Table) -> exp.Table:
    """The target without its alias (for the total row count)."""
    out = table.copy()
    out.set("alias", None)
    return out


def measure_sql(stmt: exp.Expr) -> str:
    """The counting query for one parsed DELETE/UPDATE/MERGE (``touched``, ``total``).

    >>> import sqlglot
    >>> print(measure_sql(sqlglot.parse_one(
    ...     "UPDATE d.t SET v = s.v FROM d.s AS s WHERE t.id = s.id", read="bigquery")))
    SELECT (SELECT COUNT(*) FROM d.t CROSS JOIN d.s AS s WHERE t.id = s.id) AS touched, \
(SELECT COUNT(*) FROM d.t) AS total
    """
    target = _target(stmt)
    if isinstance(stmt, exp.Delete):
        touched = _count(target.copy(), [], stmt.args.get("where"))
    elif isinstance(stmt, exp.Update):
        joins: list[exp.Expr] = []
        source = stmt.args.get("from_") or stmt.args.get("from")
        if isinstance(source, exp.From):
            first = source.this.copy()
            extra = first.args.get("joins") or []
            first.set("joins", None)
            joins.append(exp.Join(this=first, kind="CROSS"))
            joins.extend(j.copy() for j in extra)
        touched = _count(target.copy(), joins, stmt.args.get("where"))
    elif isinstance(stmt, exp.Merge):
        touched = _merge_count(stmt, target)
    else:
        raise CannotMeasure(f"{type(stmt).__name__} is not a measured write")
    total = exp.select(exp.Count(this=exp.Star())).from_(_bare(target))
    query = exp.select(
        exp.alias_(exp.Subquery(this=touched), "touched"),
        exp.alias_(exp.Subquery(this=total), "total"),
    )
    return query.sql(dialect=DIALECT)


def _count(source: exp.Expr, joins: list[exp.Expr], where: exp.Expr | None) -> exp.Select:
    query = exp.select(exp.Count(this=exp.Star())).from_(source)
    for join in joins:
        query = query.join(join)
    if isinstance(where, exp.Where):
        query.set("where", where.copy())
    return query


def _merge_count(stmt: exp.Merge, target: exp.Table) -> exp.Select:
    using = stmt.args.get("using")
    on = stmt.args.get("on")
    if not isinstance(using, exp.Expr) or not isinstance(on, exp.Expr):
        raise CannotMeasure("MERGE without USING or ON")
    alias = using.args.get("alias")
    inner = using.copy()
    inner.set("alias", None)
    if isinstance(inner, exp.Subquery):
        inner = inner.this
    marked = exp.select(exp.Star(), exp.alias_(exp.true(), _MATCH_MARK)).from_(
        inner if isinstance(inner, exp.Table) else exp.Subquery(this=inner)
    )
    if not isinstance(alias, exp.TableAlias):
        name = using.name if isinstance(using, exp.Table) else ""
        if not name:
            raise CannotMeasure("MERGE USING a subquery without an alias")
        alias = exp.TableAlias(this=exp.to_identifier(name))
    source = exp.Subquery(this=marked, alias=alias.copy())
    mark = exp.column(_MATCH_MARK, table=alias.name)
    matched_cases: list[tuple[exp.Expr, bool]] = []
    unmatched_cases: list[tuple[exp.Expr, bool]] = []
    whens_node = stmt.args.get("whens")
    whens = list(whens_node.expressions) if isinstance(whens_node, exp.Whens) else []
    for when in whens:
        then = when.args.get("then")
        destructive = isinstance(then, exp.Update) or (
            isinstance(then, exp.Var) and then.name.upper() == "DELETE"
        )
        condition = when.args.get("condition")
        cond = condition.copy() if isinstance(condition, exp.Expr) else exp.true()
        if when.args.get("matched"):
            matched_cases.append((cond, destructive))
        elif when.args.get("source"):
            unmatched_cases.append((cond, destructive))
        # WHEN NOT MATCHED [BY TARGET] ... INSERT adds rows; it touches no target row.
    touched = exp.or_(
        exp.and_(mark.is_(exp.true()), _first_match(matched_cases)),
        exp.and_(mark.is_(exp.null()), _first_match(unmatched_cases)),
    )
    query = exp.select(exp.func("COUNTIF", touched)).from_(target.copy())
    return query.join(source, on=on.copy(), join_type="LEFT")


def _first_match(cases: list[tuple[exp.Expr, bool]]) -> exp.Expr:
    """TRUE when the first clause whose condition holds is destructive (else FALSE)."""
    if not cases:
        return exp.false()
    case = exp.Case()
    for cond, destructive in cases:
        case = case.when(
            exp.func("IFNULL", cond, exp.false()), exp.true() if destructive else exp.false()
        )
    return case.else_(exp.false())
