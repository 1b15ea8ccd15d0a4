"""SQL for approvers' eyes: formatted and highlighted as escaped HTML.

Pure (sqlglot and the standard library). The highlighting comes from the same BigQuery
tokenizer the classifier reads the statement with, so what shows as a string, a comment
or a name is what bqgate took it for. Every character of the input is kept and escaped;
the only markup added is ``<span class="sql-...">``.

>>> highlight("SELECT 'a<b' -- hi") == (
...     '<span class="sql-k">SELECT</span> <span class="sql-s">&#x27;a&lt;b&#x27;</span> '
...     '<span class="sql-c">-- hi</span>')
True
>>> highlight("ORDER  BY x")
'<span class="sql-k">ORDER  BY</span> x'
>>> print(formatted("select a from t where b=1"))
SELECT
  a
FROM t
WHERE
  b = 1
"""

from __future__ import annotations

import html
import logging
import re

from sqlglot import exp, parse
from sqlglot.dialects.bigquery import BigQuery
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token, TokenType

log = logging.getLogger("bqgate.console")

#: Longest statement formatted or highlighted (longer ones are shown escaped, unstyled).
MAX_CHARS = 200_000

_STRINGS = {
    TokenType.STRING,
    TokenType.RAW_STRING,
    TokenType.BYTE_STRING,
    TokenType.BIT_STRING,
    TokenType.HEX_STRING,
    TokenType.NATIONAL_STRING,
    TokenType.NATIONAL_RAW_STRING,
    TokenType.HEREDOC_STRING,
    TokenType.UNICODE_STRING,
}
_CLASSES = {
    TokenType.NUMBER: "n",
    TokenType.IDENTIFIER: "i",  # a quoted name: `project.dataset.table`
    TokenType.PARAMETER: "p",
    TokenType.VAR: "",  # an unquoted name: no style
}
_WORD = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*(?:\s+[A-Za-z_][A-Za-z_0-9]*)*$")  # ORDER BY
_COMMENT = re.compile(r"--[^\n]*|#[^\n]*|/\*.*?(?:\*/|$)", re.S)


def _css(token: Token) -> str:
    if token.token_type in _STRINGS:
        return "s"
    if token.token_type in _CLASSES:
        return _CLASSES[token.token_type]
    return "k" if _WORD.match(token.text) else "o"


def _gap(text: str) -> str:
    """Text between tokens: whitespace and comments (styled as comments)."""
    out, at = [], 0
    for m in _COMMENT.finditer(text):
        out.append(html.escape(text[at : m.start()]))
        out.append(f'<span class="sql-c">{html.escape(m.group())}</span>')
        at = m.end()
    out.append(html.escape(text[at:]))
    return "".join(out)


def highlight(sql: str) -> str:
    """``sql`` as escaped HTML with its tokens in ``sql-*`` spans (k keyword, s string,
    n number, i quoted name, p parameter, o operator, c comment).

    Text the tokenizer cannot read (an unterminated string, say) is shown escaped.

    >>> highlight("SELECT `p.d.t` FROM x WHERE y = @v")
    '<span class="sql-k">SELECT</span> <span class="sql-i">`p.d.t`</span> \
<span class="sql-k">FROM</span> x <span class="sql-k">WHERE</span> y <span class="sql-o">=\
</span> <span class="sql-p">@</span>v'
    >>> highlight("SELECT 'unterminated")
    'SELECT &#x27;unterminated'
    """
    if len(sql) > MAX_CHARS:
        return html.escape(sql)
    try:
        tokens = BigQuery().tokenize(sql)
    except (SqlglotError, ValueError, IndexError):
        return html.escape(sql)
    out, at = [], 0
    for token in tokens:
        start, end = token.start, token.end + 1
        if start < at or end > len(sql):  # never drop or repeat a character
            return html.escape(sql)
        out.append(_gap(sql[at:start]))
        piece = html.escape(sql[start:end])
        css = _css(token)
        out.append(f'<span class="sql-{css}">{piece}</span>' if css else piece)
        at = end
    out.append(_gap(sql[at:]))
    return "".join(out)


def formatted(sql: str) -> str | None:
    """``sql`` pretty-printed as bqgate parsed it (statements separated by ``;``), or None
    when it cannot be (a parse error, or syntax sqlglot only keeps as raw text).

    >>> formatted("DROP PROCEDURE IF EXISTS p; EXECUTE IMMEDIATE 'x'") is None
    True
    """
    if len(sql) > MAX_CHARS:
        return None
    try:
        statements = [s for s in parse(sql, read="bigquery") if s is not None]
        if not statements or any(isinstance(s, exp.Command) for s in statements):
            return None
        return ";\n\n".join(s.sql(dialect="bigquery", pretty=True) for s in statements)
    except (SqlglotError, ValueError, RecursionError):
        return None
    except Exception:  # formatting is a convenience: never let it break a page
        log.exception("formatting a statement failed")
        return None


__all__ = ["formatted", "highlight"]
