"""Conservative constant folding of SQL predicates: is a WHERE / ON always true?

Used to catch whole-table DELETE/UPDATE/MERGE written with a disguised predicate
(``1=1``, ``NOT FALSE``, ``x > 0 OR TRUE``, ``COALESCE(TRUE, x)`` ...). When in
doubt the answer leans towards "always true", because a false positive only
blocks a statement while a false negative lets a whole table be rewritten.

>>> from sqlglot import parse_one
>>> always_true(parse_one("x > 0 OR 'a' LIKE '%'", read="bigquery"))
True
>>> always_true(parse_one("id = 42", read="bigquery"))
False
"""

from __future__ import annotations

import re
from typing import Any

from sqlglot import exp

# The result of folding a sub-expression whose value depends on the data.
UNKNOWN: Any = object()

# Trees larger than this are not handed to sqlglot's simplifier (it is slow on big trees).
_SIMPLIFY_MAX_NODES = 400


def always_true(predicate: exp.Expr) -> bool:
    """True if ``predicate`` holds for every row (as far as folding can tell).

    >>> from sqlglot import parse_one
    >>> [always_true(parse_one(s, read="bigquery")) for s in ("NULL IS NULL", "x = x", "x = 1")]
    [True, True, False]
    """
    if fold(predicate) is True or _tautology(predicate):
        return True
    return _simplifies_to_true(predicate)


def fold(node: exp.Expr) -> Any:
    """Value of ``node`` if it is constant (``None`` is SQL NULL), else :data:`UNKNOWN`.

    >>> from sqlglot import parse_one
    >>> fold(parse_one("1 BETWEEN 0 AND 2", read="bigquery"))
    True
    >>> fold(parse_one("x + 1", read="bigquery")) is UNKNOWN
    True
    """
    try:
        return _fold(node)
    except (ArithmeticError, ValueError, TypeError, re.error, RecursionError):
        return UNKNOWN


def _fold(node: exp.Expr) -> Any:
    handler = _HANDLERS.get(type(node))
    if handler is not None:
        return handler(node)
    return UNKNOWN


def _literal(node: exp.Expr) -> Any:
    assert isinstance(node, exp.Literal)
    if node.is_string:
        return node.this
    text = node.this
    try:
        return int(text)
    except ValueError:
        return float(text)


def _not(node: exp.Expr) -> Any:
    value = _fold(node.this)
    if value is None or value is UNKNOWN:
        return value
    return not _truthy(value)


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    raise TypeError("not a boolean")


def _and(node: exp.Expr) -> Any:
    left, right = _fold(node.this), _fold(node.expression)
    values = [v if v is None or v is UNKNOWN else _truthy(v) for v in (left, right)]
    if False in values:
        return False
    if UNKNOWN in values:
        return UNKNOWN
    if None in values:
        return None
    return True


def _or(node: exp.Expr) -> Any:
    left, right = _fold(node.this), _fold(node.expression)
    values = [v if v is None or v is UNKNOWN else _truthy(v) for v in (left, right)]
    if True in values:
        return True
    if UNKNOWN in values:
        return UNKNOWN
    if None in values:
        return None
    return False


def _xor(node: exp.Expr) -> Any:
    left, right = _fold(node.this), _fold(node.expression)
    if UNKNOWN in (left, right):
        return UNKNOWN
    if None in (left, right):
        return None
    return _truthy(left) != _truthy(right)


def _comparison(op: str) -> Any:
    def handler(node: exp.Expr) -> Any:
        if op in ("eq", "gte", "lte") and _same(node.this, node.expression):
            return True
        left, right = _fold(node.this), _fold(node.expression)
        if UNKNOWN in (left, right):
            return UNKNOWN
        if left is None or right is None:
            return None
        if isinstance(left, str) != isinstance(right, str):
            return UNKNOWN
        return {
            "eq": left == right,
            "neq": left != right,
            "gt": left > right,
            "gte": left >= right,
            "lt": left < right,
            "lte": left <= right,
        }[op]

    return handler


def _null_safe_eq(node: exp.Expr) -> Any:
    if _same(node.this, node.expression):
        return True
    left, right = _fold(node.this), _fold(node.expression)
    if UNKNOWN in (left, right):
        return UNKNOWN
    return left == right


def _is(node: exp.Expr) -> Any:
    target = node.expression
    value = _fold(node.this)
    if isinstance(target, exp.Null):
        return UNKNOWN if value is UNKNOWN else value is None
    wanted = _fold(target)
    if value is UNKNOWN or wanted is UNKNOWN:
        return UNKNOWN
    return value == wanted and value is not None


def _in(node: exp.Expr) -> Any:
    if node.args.get("query") or node.args.get("unnest") or node.args.get("field"):
        return UNKNOWN
    options = node.expressions
    if any(_same(node.this, o) for o in options):
        return True
    value = _fold(node.this)
    folded = [_fold(o) for o in options]
    if value is UNKNOWN:
        return UNKNOWN
    if value is None:
        return None
    if any(v is not UNKNOWN and v is not None and v == value for v in folded):
        return True
    if UNKNOWN in folded:
        return UNKNOWN
    return None if None in folded else False


def _between(node: exp.Expr) -> Any:
    value, low, high = _fold(node.this), _fold(node.args["low"]), _fold(node.args["high"])
    if UNKNOWN in (value, low, high):
        return UNKNOWN
    if None in (value, low, high):
        return None
    return bool(low <= value <= high)


