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


class RawJson:
    """JSON text already encoded, written into a document as is (never parsed again).

    >>> dumps({"rows": RawJson(b'[{"f":[{"v":"1"}]}]'), "n": 1})
    '{"rows":[{"f":[{"v":"1"}]}],"n":1}'
    >>> dumps({"rows": RawJson(b"[1]"), "big": 2**70})  # the standard library's way
    '{"rows":[1],"big":1180591620717411303424}'
    """

    __slots__ = ("text",)

    def __init__(self, text: bytes) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"RawJson({self.text[:40]!r}...)"


def _fragment(value: Any) -> Any:
    if isinstance(value, RawJson):
        return orjson.Fragment(value.text)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _parsed(value: Any) -> Any:
    if isinstance(value, RawJson):
        return json.loads(value.text)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_STD = json.JSONEncoder(separators=(",", ":"), default=_parsed).encode


def dumps_bytes(value: Any) -> bytes:
    """Compact JSON (UTF-8) of ``value`` (:class:`RawJson` parts written as they are)."""
    try:
        return orjson.dumps(value, default=_fragment)
    except (TypeError, orjson.JSONEncodeError):  # e.g. an integer beyond 64 bits
        return _STD(value).encode()


def dumps(value: Any) -> str:
    """Compact JSON text of ``value``."""
    return dumps_bytes(value).decode()


def loads(data: bytes | str) -> Any:
    """Parse JSON written by the gateway or by BigQuery (``ValueError`` if it is not JSON)."""
    return orjson.loads(data)


__all__ = ["RawJson", "dumps", "dumps_bytes", "loads"]
