"""Whether a statement sent without a dialect reads the same in legacy SQL and GoogleSQL.

BigQuery reads a query job that does not set ``useLegacySql`` (the ``bq`` CLI's default)
as legacy SQL. bqgate runs GoogleSQL only, and always tells BigQuery so, so what runs is
exactly what the classifier judged. Such a statement is run as GoogleSQL only when it
means the same in both dialects as far as syntax can tell: it parses as GoogleSQL, names
no legacy-only function, and has no comma between tables (a ``UNION ALL`` in legacy SQL, a
``CROSS JOIN`` in GoogleSQL). Anything else is refused with what to set instead; nothing is
guessed.
"""

from __future__ import annotations

import sqlglot
from sqlglot.tokenizer_core import TokenType
from sqlglot.tokens import Tokenizer

#: Functions only legacy SQL has (table wildcards, repeated-field helpers).
LEGACY_ONLY_FUNCTIONS = frozenset(
    {"TABLE_DATE_RANGE", "TABLE_DATE_RANGE_STRICT", "TABLE_QUERY", "FLATTEN", "NEST"}
)
#: Tokens that end a FROM clause at their nesting depth.
_FROM_ENDS = frozenset(
    {
        TokenType.WHERE,
        TokenType.GROUP_BY,
        TokenType.HAVING,
        TokenType.ORDER_BY,
        TokenType.LIMIT,
        TokenType.QUALIFY,
        TokenType.WINDOW,
        TokenType.UNION,
        TokenType.EXCEPT,
        TokenType.INTERSECT,
        TokenType.SELECT,
        TokenType.SEMICOLON,
        TokenType.ON,
        TokenType.USING,
        TokenType.JOIN,
        TokenType.SET,
    }
)


def legacy_ambiguity(sql: str) -> str | None:
    """Why ``sql`` may mean something else as legacy SQL, or None when it reads the same.

    >>> legacy_ambiguity("SELECT name FROM analytics.events WHERE n > 1")
    >>> legacy_ambiguity("SELECT a FROM t1, t2")
    'a comma between tables (UNION ALL in legacy SQL, CROSS JOIN in GoogleSQL)'
    >>> legacy_ambiguity("SELECT * FROM [demo-project:sales.customers]")
    'it is not GoogleSQL'
    >>> legacy_ambiguity("SELECT * FROM TABLE_QUERY(d, 'true')")
    'TABLE_QUERY is a legacy SQL function'
    >>> legacy_ambiguity("SELECT (SELECT 1 FROM a), b FROM t")
    """
    try:
        tokens = Tokenizer(dialect="bigquery").tokenize(sql)
        sqlglot.parse(sql, read="bigquery")
    except Exception:  # sqlglot raises several types; any of them means "not GoogleSQL"
        return "it is not GoogleSQL"
    depth = 0
    in_from: set[int] = set()
    for tok in tokens:
        kind = tok.token_type
        if kind == TokenType.L_PAREN:
            depth += 1
        elif kind == TokenType.R_PAREN:
            in_from.discard(depth)
            depth -= 1
        elif kind == TokenType.FROM:
            in_from.add(depth)
        elif kind in _FROM_ENDS:
            in_from.discard(depth)
        elif kind == TokenType.COMMA and depth in in_from:
            return "a comma between tables (UNION ALL in legacy SQL, CROSS JOIN in GoogleSQL)"
        elif kind in (TokenType.VAR, TokenType.TABLE) and tok.text.upper() in LEGACY_ONLY_FUNCTIONS:
            return f"{tok.text.upper()} is a legacy SQL function"
    return None
