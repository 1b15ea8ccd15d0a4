"""JSON on the hot path: orjson (C, several times the standard library's speed), with the
standard library where orjson refuses a value.

Only for documents the gateway writes, or reads from its own parts and from BigQuery: a
client's request body is parsed by :func:`bqgate.wire.bigquery.parse_json_body` with the
standard library, which keeps an integer beyond 64 bits exact (orjson reads it as a float)
and whose errors the gateway names.

>>> dumps({"a": [1, "x", None]})
'{"a":[1,"x",null]}'
>>> dumps({"big": 2**70})  # beyond orjson's 64 bits: the standard library writes it
'{"big":1180591620717411303424}'
>>> loads(b'{"rows":[["1","\\\\u00e9"]]}')
{'rows': [['1', 'é']]}
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_STD = json.JSONEncoder(separators=(",", ":")).encode


def dumps_bytes(value: Any) -> bytes:
    """Compact JSON (UTF-8) of ``value``."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):  # e.g. an integer beyond 64 bits
        return _STD(value).encode()


def dumps(value: Any) -> str:
    """Compact JSON text of ``value``."""
    return dumps_bytes(value).decode()


def loads(data: bytes | str) -> Any:
    """Parse JSON written by the gateway or by BigQuery (``ValueError`` if it is not JSON)."""
    return orjson.loads(data)


__all__ = ["dumps", "dumps_bytes", "loads"]