def _like(node: exp.Expr) -> Any:
    pattern = _fold(node.expression)
    if isinstance(pattern, str) and pattern and set(pattern) == {"%"}:
        return True  # x LIKE '%' matches every non-NULL value: treat as always true
    value = _fold(node.this)
    if UNKNOWN in (value, pattern):
        return UNKNOWN
    if value is None or pattern is None:
        return None
    if not isinstance(value, str) or not isinstance(pattern, str):
        return UNKNOWN
    regex = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def _coalesce(node: exp.Expr) -> Any:
    for arg in [node.this, *node.expressions]:
        value = _fold(arg)
        if value is UNKNOWN:
            return UNKNOWN
        if value is not None:
            return value
    return None


def _if(node: exp.Expr) -> Any:
    cond = _fold(node.this)
    if cond is UNKNOWN:
        branches = [_fold(node.args["true"])]
        if node.args.get("false") is not None:
            branches.append(_fold(node.args["false"]))
        return True if all(b is True for b in branches) and len(branches) == 2 else UNKNOWN
    if cond is not None and _truthy(cond):
        return _fold(node.args["true"])
    false = node.args.get("false")
    return _fold(false) if false is not None else None


def _case(node: exp.Expr) -> Any:
    if node.this is not None:
        return UNKNOWN
    for branch in node.args.get("ifs") or []:
        cond = _fold(branch.this)
        if cond is UNKNOWN:
            return UNKNOWN
        if cond is not None and _truthy(cond):
            return _fold(branch.args["true"])
    default = node.args.get("default")
    return _fold(default) if default is not None else None


def _cast(node: exp.Expr) -> Any:
    value = _fold(node.this)
    if value is UNKNOWN or value is None:
        return value
    to = node.args.get("to")
    target = to.this if isinstance(to, exp.DataType) else None
    if target == exp.DataType.Type.BOOLEAN:
        if isinstance(value, str):
            lowered = value.strip().lower()
            return {"true": True, "false": False}.get(lowered, UNKNOWN)
        return _truthy(value)
    if target in exp.DataType.INTEGER_TYPES:
        return int(value)
    if target in exp.DataType.TEXT_TYPES:
        return str(value).lower() if isinstance(value, bool) else str(value)
    if target in exp.DataType.REAL_TYPES:
        return float(value)
    return UNKNOWN


def _arith(op: str) -> Any:
    def handler(node: exp.Expr) -> Any:
        left, right = _fold(node.this), _fold(node.expression)
        if UNKNOWN in (left, right):
            return UNKNOWN
        if left is None or right is None:
            return None
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (left, right)):
            return UNKNOWN
        if op == "add":
            return left + right
        if op == "sub":
            return left - right
        if op == "mul":
            return left * right
        return left / right

    return handler


def _neg(node: exp.Expr) -> Any:
    value = _fold(node.this)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return -value
    return UNKNOWN if value is not None else None


_HANDLERS: dict[type[exp.Expr], Any] = {
    exp.Boolean: lambda n: bool(n.this),
    exp.Null: lambda n: None,
    exp.Literal: _literal,
    exp.Paren: lambda n: _fold(n.this),
    exp.Not: _not,
    exp.And: _and,
    exp.Or: _or,
    exp.Xor: _xor,
    exp.EQ: _comparison("eq"),
    exp.NEQ: _comparison("neq"),
    exp.GT: _comparison("gt"),
    exp.GTE: _comparison("gte"),
    exp.LT: _comparison("lt"),
    exp.LTE: _comparison("lte"),
    exp.NullSafeEQ: _null_safe_eq,
    exp.Is: _is,
    exp.In: _in,
    exp.Between: _between,
    exp.Like: _like,
    exp.ILike: _like,
    exp.Coalesce: _coalesce,
    exp.If: _if,
    exp.Case: _case,
    exp.Cast: _cast,
    exp.TryCast: _cast,
    exp.Add: _arith("add"),
    exp.Sub: _arith("sub"),
    exp.Mul: _arith("mul"),
    exp.Div: _arith("div"),
    exp.Neg: _neg,
}


def _same(left: exp.Expr | None, right: exp.Expr | None) -> bool:
    """Structurally equal, deterministic and not a literal (``x = x``, ``a.b >= a.b``)."""
    if left is None or right is None or left != right:
        return False
    if isinstance(left, exp.Literal | exp.Null | exp.Boolean):
        return False
    return not any(isinstance(n, exp.Rand | exp.Anonymous) for n in left.walk())


def _tautology(node: exp.Expr) -> bool:
    """``A OR NOT A`` style disjunctions (including ``x IS NULL OR x IS NOT NULL``)."""
    node = node.unnest() if isinstance(node, exp.Paren) else node
    if not isinstance(node, exp.Or):
        return False
    parts = [p.unnest() for p in node.flatten()]
    positives = [p for p in parts if not isinstance(p, exp.Not)]
    negatives = [p.this.unnest() for p in parts if isinstance(p, exp.Not)]
    return any(neg == pos for neg in negatives for pos in positives)


def _simplifies_to_true(predicate: exp.Expr) -> bool:
    """Ask sqlglot's simplifier as a second opinion (small trees only)."""
    for size, _ in enumerate(predicate.walk(), start=1):
        if size > _SIMPLIFY_MAX_NODES:
            return False
    try:
        from sqlglot.optimizer.simplify import simplify

        simplified = simplify(predicate.copy(), dialect="bigquery")
    except Exception:  # the simplifier is a best-effort second opinion only
        return False
    return isinstance(simplified, exp.Boolean) and bool(simplified.this)
