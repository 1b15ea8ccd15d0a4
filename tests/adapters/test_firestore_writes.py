"""The store's own write encoding gives the library's message, field for field, for every
shape the store writes; what it does not encode goes to the library unchanged. Then the
same writes against the Firestore emulator read back as written."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest
from bqgate.adapters.firestore_writes import (
    FastBatch,
    Unencodable,
    create_write,
    set_write,
    update_write,
)
from bqgate.dev.stack import PROJECT, Stack
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud import firestore
from google.cloud.firestore_v1 import _helpers
from google.cloud.firestore_v1.types import write as write_types

PATH = "projects/demo-project/databases/(default)/documents/jobs/j1"
WHEN = datetime.datetime(2026, 12, 2, 7, 30, 1, 123456, tzinfo=datetime.UTC)
NANOS = DatetimeWithNanoseconds(2026, 12, 2, 7, 30, 1, nanosecond=123456789, tzinfo=datetime.UTC)

DOCS: dict[str, dict[str, Any]] = {
    "scalars": {
        "none": None,
        "yes": True,
        "no": False,
        "zero": 0,
        "int": -(2**63),
        "max": 2**63 - 1,
        "float": 1.5,
        "nan": math.nan,
        "text": "é ✓ \x00",
        "empty_text": "",
        "bytes": b"\x00\xff",
    },
    "nested": {
        "classification": {
            "decision": "allow",
            "reasons": ["a", "b"],
            "writes": [],
            "per_statement": [{"kind": "SELECT", "refs": [{"kind": "table", "name": "t"}]}],
            "empty": {},
        },
        "schema": [{"name": "n", "type": "INTEGER", "fields": []}],
        "tuple": ("x", 1, None),
    },
    # Firestore refuses an array in an array; the encoding still matches the library's.
    "arrays": {"matrix": [[1, 2], [], [None]], "maps": [{}, {"a": [1]}]},
    "times": {"expire_at": WHEN, "precise": NANOS, "naive": datetime.datetime(2026, 1, 1)},
}


def library(kind: str, doc: dict[str, Any], option: Any = None) -> Any:
    if kind == "create":
        (pb,) = _helpers.pbs_for_create(PATH, doc)
    elif kind == "set":
        (pb,) = _helpers.pbs_for_set_no_merge(PATH, doc)
    else:
        (pb,) = _helpers.pbs_for_update(PATH, doc, option)
    return write_types.Write.pb(pb)


@pytest.mark.parametrize("name", sorted(DOCS))
def test_create_set_and_update_encode_as_the_library_does(name: str) -> None:
    doc = DOCS[name]
    assert create_write(PATH, doc) == library("create", doc)
    assert set_write(PATH, doc) == library("set", doc)
    assert update_write(PATH, doc) == library("update", doc)


def test_an_update_on_a_last_update_time_encodes_as_the_library_does() -> None:
    option = _helpers.LastUpdateOption(NANOS)
    fields = {"state": "DONE", "ended_ms": 5, "masking": [{"column": "n", "strategy": None}]}
    assert update_write(PATH, fields, NANOS) == library("update", fields, option)


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"ts": firestore.SERVER_TIMESTAMP},
        {"gone": firestore.DELETE_FIELD},
        {"deep": {"ts": firestore.SERVER_TIMESTAMP}},
        {"big": 2**64},
        {"set": {1, 2}},
        {1: "not a string key"},
    ],
    ids=["empty", "server-time", "delete", "nested-sentinel", "big-int", "set", "int-key"],
)
def test_what_it_does_not_encode_is_refused(doc: dict[Any, Any]) -> None:
    with pytest.raises(Unencodable):
        create_write(PATH, doc)


@pytest.mark.parametrize("field", ["a.b", "with-dash", "`quoted`", "1st"])
def test_update_paths_that_need_quoting_or_nest_are_refused(field: str) -> None:
    with pytest.raises(Unencodable):
        update_write(PATH, {field: 1})


@pytest.mark.emulators
def test_writes_against_the_emulator_read_back_and_the_rest_goes_to_the_library(
    stack: Stack,
) -> None:
    client = firestore.Client(project=PROJECT)
    coll = client.collection("fast-writes-test")
    a, b, c = coll.document("a"), coll.document("b"), coll.document("c")
    for ref in (a, b, c):
        ref.delete()
    batch = FastBatch(client.batch())
    batch.create(a, DOCS["nested"])
    batch.set(b, {**DOCS["scalars"], "nan": 0.0})
    batch.create(c, {"at": firestore.SERVER_TIMESTAMP, "n": 1})  # the library's write
    first = batch.commit()
    assert len(first) == 3
    assert a.get().to_dict() == {**DOCS["nested"], "tuple": ["x", 1, None]}
    assert b.get().to_dict() == {**DOCS["scalars"], "nan": 0.0}
    assert isinstance((c.get().to_dict() or {})["at"], datetime.datetime)
    batch = FastBatch(client.batch())
    batch.update(
        a, {"schema": None}, option=client.write_option(last_update_time=first[0].update_time)
    )
    batch.commit()
    assert (a.get().to_dict() or {})["schema"] is None
    stale = FastBatch(client.batch())
    stale.update(
        a, {"schema": []}, option=client.write_option(last_update_time=first[0].update_time)
    )
    with pytest.raises(Exception, match=r"(?i)precondition|required base version"):
        stale.commit()
    again = FastBatch(client.batch())
    again.create(a, {"x": 1})
    with pytest.raises(Exception, match=r"(?i)already.exists"):
        again.commit()
