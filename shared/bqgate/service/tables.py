"""Row APIs through the same gate as queries: ``tabledata.list`` and ``tabledata.insertAll``.

``tabledata.list`` (``list_rows``, ``bq head``, Node's ``getRows``) runs as a
``SELECT *`` (or the selected fields) of the table through :meth:`Gateway.submit`:
the same classification, rewrite and masking as any query, and the result pages of
that one job serve every page of the listing (the page token names the job).

``tabledata.insertAll`` becomes one ``INSERT INTO ... VALUES`` statement whose values
are typed literals built from the table's schema, so the policy judges it as the write
it is (allowed, needing approval, or blocked) and nothing bypasses the executor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bqgate.errors import AccessDenied, InvalidRequest, Unavailable
from bqgate.identity import Principal
from bqgate.jobs import PENDING_APPROVAL, Job
from bqgate.ports import Catalog
from bqgate.service.gateway import Gateway, job_error
from bqgate.vocabulary import field_type
from bqgate.wire import bigquery as wire

COLUMN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Most rows one insertAll may carry through the gateway (one INSERT statement).
MAX_INSERT_ROWS = 10_000
#: Longest INSERT statement built (BigQuery's limit on query text is 1,024 KiB).
MAX_INSERT_SQL = 900_000


def _tabledata_token(job_id: str, offset: int) -> str:
    """A tabledata.list page token: the job whose results serve the listing, and where.

    >>> _tabledata_decode(_tabledata_token("j-1", 40))
    ('j-1', 40)
    """
    raw = f"bqgate-td:{job_id}:{offset}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _tabledata_decode(token: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, job_id, offset = raw.split(":")
        if prefix != "bqgate-td" or not wire.JOB_ID_RE.match(job_id) or int(offset) < 0:
            raise ValueError(raw)
        return job_id, int(offset)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest(
            "Invalid value at 'pageToken': not a token this gateway issued"
        ) from None


def _quote(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _fqn(project: str, dataset: str, table: str) -> str:
    return f"{project}.{dataset}.{table}"


class TableDataApi:
    def __init__(self, *, gateway: Gateway, catalog: Catalog, metadata: Any) -> None:
        self.gateway = gateway
        self.catalog = catalog
        self.metadata = metadata  # bqgate.service.metadata.MetadataApi (visibility)

    def _schema(
        self, principal: Principal, project: str, dataset: str, table: str
    ) -> list[dict[str, Any]]:
        found = self.metadata.get_table(principal, project, dataset, table)
        fields: list[dict[str, Any]] = (found.get("schema") or {}).get("fields") or []
        return fields

    # --- tabledata.list ----------------------------------------------------------

    def list_rows(
        self,
        principal: Principal,
        project: str,
        dataset: str,
        table: str,
        params: Mapping[str, str],
    ) -> dict[str, Any]:
        token = params.get("pageToken")
        anonymous = wire.anonymous_job_id(dataset, table)
        if token:
            job_id, start = _tabledata_decode(token)
            job = self.gateway._owned(principal, project, job_id)
        elif anonymous is not None:
            # A job's anonymous destination table: its (masked) results, owner only.
            job = self.gateway._owned(principal, project, anonymous)
            start = wire._int(params.get("startIndex"), "startIndex") or 0
        else:
            schema = self._schema(principal, project, dataset, table)  # 404 if invisible
            columns = _selected(params.get("selectedFields"), schema)
            sql = f"SELECT {columns} FROM {_quote(_fqn(project, dataset, table))}"
            req = wire.QueryRequest(sql=sql, job_id=None, location=None, default_dataset=None)
            job = self.gateway.submit(
                principal, project, req, self.gateway.new_id(), "tabledata.list"
            )
            start = wire._int(params.get("startIndex"), "startIndex") or 0
        job = self._finished(job, _fqn(project, dataset, table), "Reading")
        rows, next_offset = self.gateway.page(
            job,
            wire.ResultsRequest(
                max_results=wire._int(params.get("maxResults"), "maxResults"),
                start_index=start,
                timeout_ms=None,
                location=None,
                int64_timestamps=wire._truthy(params.get("formatOptions.useInt64Timestamp")),
            ),
        )
        body: dict[str, Any] = {
            "kind": "bigquery#tableDataList",
            "etag": f'"{job.job_id}"',
            "totalRows": str(job.total_rows or 0),
        }
        if rows:
            body["rows"] = rows
        if next_offset is not None:
            body["pageToken"] = _tabledata_token(job.job_id, next_offset)
        return body

    def _finished(self, job: Job, fqn: str, what: str) -> Job:
        job = self.gateway._wait(self.gateway.store.get(job.job_id) or job, None)
        if job.done:
            if job.error:
                raise job_error(job)
            return job
        if job.state == PENDING_APPROVAL:
            raise AccessDenied(
                f"{what} {fqn} needs approval under the bqgate policy; the request is waiting "
                f"as job {job.job_id}: once it is approved, its results are at "
                f"jobs.getQueryResults for that job"
            )
        raise Unavailable(
            f"{what} {fqn} is taking longer than expected (job {job.job_id}); "
            "its results will be at jobs.getQueryResults for that job"
        )

    # --- tabledata.insertAll -----------------------------------------------------

    def insert_all(
        self,
        principal: Principal,
        project: str,
        dataset: str,
        table: str,
        body: Mapping[str, Any],
    ) -> dict[str, Any]:
        rows = body.get("rows")
        if not isinstance(rows, list) or not rows:
            raise InvalidRequest("Invalid value at 'rows': at least one row is required")
        if len(rows) > MAX_INSERT_ROWS:
            raise InvalidRequest(
                f"Invalid value at 'rows': at most {MAX_INSERT_ROWS:,} rows per insertAll "
                "through bqgate; send them in smaller batches"
            )
        schema = self._schema(principal, project, dataset, table)
        skip_invalid = bool(body.get("skipInvalidRows"))
        ignore_unknown = bool(body.get("ignoreUnknownValues"))
        errors: list[dict[str, Any]] = []
        good: list[tuple[int, dict[str, str]]] = []
        for index, row in enumerate(rows):
            values = row.get("json") if isinstance(row, dict) else None
            if not isinstance(values, dict):
                errors.append(_row_error(index, "the row has no json object"))
                continue
            try:
                good.append((index, row_literals(values, schema, ignore_unknown)))
            except ValueError as exc:
                errors.append(_row_error(index, str(exc)))
        response: dict[str, Any] = {"kind": "bigquery#tableDataInsertAllResponse"}
        if errors and not skip_invalid:
            bad = {e["index"] for e in errors}
            stopped = [
                {"index": i, "errors": [{"reason": "stopped", "message": ""}]}
                for i in range(len(rows))
                if i not in bad
            ]
            response["insertErrors"] = sorted(errors + stopped, key=lambda e: e["index"])
            return response
        if errors:
            response["insertErrors"] = errors
        if not good:
            return response
        sql = insert_statement(_fqn(project, dataset, table), schema, [v for _, v in good])
        if len(sql) > MAX_INSERT_SQL:
            raise InvalidRequest(
                "Invalid value at 'rows': the rows are too large for one insertAll through "
                "bqgate; send them in smaller batches"
            )
        ids = [r.get("insertId") for r in rows if isinstance(r, dict)]
        if ids and all(isinstance(i, str) and i for i in ids):
            # Every row has an insertId: a retry of the same request is the same job.
            digest = hashlib.sha256(
                json.dumps([principal.email, project, dataset, table, ids]).encode()
            ).hexdigest()
            job_id = f"insertall_{digest[:40]}"
        else:
            job_id = self.gateway.new_id()
        existing = self.gateway.store.get(job_id)
        if existing is not None and existing.owner == principal.email and existing.sql == sql:
            job = existing
        else:
            req = wire.QueryRequest(sql=sql, job_id=job_id, location=None, default_dataset=None)
            job = self.gateway.submit(principal, project, req, job_id, "tabledata.insertAll")
        self._finished(job, _fqn(project, dataset, table), "Inserting rows into")
        return response


def _row_error(index: int, message: str) -> dict[str, Any]:
    return {"index": index, "errors": [{"reason": "invalid", "message": message}]}


def _selected(selected: str | None, schema: Sequence[Mapping[str, Any]]) -> str:
    if not selected:
        return "*"
    known = {str(f.get("name", "")).lower(): str(f.get("name")) for f in schema}
    names = []
    for raw in selected.split(","):
        name = raw.strip()
        if "." in name:
            raise InvalidRequest(
                f"Invalid value at 'selectedFields': {name}: bqgate selects top-level "
                "fields only; select the whole column"
            )
        if not COLUMN_RE.match(name) or name.lower() not in known:
            raise InvalidRequest(f"Invalid value at 'selectedFields': no field {name!r}")
        names.append(_quote(known[name.lower()]))
    return ", ".join(names)


# --- typed literals -------------------------------------------------------------------

#: The scalar types a row can be written as through the gateway (legacy names resolved).
INSERTABLE_TYPES = frozenset(
    {
        "INT64",
        "FLOAT64",
        "BOOL",
        "STRING",
        "BYTES",
        "NUMERIC",
        "BIGNUMERIC",
        "TIMESTAMP",
        "DATE",
        "DATETIME",
        "TIME",
        "JSON",
        "GEOGRAPHY",
    }
)


def bq_type(fld: Mapping[str, Any], *, element: bool = False) -> str:
    """The GoogleSQL type of a schema field.

    >>> bq_type({"name": "r", "type": "RECORD", "mode": "REPEATED", "fields": [
    ...     {"name": "a", "type": "INTEGER"}]})
    'ARRAY<STRUCT<`a` INT64>>'
    """
    typ = field_type(fld)
    if typ == "RECORD":
        inner = ", ".join(f"{_quote(str(f['name']))} {bq_type(f)}" for f in fld.get("fields") or [])
        base = f"STRUCT<{inner}>"
    elif typ in INSERTABLE_TYPES:
        base = typ
    else:
        raise ValueError(f"column {fld.get('name')}: type {typ} cannot be inserted through bqgate")
    if fld.get("mode") == "REPEATED" and not element:
        return f"ARRAY<{base}>"
    return base


_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _string(text: str) -> str:
    r"""A GoogleSQL string literal that holds ``text`` exactly.

    >>> print(_string("it's \\ a" + chr(10) + "line" + chr(0)))
    'it\'s \\ a\nline\x00'
    """
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "'" + "".join(out) + "'"


def _cast(text: str, typ: str) -> str:
    return f"CAST({_string(text)} AS {typ})"


def _scalar(value: Any, fld: Mapping[str, Any]) -> str:
    """One non-NULL JSON value as a typed GoogleSQL literal; ValueError if it cannot be."""
    name = fld.get("name")
    shown = str(fld.get("type", "STRING")).upper()  # the schema's own name, in messages
    typ = field_type(fld)
    if typ == "RECORD":
        if not isinstance(value, dict):
            raise ValueError(f"field {name}: expected an object")
        subs = fld.get("fields") or []
        unknown = set(value) - {str(f.get("name")) for f in subs}
        if unknown:
            raise ValueError(f"field {name}: no such field {sorted(unknown)[0]}")
        parts = [_value(value.get(str(f["name"])), f) for f in subs]
        return f"{bq_type({**fld, 'mode': 'NULLABLE'})}({', '.join(parts)})"
    if isinstance(value, (dict, list)) and typ != "JSON":
        raise ValueError(f"field {name}: expected a {shown} value")
    if typ == "INT64":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"field {name}: expected an integer")
        try:
            number = int(value) if not isinstance(value, float) or value.is_integer() else None
        except ValueError:
            number = None
        if number is None:
            raise ValueError(f"field {name}: {value!r} is not an integer")
        return str(number)
    if typ == "FLOAT64":
        if isinstance(value, bool):
            raise ValueError(f"field {name}: expected a number")
        try:
            number_f = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"field {name}: {value!r} is not a number") from None
        return _cast(repr(number_f), "FLOAT64") if not math.isfinite(number_f) else repr(number_f)
    if typ == "BOOL":
        if isinstance(value, bool):
            return "TRUE" if value else "FALSE"
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.upper()
        raise ValueError(f"field {name}: expected true or false")
    if typ in ("NUMERIC", "BIGNUMERIC"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"field {name}: expected a number")
        return _cast(str(value), typ)
    if typ == "TIMESTAMP" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"TIMESTAMP_MICROS({round(value * 1_000_000)})"
    if typ == "BYTES":
        if not isinstance(value, str):
            raise ValueError(f"field {name}: expected base64 text")
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"field {name}: not base64") from None
        return f"FROM_BASE64({_string(value)})"
    if typ == "JSON":
        return f"PARSE_JSON({_string(json.dumps(value))})"
    if typ == "GEOGRAPHY":
        return f"ST_GEOGFROMTEXT({_string(str(value))})"
    if typ == "STRING":
        if isinstance(value, bool):
            return _string("true" if value else "false")
        return _string(str(value))
    if typ in ("TIMESTAMP", "DATE", "DATETIME", "TIME"):
        if not isinstance(value, str):
            raise ValueError(f"field {name}: expected a {typ} string")
        return _cast(value, typ)
    raise ValueError(f"field {name}: type {shown} cannot be inserted through bqgate")


def _value(value: Any, fld: Mapping[str, Any]) -> str:
    if fld.get("mode") == "REPEATED":
        if value is None:
            return f"CAST([] AS {bq_type(fld)})"
        if not isinstance(value, list):
            raise ValueError(f"field {fld.get('name')}: expected a list")
        elem = {**fld, "mode": "NULLABLE"}
        if any(v is None for v in value):
            raise ValueError(f"field {fld.get('name')}: a repeated field cannot hold null")
        return f"{bq_type(fld)}[{', '.join(_scalar(v, elem) for v in value)}]"
    if value is None:
        if fld.get("mode") == "REQUIRED":
            raise ValueError(f"field {fld.get('name')}: required, got null")
        return f"CAST(NULL AS {bq_type(fld)})"
    return _scalar(value, fld)


def row_literals(
    values: Mapping[str, Any], schema: Sequence[Mapping[str, Any]], ignore_unknown: bool
) -> dict[str, str]:
    """Column name -> typed literal for one insertAll row (every column of the schema).

    >>> row_literals({"a": 1, "s": "it's"}, [{"name": "a", "type": "INTEGER"},
    ...              {"name": "s", "type": "STRING"}, {"name": "d", "type": "DATE"}], False)
    {'a': '1', 's': "'it\\\\'s'", 'd': 'CAST(NULL AS DATE)'}
    """
    by_name = {str(f.get("name", "")).lower(): f for f in schema}
    unknown = [k for k in values if k.lower() not in by_name]
    if unknown and not ignore_unknown:
        raise ValueError(f"no such field: {unknown[0]}")
    lowered = {k.lower(): v for k, v in values.items()}
    return {str(f["name"]): _value(lowered.get(str(f["name"]).lower()), f) for f in schema}


def insert_statement(
    fqn: str, schema: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, str]]
) -> str:
    """``INSERT INTO `fqn` (columns) VALUES (...), ...`` from :func:`row_literals` rows."""
    columns = [str(f["name"]) for f in schema]
    values = ",\n".join("(" + ", ".join(r[c] for c in columns) + ")" for r in rows)
    return f"INSERT INTO {_quote(fqn)} ({', '.join(_quote(c) for c in columns)})\nVALUES\n{values}"


__all__ = ["TableDataApi", "insert_statement", "row_literals"]
