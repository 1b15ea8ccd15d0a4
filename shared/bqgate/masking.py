"""Mask query results by column lineage, with content detectors behind it.

This is the second line behind the masking rewrite (:mod:`bqgate.sql.rewrite`), which
masks every sensitive column before the query runs. Two steps, both pure:

1. :func:`plan_masking` turns the query's :class:`~bqgate.sql.lineage.ColumnLineage`
   and the result schema into a :class:`MaskPlan`: one :class:`ColumnMask` per
   top-level output column, saying which strategy applies and why.
2. :class:`Masker` compiles the plan into one small function per column and
   applies it to compact rows (see ``bqgate.wire``), scanning every STRING cell
   the plan left unmasked with :mod:`bqgate.detectors`.

The rules, which fail closed:

* a plain reference to a sensitive column gets the policy's strategy; when
  several sensitive columns feed it (UNION by position) the strictest one;
* anything derived from a sensitive column (``UPPER(email)``, ``MAX(ssn)``,
  ``TO_JSON_STRING(t)``) is nullified, except counting aggregates, which reveal
  no values and stay;
* a column whose lineage is unknown, or that cannot be matched to lineage, is
  nullified and the reason recorded;
* a STRUCT output with per-field lineage is masked field by field.

Strategies follow BigQuery's data-masking rules and keep the column's type: a
strategy that does not apply to a type (``last4`` on INT64) falls back to the
type's default masking value. Known edges: ``last4``/``first4`` mask every
alphanumeric character when a value has four or fewer, so a value with no
alphanumeric character comes back unchanged; ``year`` returns a date that
already is January 1st unchanged; ``email`` leaves an already masked
``XXXXX@domain`` as it is.

>>> schema = [{"name": "email", "type": "STRING"}, {"name": "n", "type": "INTEGER"}]
>>> from bqgate.sql.lineage import ColumnLineage
>>> lin = [ColumnLineage("email", frozenset({"p.d.t.email"}), direct=True),
...        ColumnLineage("n", frozenset({"p.d.t.email"}), counting=True)]
>>> sens = lambda t: {"email": "email"} if t == "p.d.t" else {}
>>> plan = plan_masking(lin, schema, sens, premasked=frozenset({"p.d.t.email"}))
>>> [(c.column, c.strategy, c.at_source) for c in plan.columns]
[('email', 'email', True), ('n', None, True)]
>>> Masker(plan, schema, hmac_key=b"k").mask_rows([["XXXXX@example.com", "3"]])
[['XXXXX@example.com', '3']]

Without the rewrite (a source not masked at the source) the same count is nullified:

>>> [c.strategy for c in plan_masking(lin, schema, sens).columns]
['email', 'nullify']
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac as _hmac
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bqgate import detectors
from bqgate.sql.lineage import ColumnLineage
from bqgate.vocabulary import MASK_STRATEGIES, MaskStrategy, field_type, repeated

__all__ = [
    "DEFAULT_VALUES",
    "PER_FIELD",
    "ColumnMask",
    "MaskPlan",
    "Masker",
    "default_value",
    "plan_masking",
    "strictest",
]

Cell = Any
CellFn = Callable[[Cell], Cell]

PER_FIELD = "per_field"
"""ColumnMask.strategy of a STRUCT masked field by field (see ``ColumnMask.fields``)."""

DEFAULT_VALUES: Mapping[str, str] = {
    "STRING": "",
    "BYTES": "",
    "INT64": "0",
    "FLOAT64": "0.0",
    "NUMERIC": "0",
    "BIGNUMERIC": "0",
    "BOOL": "false",
    "DATE": "1970-01-01",
    "DATETIME": "1970-01-01T00:00:00",
    "TIME": "00:00:00",
    "TIMESTAMP": "0",
    "JSON": "null",
    "GEOGRAPHY": "POINT(0 0)",
    "INTERVAL": "0-0 0 0:0:0",
}


def strictest(strategies: Sequence[str]) -> MaskStrategy:
    """The strictest of ``strategies`` (:data:`~bqgate.vocabulary.MASK_STRATEGIES` is
    strictest first); an unknown name counts as ``nullify``.

    >>> strictest(["last4", "hmac"]), strictest(["email"]), strictest(["bogus", "last4"])
    ('hmac', 'email', 'nullify')
    """
    ranks = [MASK_STRATEGIES.index(s) if s in MASK_STRATEGIES else 0 for s in strategies]
    return MASK_STRATEGIES[min(ranks)] if ranks else "nullify"


def default_value(fld: Mapping[str, Any]) -> Cell:
    """BigQuery's default masking value for a schema field, as a compact cell.

    >>> default_value({"name": "a", "type": "RECORD", "fields": [
    ...     {"name": "x", "type": "INTEGER"}, {"name": "y", "type": "DATE"}]})
    ['0', '1970-01-01']
    >>> default_value({"name": "a", "type": "STRING", "mode": "REPEATED"})
    []
    """
    if repeated(fld):
        return []
    typ = field_type(fld)
    if typ == "RECORD":
        return [default_value(f) for f in fld.get("fields") or ()]
    return DEFAULT_VALUES.get(typ)


@dataclass(frozen=True)
class ColumnMask:
    """What happens to one output column (or STRUCT field).

    Attributes:
        column: Output column name.
        strategy: Masking strategy, ``None`` when unmasked, :data:`PER_FIELD` for a
            STRUCT masked field by field.
        reason: Why, for the audit record.
        fields: Per-field masks when ``strategy`` is :data:`PER_FIELD`.
    """

    column: str
    strategy: str | None
    reason: str
    fields: tuple[ColumnMask, ...] = ()
    #: The value was masked at the source by the rewrite: it is checked, not masked again.
    at_source: bool = False

    def describe(self) -> dict[str, Any]:
        """This mask as a plain dict for the audit record."""
        entry: dict[str, Any] = {
            "column": self.column,
            "strategy": self.strategy,
            "reason": self.reason,
        }
        if self.at_source:
            entry["at_source"] = True
        if self.fields:
            entry["fields"] = [f.describe() for f in self.fields if f.strategy is not None]
        return entry


@dataclass(frozen=True)
class MaskPlan:
    """One :class:`ColumnMask` per top-level output field, in schema order."""

    columns: tuple[ColumnMask, ...]

    @property
    def masked(self) -> tuple[ColumnMask, ...]:
        """The columns with a strategy."""
        return tuple(c for c in self.columns if c.strategy is not None)

    def describe(self) -> list[dict[str, Any]]:
        """Which columns were masked and why (unmasked columns are left out).

        >>> MaskPlan((ColumnMask("a", None, "not sensitive"),
        ...           ColumnMask("b", "nullify", "lineage unknown: x"))).describe()
        [{'column': 'b', 'strategy': 'nullify', 'reason': 'lineage unknown: x'}]
        """
        return [c.describe() for c in self.masked]


class _Sensitivity:
    """Per-plan cache of ``sensitive_for`` answers, keyed by table."""

    def __init__(self, sensitive_for: Callable[[str], Mapping[str, str]]) -> None:
        self._lookup = sensitive_for
        self._tables: dict[str, Mapping[str, str]] = {}

    def of(self, source: str) -> str | None:
        table, _, column = source.rpartition(".")
        if table not in self._tables:
            self._tables[table] = {k.lower(): v for k, v in self._lookup(table).items()}
        return self._tables[table].get(column.lower())


def _decide(
    lin: ColumnLineage,
    fld: Mapping[str, Any],
    sens: _Sensitivity,
    premasked: frozenset[str] = frozenset(),
) -> ColumnMask:
    name = str(fld.get("name", lin.name))
    if lin.unknown is not None:
        return ColumnMask(name, "nullify", f"lineage unknown: {lin.unknown}")
    sub_fields = list(fld.get("fields") or ())
    if (
        not lin.counting
        and field_type(fld) == "RECORD"
        and lin.fields
        and len(lin.fields) == len(sub_fields)
    ):
        masks = tuple(
            _decide(f, s, sens, premasked) for f, s in zip(lin.fields, sub_fields, strict=True)
        )
        if any(m.strategy is not None for m in masks):
            return ColumnMask(name, PER_FIELD, "struct with sensitive fields", masks)
    hits = sorted((src, strat) for src in lin.sources if (strat := sens.of(src)) is not None)
    if not hits:
        if lin.fields and field_type(fld) == "RECORD" and any(m.unknown for m in lin.fields):
            return ColumnMask(name, "nullify", "struct field lineage unknown")
        return ColumnMask(name, None, "counting aggregate" if lin.counting else "not sensitive")
    names = ", ".join(src for src, _ in hits)
    if all(src.lower() in premasked for src, _ in hits):
        # The rewrite replaced these sources by their masked values before the query ran:
        # whatever the query computed from them, it computed from masked values.
        if lin.direct:
            strategy = strictest([s for _, s in hits])
            return ColumnMask(name, strategy, f"masked at the source: {names}", at_source=True)
        # Computed from masked values only (and the query's own literals): it holds
        # nothing raw, so the detectors are not run on it either (a token's hex digits
        # can pass a checksum by chance). Any other source keeps the detectors on.
        only_masked = all(src.lower() in premasked for src in lin.sources)
        return ColumnMask(
            name,
            None,
            f"computed from values masked at the source: {names}",
            at_source=only_masked,
        )
    if lin.counting:
        return ColumnMask(name, "nullify", f"counts computed from sensitive values of {names}")
    if lin.direct:
        strategy = strictest([s for _, s in hits])
        if strategy == "hmac":
            # Tokens are computed in SQL on source values only; never on a value the query
            # could have chosen (a literal UNION-ed in would otherwise get its token).
            why = f"direct reference to {names} not masked at the source"
            return ColumnMask(name, "nullify", why)
        return ColumnMask(name, strategy, f"direct reference to {names}")
    return ColumnMask(name, "nullify", f"derived from {names}")


def plan_masking(
    lineage: Sequence[ColumnLineage],
    schema_fields: Sequence[Mapping[str, Any]],
    sensitive_for: Callable[[str], Mapping[str, str]],
    premasked: frozenset[str] = frozenset(),
) -> MaskPlan:
    """Decide the mask of every output column.

    Lineage is matched to the schema by position. When the lengths differ (lineage
    failed or is partial) a position only matches if the names agree too; every
    unmatched column is nullified (fail closed). ``premasked`` lists the sources
    (``project.dataset.table.column``) the masking rewrite masked before the query ran:
    outputs computed only from those are checked, not masked twice.

    >>> schema = [{"name": "a", "type": "STRING"}, {"name": "b", "type": "STRING"}]
    >>> plan = plan_masking([], schema, lambda t: {})
    >>> [(c.strategy, c.reason) for c in plan.columns]
    [('nullify', 'no lineage for column'), ('nullify', 'no lineage for column')]
    """
    sens = _Sensitivity(sensitive_for)
    same_width = len(lineage) == len(schema_fields)
    masks = []
    for i, fld in enumerate(schema_fields):
        name = str(fld.get("name", f"f{i}_"))
        lin = lineage[i] if i < len(lineage) else None
        if lin is None or (not same_width and lin.name.lower() != name.lower()):
            masks.append(ColumnMask(name, "nullify", "no lineage for column"))
            continue
        masks.append(_decide(lin, fld, sens, premasked))
    return MaskPlan(tuple(masks))


# -- strategies on cells -----------------------------------------------------------------

_X_TABLE = str.maketrans(
    {c: "X" for c in "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"}
)


def _x_out(text: str) -> str:
    if text.isascii():
        return text.translate(_X_TABLE)
    return "".join("X" if c.isalnum() else c for c in text)


def keep_last4(value: str) -> str:
    """Replace every alphanumeric but the last four with ``X`` (all of them if <= 4).

    >>> keep_last4("123-45-6789"), keep_last4("4111 1111 1111 1111"), keep_last4("12-34")
    ('XXX-XX-6789', 'XXXX XXXX XXXX 1111', 'XX-XX')
    """
    seen = 0
    for i in range(len(value) - 1, -1, -1):
        if value[i].isalnum():
            seen += 1
            if seen == 5:
                return _x_out(value[: i + 1]) + value[i + 1 :]
    return _x_out(value)


def keep_first4(value: str) -> str:
    """Replace every alphanumeric but the first four with ``X`` (all of them if <= 4).

    >>> keep_first4("4111-1111-1111-1111"), keep_first4("ab")
    ('4111-XXXX-XXXX-XXXX', 'XX')
    """
    seen = 0
    for i, ch in enumerate(value):
        if ch.isalnum():
            seen += 1
            if seen == 5:
                return value[:i] + _x_out(value[i:])
    return _x_out(value)


def _year_micros(year: int) -> int:
    return calendar.timegm((year, 1, 1, 0, 0, 0)) * 1_000_000


def _strategy_fn(strategy: str, typ: str, key: bytes) -> CellFn:
    """A function masking one non-repeated, non-RECORD cell (None passes through)."""
    default = DEFAULT_VALUES.get(typ)

    def to_default(v: Cell) -> Cell:
        return None if v is None else default

    def nullify(v: Cell) -> Cell:
        return None

    if strategy == "nullify" or strategy not in MASK_STRATEGIES:
        return nullify
    if strategy == "default":
        return to_default
    if strategy == "sha256":
        if typ == "STRING":
            return lambda v: None if v is None else hashlib.sha256(v.encode()).hexdigest()
        if typ == "BYTES":
            return lambda v: (
                None
                if v is None
                else base64.b64encode(hashlib.sha256(base64.b64decode(v)).digest()).decode()
            )
        return to_default
    if strategy == "hmac":
        digest = _hmac.digest
        if typ == "STRING":
            return lambda v: (
                None if v is None else "tok_" + digest(key, v.encode(), "sha256").hex()[:24]
            )
        if typ == "BYTES":
            return lambda v: (
                None
                if v is None
                else base64.b64encode(digest(key, base64.b64decode(v), "sha256")[:12]).decode()
            )
        if typ == "INT64":
            return lambda v: (
                None
                if v is None
                else str(int.from_bytes(digest(key, v.encode(), "sha256")[:7], "big"))
            )
        return to_default
    if strategy in ("last4", "first4"):
        keep = keep_last4 if strategy == "last4" else keep_first4
        if typ == "STRING":
            return lambda v: None if v is None else keep(v)
        return to_default
    if strategy == "email":
        if typ != "STRING":
            return to_default

        def email(v: Cell) -> Cell:
            if v is None:
                return None
            at = v.rfind("@")
            domain = v[at + 1 :]
            if at > 0 and "." in domain and " " not in domain:
                return "XXXXX@" + domain
            return None

        return email
    # year
    if typ == "DATE" or typ == "STRING":
        return lambda v: v[:4] + "-01-01" if v is not None and v[:4].isdigit() else None
    if typ == "DATETIME":
        return lambda v: None if v is None else v[:4] + "-01-01T00:00:00"
    if typ == "TIMESTAMP":

        def year(v: Cell) -> Cell:
            if v is None:
                return None
            if v.lstrip("-").isdigit():  # int64 microseconds
                when = datetime.fromtimestamp(int(v) / 1e6, tz=UTC)
                return str(_year_micros(when.year))
            when = datetime.fromtimestamp(float(v), tz=UTC)  # float seconds (older REST)
            return str(float(_year_micros(when.year) // 1_000_000))

        return year
    return to_default


_TOKEN = re.compile(r"tok_[0-9a-f]{24}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _check_fn(strategy: str, typ: str, key: bytes) -> CellFn:
    """A check of a value the rewrite masked at the source (None passes through).

    Idempotent strategies are simply applied again (a masked value comes out unchanged).
    A keyed or hashed value is kept only if it has the strategy's format, else nullified:
    the second line never computes a token itself.
    """
    if strategy == "hmac" and typ in ("STRING", "BYTES", "INT64"):
        if typ == "STRING":
            return lambda v: v if v is None or _TOKEN.fullmatch(v) else None
        if typ == "BYTES":
            return lambda v: v if v is None or len(base64.b64decode(v)) == 12 else None
        return lambda v: v if v is None or (v.isdigit() and int(v) < 2**56) else None
    if strategy == "sha256" and typ in ("STRING", "BYTES"):
        if typ == "STRING":
            return lambda v: v if v is None or _HEX64.fullmatch(v) else None
        return lambda v: v if v is None or len(base64.b64decode(v)) == 32 else None
    return _strategy_fn(strategy, typ, key)


class Masker:
    """Applies a :class:`MaskPlan` to compact rows, with detectors on unmasked strings.

    ``hits`` counts detector redactions per ``(column, detector)``.
    """

    def __init__(
        self,
        plan: MaskPlan,
        schema_fields: Sequence[Mapping[str, Any]],
        *,
        hmac_key: bytes,
        detectors: bool = True,
    ) -> None:
        self.plan = plan
        self.hits: Counter[tuple[str, str]] = Counter()
        self._key = hmac_key
        self._detectors = detectors
        fns: list[CellFn | None] = []
        masks = list(plan.columns)
        for i, fld in enumerate(schema_fields):
            if i < len(masks):
                mask = masks[i]
            else:  # a plan narrower than the schema: fail closed
                mask = ColumnMask(str(fld.get("name", "")), "nullify", "not in plan")
            fns.append(self._compile(mask, fld, str(fld.get("name", f"f{i}_"))))
        self._fns = fns

    # -- compilation -------------------------------------------------------------------

    def _scanner(self, column: str) -> CellFn:
        hits = self.hits
        may = detectors.may_contain
        redact = detectors.redact

        def scan(v: Cell) -> Cell:
            if v is None or not may(v):
                return v
            new, kinds = redact(v)
            for kind in kinds:
                hits[(column, kind)] += 1
            return new

        return scan

    def _compile(
        self, mask: ColumnMask | None, fld: Mapping[str, Any], column: str
    ) -> CellFn | None:
        """One function for a whole cell of ``fld`` (repeated and nested included)."""
        typ = field_type(fld)
        many = repeated(fld)
        strategy = mask.strategy if mask is not None else None
        sub_fields = list(fld.get("fields") or ())
        inner: CellFn | None
        if strategy is None:
            if not self._detectors or (mask is not None and mask.at_source):
                return None  # no detectors, or computed from masked values only
            if typ == "STRING":
                inner = self._scanner(column)
            elif typ == "RECORD":
                inner = self._record([None] * len(sub_fields), sub_fields, column)
            else:
                return None
        elif mask is not None and mask.at_source and strategy in MASK_STRATEGIES:
            inner = _check_fn(strategy, typ, self._key)
        elif strategy == PER_FIELD and mask is not None and typ == "RECORD":
            sub = list(mask.fields) + [None] * (len(sub_fields) - len(mask.fields))
            inner = self._record(sub, sub_fields, column)
        elif strategy in ("nullify", "default") and many:
            return lambda v: []
        elif strategy == "default" and typ == "RECORD":
            value = default_value(fld)
            inner = lambda v: None if v is None else list(value)  # noqa: E731
        elif typ == "RECORD" or strategy not in MASK_STRATEGIES:
            inner = _strategy_fn("nullify", typ, self._key)
        else:
            inner = _strategy_fn(strategy, typ, self._key)
        if inner is None:
            return None
        if many:
            element = inner
            return lambda v: None if v is None else [element(x) for x in v]
        return inner

    def _record(
        self,
        masks: Sequence[ColumnMask | None],
        sub_fields: Sequence[Mapping[str, Any]],
        column: str,
    ) -> CellFn | None:
        fns = [
            self._compile(m, f, f"{column}.{f.get('name', '')}")
            for m, f in zip(masks, sub_fields, strict=True)
        ]
        if all(fn is None for fn in fns):
            return None
        pairs = list(enumerate(fns))

        def record(v: Cell) -> Cell:
            if v is None:
                return None
            out = list(v)
            for i, fn in pairs:
                if fn is not None and i < len(out):
                    out[i] = fn(out[i])
            return out

        return record

    # -- hot path ----------------------------------------------------------------------

    def mask_rows(self, rows: list[list[Any]]) -> list[list[Any]]:
        """New rows with every column masked; the input is not modified.

        Works column by column (``zip``/``map`` run the loops in C), so a column
        with nothing to do costs only the transposition. Raises ValueError when a
        row's width differs from the schema's.
        """
        if not rows:
            return []
        columns = list(zip(*rows, strict=True))
        out_cols = [
            col if fn is None else map(fn, col) for col, fn in zip(columns, self._fns, strict=True)
        ]
        return [list(r) for r in zip(*out_cols, strict=True)]
