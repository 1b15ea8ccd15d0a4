"""Firestore writes encoded straight into protobuf, for the store's hot path.

google-cloud-firestore builds every value of a write as a proto-plus wrapper
(``_helpers.pbs_for_create`` / ``pbs_for_update``): about 0.7 ms for one job document on
the machine this was measured on, several per commit, all on the agent's path. The same
``Write`` built on the underlying protobuf classes takes a twelfth of that. The result
is the same message, field for field (``tests/adapters/test_firestore_writes.py``
compares both encodings over every shape the store writes).

Only plain values are encoded here: ``None``, ``bool``, ``int`` (64-bit), ``float``,
``str``, ``bytes``, ``datetime`` and ``dict``/``list``/``tuple`` of those, with
top-level field names that need no quoting. Anything else (sentinels such as
``SERVER_TIMESTAMP`` or ``DELETE_FIELD``, references, a merge, a dotted path) raises
:class:`Unencodable`, and :class:`FastBatch` hands that write to the library instead.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from typing import Any

from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud._helpers import _datetime_to_pb_timestamp
from google.cloud.firestore_v1.types import common as common_types
from google.cloud.firestore_v1.types import write as write_types

_WRITE = write_types.Write.pb()
_INT64 = (-(2**63), 2**63 - 1)
#: A field name usable in an update mask as is (the library quotes any other).
_SIMPLE_NAME = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*\Z")


class Unencodable(TypeError):
    """A value or write this module leaves to the library."""


def _encode(value: Any, out: Any) -> None:
    """Write ``value`` into the protobuf ``Value`` ``out``."""
    kind = type(value)
    if value is None:
        out.null_value = 0
    elif kind is str:
        out.string_value = value
    elif kind is bool:
        out.boolean_value = value
    elif kind is int:
        if not _INT64[0] <= value <= _INT64[1]:
            raise Unencodable("integer beyond 64 bits")
        out.integer_value = value
    elif kind is float:
        out.double_value = value
    elif kind is dict:
        fields = out.map_value.fields
        out.map_value.SetInParent()
        for key, item in value.items():
            if type(key) is not str:
                raise Unencodable("map key that is not a string")
            _encode(item, fields[key])
    elif kind is list or kind is tuple:
        array = out.array_value
        array.SetInParent()
        for item in value:
            _encode(item, array.values.add())
    elif kind is DatetimeWithNanoseconds:
        out.timestamp_value.CopyFrom(value.timestamp_pb())
    elif kind is datetime.datetime:
        out.timestamp_value.CopyFrom(_datetime_to_pb_timestamp(value))
    elif kind is bytes:
        out.bytes_value = value
    else:
        raise Unencodable(f"value of type {kind.__name__}")


def _document(path: str, data: Mapping[str, Any]) -> Any:
    if not data or type(data) is not dict:
        raise Unencodable("empty or not a plain dict")
    pb = _WRITE()
    pb.update.name = path
    fields = pb.update.fields
    for key, value in data.items():
        if type(key) is not str:
            raise Unencodable("field name that is not a string")
        _encode(value, fields[key])
    return pb


def create_write(path: str, data: Mapping[str, Any]) -> Any:
    """``batch.create(ref, data)``: the document must not exist yet."""
    pb = _document(path, data)
    pb.current_document.exists = False
    return pb


def set_write(path: str, data: Mapping[str, Any]) -> Any:
    """``batch.set(ref, data)`` (no merge): the whole document, whether or not it exists."""
    return _document(path, data)


def update_write(path: str, fields: Mapping[str, Any], last_update_time: Any = None) -> Any:
    """``batch.update(ref, fields)``: the named top-level fields replaced; the document
    must exist (and, with ``last_update_time``, not have changed since)."""
    names = list(fields)
    if not all(type(n) is str and _SIMPLE_NAME.match(n) for n in names):
        raise Unencodable("field path that needs quoting or nests")
    pb = _document(path, fields)
    pb.update_mask.field_paths.extend(sorted(names))
    if last_update_time is None:
        pb.current_document.exists = True
    else:
        if not isinstance(last_update_time, datetime.datetime):
            raise Unencodable("update time that is not a datetime")
        # Exactly as the library's LastUpdateOption converts it (one small message).
        precondition = common_types.Precondition(update_time=last_update_time)
        pb.current_document.CopyFrom(common_types.Precondition.pb(precondition))
    return pb


class FastBatch:
    """A ``WriteBatch`` whose plain writes are encoded by this module (the others, and
    the commit itself, by the library)."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch

    def _add(self, ref: Any, pb: Any) -> None:
        self.batch._document_references[ref._document_path] = ref
        self.batch._add_write_pbs([write_types.Write.wrap(pb)])

    def create(self, ref: Any, doc: Mapping[str, Any]) -> None:
        try:
            pb = create_write(ref._document_path, doc)
        except Unencodable:
            self.batch.create(ref, doc)
            return
        self._add(ref, pb)

    def set(self, ref: Any, doc: Mapping[str, Any], **kwargs: Any) -> None:
        if kwargs:  # merge=...: the library's
            self.batch.set(ref, doc, **kwargs)
            return
        try:
            pb = set_write(ref._document_path, doc)
        except Unencodable:
            self.batch.set(ref, doc)
            return
        self._add(ref, pb)

    def update(self, ref: Any, fields: Mapping[str, Any], option: Any = None) -> None:
        last = getattr(option, "_last_update_time", None)
        if option is not None and last is None:  # another kind of option: the library's
            self.batch.update(ref, fields, option=option)
            return
        try:
            pb = update_write(ref._document_path, fields, last)
        except Unencodable:
            self.batch.update(ref, fields, option=option)
            return
        self._add(ref, pb)

    def commit(self, **kwargs: Any) -> Any:
        return self.batch.commit(**kwargs)


__all__ = ["FastBatch", "Unencodable", "create_write", "set_write", "update_write"]
