"""Every masking strategy as a typed BigQuery SQL expression.

The masking rewrite (:mod:`bqgate.sql.rewrite`) replaces each read of a protected table
with a derived table whose sensitive columns are these expressions, so every operation
of the agent's query — predicates, joins, grouping, ordering, errors — sees the masked
value only. Each expression keeps the column's type and passes NULL through; a strategy
that does not apply to a type falls back to that type's default masking value, as
BigQuery's own data masking does. The formats are exactly those of
:mod:`bqgate.masking` (the result-masking second line), so the agent sees one stable
format per strategy:

=========  =========================================================================
nullify    ``NULL`` of the column's type
default    the type's default value (``''``, ``0``, ``1970-01-01`` ...); NULL stays NULL
sha256     hex SHA-256 (STRING), SHA-256 (BYTES)
hmac       ``tok_`` + 24 hex of HMAC-SHA256 (STRING), 12 bytes (BYTES), 56 bits (INT64)
last4      every letter or digit but the last four is ``X`` (all of them if four or fewer)
first4     every letter or digit but the first four is ``X``
email      ``XXXXX@`` + the domain, NULL when the value is not an address
year       January 1st of the value's year (DATE, DATETIME, TIMESTAMP, ISO STRING)
=========  =========================================================================

``hmac`` is keyed: the key never appears in SQL text. It reaches BigQuery as two BYTES
query parameters, the HMAC inner and outer pads (:func:`key_parameters`), and the token
is HMAC-SHA256 computed in SQL: ``SHA256(opad || SHA256(ipad || value))``.

>>> import sqlglot
>>> col = sqlglot.exp.column("ssn")
>>> mask_sql("last4", col, {"name": "ssn", "type": "STRING"})[:40]
'COALESCE(CONCAT(SUBSTR(IF(BYTE_LENGTH(ss'
>>> mask_sql("year", sqlglot.exp.column("d"), {"name": "d", "type": "DATE"})
'DATE_TRUNC(d, YEAR)'
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping
from typing import Any

import sqlglot
from sqlglot import exp

from bqgate.sql import RESERVED_PARAMETER_PREFIX
from bqgate.vocabulary import field_type, repeated

DIALECT = "bigquery"

#: Names of the query parameters that carry the HMAC key (inner and outer pad).
KEY_IPAD = RESERVED_PARAMETER_PREFIX + "hmac_ipad"
KEY_OPAD = RESERVED_PARAMETER_PREFIX + "hmac_opad"

#: BigQuery's default masking value per type, as SQL.
DEFAULT_SQL: Mapping[str, str] = {
    "STRING": "''",
    "BYTES": "b''",
    "INT64": "0",
    "FLOAT64": "0.0",
    "NUMERIC": "NUMERIC '0'",
    "BIGNUMERIC": "BIGNUMERIC '0'",
    "BOOL": "FALSE",
    "DATE": "DATE '1970-01-01'",
    "DATETIME": "DATETIME '1970-01-01 00:00:00'",
    "TIME": "TIME '00:00:00'",
    "TIMESTAMP": "TIMESTAMP '1970-01-01 00:00:00+00'",
    "JSON": "JSON 'null'",
    "GEOGRAPHY": "ST_GEOGPOINT(0, 0)",
    "INTERVAL": "MAKE_INTERVAL(0, 0, 0, 0, 0, 0)",
}

# Letters and digits (any script): what last4/first4 keep or replace.
_ALNUM = r"\pL\pN"


def _keep4_parts(strategy: str, v: str, a: str) -> tuple[str, str]:
    """The two costly pieces of last4/first4 with letter/digit class ``a``: ``v`` with every
    letter and digit X-ed (the same length), and the kept four with the fifth beside them
    (NULL when there are four or fewer).

    No capturing groups (engines disagree on what REGEXP_EXTRACT returns with one): the
    match includes the fifth letter/digit, which a short replace on it drops.
    """
    x_all = f"REGEXP_REPLACE({v}, r'[{a}]', 'X')"
    if strategy == "last4":
        near = f"REGEXP_EXTRACT({v}, r'[{a}][^{a}]*[{a}](?:[^{a}]*[{a}]){{3}}[^{a}]*$')"
    else:
        near = f"REGEXP_EXTRACT({v}, r'^[^{a}]*[{a}](?:[^{a}]*[{a}]){{3}}[^{a}]*[{a}]')"
    return x_all, near


def _keep4_from(strategy: str, v: str, x_all: str, near: str) -> str:
    """last4/first4 of ``v`` from its two pieces (see :func:`_keep4_parts`)."""
    a = _ALNUM
    if strategy == "last4":
        keep = f"REGEXP_REPLACE({near}, r'^[{a}][^{a}]*', '')"
        spliced = f"CONCAT(SUBSTR({x_all}, 1, LENGTH({v}) - LENGTH({keep})), {keep})"
    else:
        keep = f"REGEXP_REPLACE({near}, r'[^{a}]*[{a}]$', '')"
        spliced = f"CONCAT({keep}, SUBSTR({x_all}, LENGTH({keep}) + 1))"
    return f"COALESCE({spliced}, {x_all})"


def _keep4_pieces(strategy: str, v: str) -> tuple[str, str]:
    """The two pieces, with fast ASCII classes for ASCII values (bytes = characters)."""
    ascii_ = _keep4_parts(strategy, v, "0-9A-Za-z")
    unicode_ = _keep4_parts(strategy, v, _ALNUM)
    test = f"BYTE_LENGTH({v}) = LENGTH({v})"
    return (
        f"IF({test}, {ascii_[0]}, {unicode_[0]})",
        f"IF({test}, {ascii_[1]}, {unicode_[1]})",
    )


def key_parameters(key: bytes, *, positional: bool = False) -> list[dict[str, Any]]:
    """The HMAC key as REST ``queryParameters`` (inner pad, outer pad), never as SQL text.

    >>> [p["name"] for p in key_parameters(b"k")]
    ['bqgate_hmac_ipad', 'bqgate_hmac_opad']
    """
    block = 64
    if len(key) > block:
        key = hmac.new(key, digestmod="sha256").digest()  # HMAC hashes a long key first
    key = key.ljust(block, b"\0")
    ipad = bytes(b ^ 0x36 for b in key)
    opad = bytes(b ^ 0x5C for b in key)
    out = []
    for name, value in ((KEY_IPAD, ipad), (KEY_OPAD, opad)):
        param: dict[str, Any] = {
            "parameterType": {"type": "BYTES"},
            "parameterValue": {"value": base64.b64encode(value).decode()},
        }
        if not positional:
            param["name"] = name
        out.append(param)
    return out


def _hmac_bytes(value_bytes: str) -> str:
    return f"SHA256(CONCAT(@{KEY_OPAD}, SHA256(CONCAT(@{KEY_IPAD}, {value_bytes}))))"


def _scalar(strategy: str, typ: str, v: str) -> str:
    """SQL masking one non-repeated value ``v`` of type ``typ``."""
    default = DEFAULT_SQL.get(typ)
    to_default = f"IF({v} IS NULL, NULL, {default})" if default else f"IF(FALSE, {v}, NULL)"
    if strategy == "nullify" or (typ == "RECORD" and strategy != "default"):
        return f"IF(FALSE, {v}, NULL)"
    if strategy == "default":
        return to_default
    if strategy == "sha256":
        if typ == "STRING":
            return f"TO_HEX(SHA256({v}))"
        if typ == "BYTES":
            return f"SHA256({v})"
        return to_default
    if strategy == "hmac":
        if typ == "STRING":
            return f"CONCAT('tok_', SUBSTR(TO_HEX({_hmac_bytes(f'CAST({v} AS BYTES)')}), 1, 24))"
        if typ == "BYTES":
            return f"SUBSTR({_hmac_bytes(v)}, 1, 12)"
        if typ == "INT64":
            digest = _hmac_bytes(f"CAST(CAST({v} AS STRING) AS BYTES)")
            return f"CAST(CONCAT('0x', SUBSTR(TO_HEX({digest}), 1, 14)) AS INT64)"
        return to_default
    if strategy in ("last4", "first4"):
        if typ != "STRING":
            return to_default
        x_all, near = _keep4_pieces(strategy, v)
        return _keep4_from(strategy, v, x_all, near)
    if strategy == "email":
        if typ != "STRING":
            return to_default
        return (
            f"IF(REGEXP_CONTAINS({v}, r'(?s)^.+@[^@ ]*\\.[^@ ]*$'), "
            f"CONCAT('XXXXX@', REGEXP_EXTRACT({v}, r'(?s)@([^@]*)$')), NULL)"
        )
    if strategy == "year":
        if typ == "DATE":
            return f"DATE_TRUNC({v}, YEAR)"
        if typ == "DATETIME":
            return f"DATETIME_TRUNC({v}, YEAR)"
        if typ == "TIMESTAMP":
            return f"TIMESTAMP_TRUNC({v}, YEAR)"
        if typ == "STRING":
            year = f"CONCAT(SUBSTR({v}, 1, 4), '-01-01')"
            return f"IF(REGEXP_CONTAINS({v}, r'^[0-9]{{4}}'), {year}, NULL)"
        return to_default
    return f"IF(FALSE, {v}, NULL)"  # unknown strategy: fail closed


def mask_sql(strategy: str, column: exp.Expr, fld: Mapping[str, Any]) -> str:
    """BigQuery SQL for ``strategy`` applied to ``column`` (a REST schema field ``fld``).

    >>> import sqlglot
    >>> mask_sql("hmac", sqlglot.exp.column("n"), {"type": "INTEGER"})[:60]
    "CAST(CONCAT('0x', SUBSTR(TO_HEX(SHA256(CONCAT(@bqgate_hmac_o"
    >>> mask_sql("nullify", sqlglot.exp.column("a"), {"type": "STRING", "mode": "REPEATED"})
    'IF(FALSE, a, NULL)'
    """
    v = column.sql(dialect=DIALECT)
    typ = field_type(fld)
    if repeated(fld):
        if strategy in ("nullify", "default") or typ == "RECORD":
            return f"IF(FALSE, {v}, NULL)"
        element = _scalar(strategy, typ, "__bqgate_e")
        return (
            f"ARRAY(SELECT {element} FROM UNNEST({v}) AS __bqgate_e "
            "WITH OFFSET AS __bqgate_o ORDER BY __bqgate_o)"
        )
    return _scalar(strategy, typ, v)


def mask_with_helpers(
    strategy: str, column: exp.Expr, fld: Mapping[str, Any], prefix: str
) -> tuple[str, list[tuple[str, str]]]:
    """:func:`mask_sql` with its costly pieces as helper columns ``(name, sql)`` that a
    derived table computes once per row (last4/first4 on a scalar STRING); other strategies
    have none. The mask expression refers to the helpers by name.
    """
    v = column.sql(dialect=DIALECT)
    if strategy in ("last4", "first4") and field_type(fld) == "STRING" and not repeated(fld):
        x_all, near = _keep4_pieces(strategy, v)
        helpers = [(f"{prefix}x", x_all), (f"{prefix}n", near)]
        return _keep4_from(strategy, v, helpers[0][0], helpers[1][0]), helpers
    return mask_sql(strategy, column, fld), []


def mask_expression(strategy: str, column: exp.Expr, fld: Mapping[str, Any]) -> exp.Expr:
    """:func:`mask_sql` as a sqlglot expression."""
    return sqlglot.parse_one(mask_sql(strategy, column, fld), read=DIALECT)


def uses_key(strategy: str, fld: Mapping[str, Any]) -> bool:
    """Whether the expression for ``strategy`` on ``fld`` needs the HMAC key parameters."""
    return strategy == "hmac" and field_type(fld) in ("STRING", "BYTES", "INT64")
