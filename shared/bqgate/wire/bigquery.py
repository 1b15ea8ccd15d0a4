"""BigQuery REST request and response shapes: pure translation, no I/O.

The gateway stores result rows as *compact rows* (a list of cells; a scalar cell is
the REST ``v`` string or ``None``; a RECORD cell is the list of its field cells; a
REPEATED cell is the list of its element cells). This module turns them back into
BigQuery's ``{"f": [{"v": ...}]}`` shape.

>>> schema = [{"name": "a", "type": "INTEGER"}, {"name": "s", "type": "RECORD",
...            "fields": [{"name": "x", "type": "STRING"}]}]
>>> rows_to_rest([["1", ["hi"]]], schema)
[{'f': [{'v': '1'}, {'v': {'f': [{'v': 'hi'}]}}]}]
>>> decode_page_token(encode_page_token(1500))
1500
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from bqgate.errors import (
    JOB_ERRORS,
    AccessDenied,
    InvalidQuery,
    InvalidRequest,
    TooLarge,
    for_job,
)
from bqgate.jobs import DONE, Job
from bqgate.wire import codec

#: BigQuery's job id pattern (letters, digits, ``_`` and ``-``, at most 1024).
#: Rows served per getQueryResults call when the client does not say.
DEFAULT_PAGE_ROWS = 10_000
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,1024}$")
#: Firestore reserves document ids of this form (``.`` and ``..`` BigQuery's pattern excludes).
RESERVED_ID_RE = re.compile(r"^__.*__$")
#: BigQuery label keys start with a lower-case letter; keys and values are lower-case
#: letters (international ones too), digits, ``_`` and ``-``, at most 63 characters.
LABEL_KEY_RE = re.compile(r"^[^\W\d_][\w-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[\w-]{0,63}$")
MAX_LABELS = 64
#: Project ids (with an optional ``domain:`` prefix), dataset ids and locations.
PROJECT_RE = re.compile(r"^(?:[a-z][a-z0-9.-]{0,62}:)?[a-z][a-z0-9-]{0,62}$")
DATASET_RE = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
LOCATION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,62}$")

#: Largest request body read at all (413 above it).
MAX_BODY_BYTES = 2 * 1024 * 1024
#: Deepest JSON nesting accepted (a query with STRUCT/ARRAY parameters needs about 12).
MAX_JSON_DEPTH = 32
#: Longest SQL text, in UTF-8 bytes. BigQuery's own limit is 1 MiB; the gateway keeps the
#: statement, its normalised form and its session record in Firestore documents (1 MiB
#: each: a 700 KiB statement fails to store), so it accepts a quarter of that.
MAX_QUERY_BYTES = 256 * 1024
#: Most bytes of query parameters (as JSON), stored in the same job document.
MAX_PARAMETER_BYTES = 128 * 1024
#: Largest integer a count or a timeout may be (BigQuery's int64).
MAX_INT = 2**63 - 1
#: Query parameters: how many, how deeply ARRAY/STRUCT types nest (Firestore documents
#: nest at most 20 levels, and a parameter is stored a few levels down).
MAX_PARAMETERS = 10_000
MAX_PARAMETER_NESTING = 4
#: BigQuery's parameter and STRUCT field names.
PARAM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
FIELD_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}$")
#: Scalar parameter types (standard SQL names and the legacy names clients still send).
SCALAR_TYPES = frozenset(
    {
        "BIGNUMERIC",
        "BOOL",
        "BOOLEAN",
        "BYTES",
        "DATE",
        "DATETIME",
        "FLOAT",
        "FLOAT64",
        "GEOGRAPHY",
        "INT64",
        "INTEGER",
        "INTERVAL",
        "JSON",
        "NUMERIC",
        "STRING",
        "TIME",
        "TIMESTAMP",
        "BIGDECIMAL",
        "DECIMAL",
    }
)
PARAMETER_MODES = frozenset({"NAMED", "POSITIONAL"})
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class QueryRequest:
    """A query, from a ``jobs.insert`` or ``jobs.query`` body."""

    sql: str
    job_id: str | None
    location: str | None
    default_dataset: dict[str, str] | None
    labels: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False
    query_parameters: list[dict[str, Any]] = field(default_factory=list)
    parameter_mode: str | None = None
    timeout_ms: int | None = None
    max_results: int | None = None
    request_id: str | None = None
    maximum_bytes_billed: int | None = None
    priority: str | None = None
    write_disposition: str | None = None
    use_query_cache: bool | None = None


def check_job_id(value: Any, path: str) -> str:
    """A job id as BigQuery allows it and Firestore can store it, or ``InvalidRequest``.

    >>> check_job_id("job_1-a", "jobId")
    'job_1-a'
    >>> check_job_id("__x__", "jobId")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bqgate.errors.InvalidRequest: Invalid value at 'jobId': ids of the form __name__ are reserved
    """
    if not isinstance(value, str) or not JOB_ID_RE.match(value):
        raise InvalidRequest(
            f"Invalid value at '{path}': a job id is 1 to 1024 letters, digits, _ and - only"
        )
    if RESERVED_ID_RE.match(value):
        raise InvalidRequest(f"Invalid value at '{path}': ids of the form __name__ are reserved")
    return value


def is_job_id(value: Any) -> TypeGuard[str]:
    """True for an id :func:`check_job_id` accepts."""
    return (
        isinstance(value, str) and bool(JOB_ID_RE.match(value)) and not RESERVED_ID_RE.match(value)
    )


def _check_tree(root: Any) -> None:
    """Depth and Unicode checks over a decoded JSON value (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if not node.isascii() and _SURROGATE.search(node):
                raise InvalidRequest(
                    "Invalid JSON payload received: a string holds a lone UTF-16 surrogate"
                )
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise InvalidRequest(
                f"Invalid JSON payload received: nested deeper than {MAX_JSON_DEPTH} levels"
            )
        if isinstance(node, dict):
            stack.extend((k, depth) for k in node)
            stack.extend((v, depth + 1) for v in node.values())
        else:
            stack.extend((v, depth + 1) for v in node)


def loads(raw: bytes | str, *, limit: int = MAX_BODY_BYTES) -> Any:
    """Decode untrusted JSON within limits (size, depth, valid Unicode), or raise
    ``InvalidRequest`` / ``TooLarge``. Any JSON value, not only objects.

    >>> loads(b'[1, "a"]')
    [1, 'a']
    >>> loads(b"[" * 100_000)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bqgate.errors.InvalidRequest: Invalid JSON payload received: nested deeper than 32 levels
    """
    if len(raw) > limit:
        raise TooLarge(f"The request body is over the gateway's limit of {limit} bytes")
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest("Invalid JSON payload received: the body is not UTF-8") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise InvalidRequest(
            f"Invalid JSON payload received: nested deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except ValueError as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        where = (
            f" at line {exc.lineno} column {exc.colno}"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        raise InvalidRequest(f"Invalid JSON payload received: {msg}{where}") from None
    _check_tree(value)
    return value


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """Decode a request body, or raise a BigQuery-shaped ``invalid`` error.

    >>> parse_json_body(b'{"a": 1}')
    {'a': 1}
    >>> parse_json_body(b'{oops')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bqgate.errors.InvalidRequest: Invalid JSON payload received: Expecting property name ...
    """
    if len(raw) > MAX_BODY_BYTES:
        raise TooLarge(f"The request body is over the gateway's limit of {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    body = loads(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("Invalid JSON payload received: the body must be a JSON object")
    return body


def _obj(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"Invalid value at '{path}': expected an object")
    return value


def _str(value: Any, path: str, pattern: re.Pattern[str], what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.match(value):
        raise InvalidRequest(f"Invalid value at '{path}': {what}")
    return value


def _bool(value: Any, path: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"Invalid value at '{path}': expected true or false")
    return value


def _dataset_ref(value: Any, path: str) -> dict[str, str] | None:
    ref = _obj(value, path)
    if not ref:
        return None
    dataset_id = _str(
        ref.get("datasetId"),
        f"{path}.datasetId",
        DATASET_RE,
        "a dataset id is letters, digits and _ only",
    )
    if dataset_id is None:
        raise InvalidRequest(f"Invalid value at '{path}.datasetId': required")
    out = {"datasetId": dataset_id}
    project_id = _str(ref.get("projectId"), f"{path}.projectId", PROJECT_RE, "not a project id")
    if project_id is not None:
        out["projectId"] = project_id
    return out


def _labels(value: Any, path: str) -> dict[str, str]:
    labels = _obj(value, path)
    if len(labels) > MAX_LABELS:
        raise InvalidRequest(f"Invalid value at '{path}': at most {MAX_LABELS} labels")
    for k, v in labels.items():
        if (
            not LABEL_KEY_RE.match(k)
            or k != k.lower()
            or not isinstance(v, str)
            or not LABEL_VALUE_RE.match(v)
            or v != v.lower()
        ):
            shown = k if LABEL_KEY_RE.match(k.lower()) else "(key)"
            raise InvalidRequest(
                f"Invalid value at '{path}': bad label {shown}: keys start with a lower-case "
                "letter; keys and values are lower-case letters, digits, _ and -, at most 63"
            )
    return dict(labels)


_DIALECT_PREFIX = re.compile(r"^\s*#(standardSQL|legacySQL)\b", re.IGNORECASE)

LEGACY_SQL_MESSAGE = (
    "bqgate runs GoogleSQL only, and this request asks for legacy SQL{why}. Set "
    "useLegacySql=false (bq: --nouse_legacy_sql, or run it as `bqgate bq`, which sets it; "
    "the Python, Node, pandas-gbq, SQLAlchemy, ibis and dbt clients set it already) or "
    "begin the query with #standardSQL"
)


def _sql(value: Any, path: str, use_legacy_sql: Any) -> str:
    """The query text, if it is to run as GoogleSQL; legacy SQL is refused with what to do.

    BigQuery reads a request that does not set ``useLegacySql`` (the ``bq`` CLI's default)
    as legacy SQL unless the query starts with ``#standardSQL``. bqgate runs such a request
    as GoogleSQL when it reads the same in both dialects (:mod:`bqgate.sql.dialect`), so
    ``bq query 'SELECT ...'`` works with no flag; otherwise it is refused, never guessed.
    The executor always runs GoogleSQL, so what runs is what the classifier judged.

    >>> _sql("#standardSQL SELECT 1", "query", None)
    '#standardSQL SELECT 1'
    >>> _sql("SELECT 1", "query", None)
    'SELECT 1'
    >>> _sql("SELECT * FROM [p:d.t]", "query", None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bqgate.errors.InvalidQuery: bqgate runs GoogleSQL only, and this request asks for ...
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"Invalid value at '{path}': a query is required")
    size = len(value.encode("utf-8"))
    if size > MAX_QUERY_BYTES:
        raise InvalidQuery(
            f"The query is too large: {size:,} bytes of SQL; the gateway's limit is "
            f"{MAX_QUERY_BYTES:,} bytes"
        )
    if use_legacy_sql is not None and not isinstance(use_legacy_sql, bool):
        raise InvalidRequest(
            f"Invalid value at '{path[: path.rfind('.') + 1]}useLegacySql': expected true or false"
        )
    prefix = _DIALECT_PREFIX.match(value)
    said = prefix.group(1).lower() if prefix else None
    if use_legacy_sql is False and said == "legacysql":
        raise InvalidQuery(
            "Query text specifies use_legacy_sql:true, while API options specify:false"
        )
    if use_legacy_sql is True and said == "standardsql":
        raise InvalidQuery(
            "Query text specifies use_legacy_sql:false, while API options specify:true"
        )
    if use_legacy_sql is False or (use_legacy_sql is None and said == "standardsql"):
        return value
    ambiguity = None
    if use_legacy_sql is None and said is None:
        from bqgate.sql.dialect import legacy_ambiguity

        ambiguity = legacy_ambiguity(value)
        if ambiguity is None:
            return value
    why = (
        " (useLegacySql is true)"
        if use_legacy_sql
        else " (the query starts with #legacySQL)"
        if said == "legacysql"
        else " (useLegacySql is not set, which BigQuery reads as legacy SQL, and this "
        f"statement may mean something else there: {ambiguity})"
    )
    raise InvalidQuery(LEGACY_SQL_MESSAGE.format(why=why))


PRIORITIES = ("INTERACTIVE", "BATCH")
WRITE_DISPOSITIONS = ("WRITE_EMPTY", "WRITE_TRUNCATE", "WRITE_APPEND")


def _choice(value: Any, path: str, choices: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.upper() not in choices:
        raise InvalidRequest(f"Invalid value at '{path}': expected one of {', '.join(choices)}")
    return value.upper()


def _refuse_unsupported(query: Mapping[str, Any], prefix: str) -> None:
    """Options the gateway cannot honour are refused, never silently dropped."""
    if query.get("destinationTable"):
        raise InvalidRequest(
            f"Invalid value at '{prefix}destinationTable': bqgate does not write query results "
            "to tables (a table the gateway wrote could be read around it); use CREATE TABLE "
            "... AS SELECT or INSERT ... SELECT, which the policy judges as writes"
        )
    if query.get("createSession"):
        raise InvalidRequest(
            f"Invalid value at '{prefix}createSession': BigQuery sessions are not offered "
            "through bqgate; each query runs on its own (use a multi-statement query instead)"
        )
    for key in ("connectionProperties", "tableDefinitions", "userDefinedFunctionResources"):
        if query.get(key):
            raise InvalidRequest(f"Invalid value at '{prefix}{key}': not supported by bqgate")


def _integral(value: Any) -> int | None:
    """The integer a JSON number or decimal string holds exactly, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and len(value) <= 20 and value.strip().lstrip("+-").isdigit():
        return int(value)
    return None


def _int(value: Any, path: str, maximum: int = MAX_INT) -> int | None:
    """An int64 field as JSON carries it (a number or a decimal string), range-checked.

    >>> _int("10", "maxResults"), _int(7.0, "x"), _int(None, "x")
    (10, 7, None)
    >>> _int(1e999, "timeoutMs")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bqgate.errors.InvalidRequest: Invalid value at 'timeoutMs': expected an integer ...
    """
    if value is None:
        return None
    n = _integral(value)
    if n is None or n > maximum:
        raise InvalidRequest(f"Invalid value at '{path}': expected an integer from 0 to {maximum}")
    if n < 0:
        raise InvalidRequest(f"Invalid value at '{path}': must not be negative")
    return n


def _param_type(value: Any, path: str, depth: int) -> dict[str, Any]:
    t = _obj(value, path)
    kind = t.get("type")
    if not isinstance(kind, str) or not (
        kind in SCALAR_TYPES or kind in ("ARRAY", "STRUCT", "RECORD", "RANGE")
    ):
        raise InvalidRequest(f"Invalid value at '{path}.type': not a query parameter type")
    if depth > MAX_PARAMETER_NESTING and kind in ("ARRAY", "STRUCT", "RECORD", "RANGE"):
        raise InvalidRequest(
            f"Invalid value at '{path}': parameter types nest at most "
            f"{MAX_PARAMETER_NESTING} levels through the gateway"
        )
    out: dict[str, Any] = {"type": kind}
    if kind in ("ARRAY", "RANGE"):
        key = "arrayType" if kind == "ARRAY" else "rangeElementType"
        out[key] = _param_type(t.get(key), f"{path}.{key}", depth + 1)
    elif kind in ("STRUCT", "RECORD"):
        fields = t.get("structTypes")
        if not isinstance(fields, list) or not fields:
            raise InvalidRequest(f"Invalid value at '{path}.structTypes': expected a list")
        subs = []
        for i, f in enumerate(fields):
            fp = f"{path}.structTypes[{i}]"
            f = _obj(f, fp)
            sub: dict[str, Any] = {"type": _param_type(f.get("type"), f"{fp}.type", depth + 1)}
            name = _str(f.get("name"), f"{fp}.name", FIELD_NAME_RE, "not a field name")
            if name is not None and RESERVED_ID_RE.match(name):
                raise InvalidRequest(f"Invalid value at '{fp}.name': __name__ is reserved")
            if name is not None:
                sub["name"] = name
            description = f.get("description")
            if description is not None:
                if not isinstance(description, str) or len(description) > 1024:
                    raise InvalidRequest(f"Invalid value at '{fp}.description'")
                sub["description"] = description
            subs.append(sub)
        out["structTypes"] = subs
    return out


def _param_value(value: Any, ptype: Mapping[str, Any], path: str) -> dict[str, Any]:
    v = _obj(value, path)
    out: dict[str, Any] = {}
    kind = ptype["type"]
    if kind == "ARRAY":
        items = v.get("arrayValues")
        if items is not None:
            if not isinstance(items, list):
                raise InvalidRequest(f"Invalid value at '{path}.arrayValues': expected a list")
            out["arrayValues"] = [
                _param_value(item, ptype["arrayType"], f"{path}.arrayValues[{i}]")
                for i, item in enumerate(items)
            ]
    elif kind in ("STRUCT", "RECORD"):
        values = _obj(v.get("structValues"), f"{path}.structValues")
        types = {f.get("name"): f["type"] for f in ptype["structTypes"]}
        struct: dict[str, Any] = {}
        for name, item in values.items():
            if name not in types:
                raise InvalidRequest(
                    f"Invalid value at '{path}.structValues': a field the type does not name"
                )
            struct[name] = _param_value(item, types[name], f"{path}.structValues.{name}")
        if struct:
            out["structValues"] = struct
    elif kind == "RANGE":
        rng = _obj(v.get("rangeValue"), f"{path}.rangeValue")
        out["rangeValue"] = {
            end: _param_value(rng[end], ptype["rangeElementType"], f"{path}.rangeValue.{end}")
            for end in ("start", "end")
            if rng.get(end) is not None
        }
    scalar = v.get("value")
    if scalar is not None:
        if kind not in SCALAR_TYPES or not isinstance(scalar, (str, int, float, bool)):
            raise InvalidRequest(f"Invalid value at '{path}.value': expected a scalar value")
        if isinstance(scalar, float) and not math.isfinite(scalar):
            raise InvalidRequest(f"Invalid value at '{path}.value': not a finite number")
        out["value"] = scalar if isinstance(scalar, str) else json.dumps(scalar)
    return out


def _params(body: Mapping[str, Any], path: str) -> list[dict[str, Any]]:
    """Query parameters, type-checked and rebuilt from known keys only (what is stored).

    >>> _params({"queryParameters": [{"name": "n", "parameterType": {"type": "INT64"},
    ...          "parameterValue": {"value": "3"}}]}, "")
    [{'parameterType': {'type': 'INT64'}, 'parameterValue': {'value': '3'}, 'name': 'n'}]
    """
    where = f"{path}.queryParameters" if path else "queryParameters"
    params = body.get("queryParameters")
    if params is None:
        return []
    if not isinstance(params, list) or len(params) > MAX_PARAMETERS:
        raise InvalidRequest(
            f"Invalid value at '{where}': expected a list of at most {MAX_PARAMETERS}"
        )
    out = []
    for i, raw in enumerate(params):
        pp = f"{where}[{i}]"
        p = _obj(raw, pp)
        ptype = _param_type(p.get("parameterType"), f"{pp}.parameterType", 1)
        param: dict[str, Any] = {
            "parameterType": ptype,
            "parameterValue": _param_value(p.get("parameterValue"), ptype, f"{pp}.parameterValue"),
        }
        name = _str(
            p.get("name"),
            f"{pp}.name",
            PARAM_NAME_RE,
            "a parameter name is letters, digits and _, not starting with a digit",
        )
        if name is not None:
            param["name"] = name
        out.append(param)
    if len(json.dumps(out, separators=(",", ":"))) > MAX_PARAMETER_BYTES:
        raise InvalidRequest(
            f"Invalid value at '{where}': over the gateway's limit of "
            f"{MAX_PARAMETER_BYTES:,} bytes of parameters"
        )
    named = {"name" in p for p in out}
    if len(named) > 1:
        raise InvalidRequest(f"Invalid value at '{where}': mixes named and positional parameters")
    return out


def _parameter_mode(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.upper() not in PARAMETER_MODES:
        raise InvalidRequest(f"Invalid value at '{path}': NAMED or POSITIONAL")
    return value.upper()


def _location(value: Any, path: str) -> str | None:
    return _str(value, path, LOCATION_RE, "not a BigQuery location")


def parse_insert(body: Mapping[str, Any]) -> QueryRequest:
    """A ``jobs.insert`` body (a Job resource) for a query job.

    >>> r = parse_insert({"jobReference": {"jobId": "j1"}, "configuration": {"query": {
    ...     "query": "SELECT 1", "useLegacySql": False}}})
    >>> (r.sql, r.job_id)
    ('SELECT 1', 'j1')
    """
    config = _obj(body.get("configuration"), "configuration")
    query = config.get("query")
    if not isinstance(query, dict):
        kinds = [k for k in ("load", "extract", "copy") if k in config]
        if kinds:
            raise AccessDenied(
                f"{kinds[0]} jobs are refused by bqgate: {JOB_KIND_REFUSALS[kinds[0]]}"
            )
        raise InvalidRequest(
            "Invalid value at 'configuration.query': only query jobs are supported"
        )
    _refuse_unsupported(query, "configuration.query.")
    ref = _obj(body.get("jobReference"), "jobReference")
    job_id = ref.get("jobId")
    if job_id is not None:
        job_id = check_job_id(job_id, "jobReference.jobId")
    return QueryRequest(
        sql=_sql(query.get("query"), "configuration.query.query", query.get("useLegacySql")),
        job_id=job_id,
        location=_location(ref.get("location"), "jobReference.location"),
        default_dataset=_dataset_ref(
            query.get("defaultDataset"), "configuration.query.defaultDataset"
        ),
        labels=_labels(config.get("labels"), "configuration.labels"),
        dry_run=_bool(config.get("dryRun"), "configuration.dryRun"),
        query_parameters=_params(query, "configuration.query"),
        parameter_mode=_parameter_mode(
            query.get("parameterMode"), "configuration.query.parameterMode"
        ),
        maximum_bytes_billed=_int(
            query.get("maximumBytesBilled"), "configuration.query.maximumBytesBilled"
        ),
        priority=_choice(query.get("priority"), "configuration.query.priority", PRIORITIES),
        write_disposition=_choice(
            query.get("writeDisposition"),
            "configuration.query.writeDisposition",
            WRITE_DISPOSITIONS,
        ),
        use_query_cache=query.get("useQueryCache")
        if isinstance(query.get("useQueryCache"), bool)
        else None,
    )


#: Why each non-query job kind is refused (a 403 that says why).
JOB_KIND_REFUSALS: Mapping[str, str] = {
    "load": "a load job writes files the policy cannot see into a table; insert rows with "
    "INSERT statements or tabledata.insertAll, which the policy judges as writes",
    "extract": "an extract job copies a whole table out of the warehouse, past masking; "
    "query what you need instead (EXPORT DATA is judged by the policy)",
    "copy": "a copy job duplicates a table, sensitive columns and all, past masking; use "
    "CREATE TABLE ... AS SELECT, which the policy judges as a write",
}


def parse_query(body: Mapping[str, Any]) -> QueryRequest:
    """A ``jobs.query`` body (a QueryRequest).

    >>> parse_query({"query": "SELECT 1", "useLegacySql": False, "maxResults": 10}).max_results
    10
    """
    request_id = body.get("requestId")
    if request_id is not None:
        request_id = check_job_id(request_id, "requestId")
    _refuse_unsupported(body, "")
    if body.get("jobCreationMode") not in (
        None,
        "JOB_CREATION_MODE_UNSPECIFIED",
        "JOB_CREATION_REQUIRED",
        "JOB_CREATION_OPTIONAL",
    ):
        raise InvalidRequest("Invalid value at 'jobCreationMode'")
    return QueryRequest(
        sql=_sql(body.get("query"), "query", body.get("useLegacySql")),
        job_id=None,
        location=_location(body.get("location"), "location"),
        default_dataset=_dataset_ref(body.get("defaultDataset"), "defaultDataset"),
        labels=_labels(body.get("labels"), "labels"),
        dry_run=_bool(body.get("dryRun"), "dryRun"),
        query_parameters=_params(body, ""),
        parameter_mode=_parameter_mode(body.get("parameterMode"), "parameterMode"),
        timeout_ms=_int(body.get("timeoutMs"), "timeoutMs"),
        max_results=_int(body.get("maxResults"), "maxResults"),
        request_id=request_id,
        maximum_bytes_billed=_int(body.get("maximumBytesBilled"), "maximumBytesBilled"),
        use_query_cache=body.get("useQueryCache")
        if isinstance(body.get("useQueryCache"), bool)
        else None,
    )


@dataclass(frozen=True)
class ResultsRequest:
    """The query parameters of ``jobs.getQueryResults``."""

    max_results: int | None
    start_index: int
    timeout_ms: int | None
    location: str | None
    int64_timestamps: bool


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in {"true", "1"}


def parse_results_params(params: Mapping[str, str]) -> ResultsRequest:
    """
    >>> r = parse_results_params({"maxResults": "5", "pageToken": encode_page_token(10)})
    >>> (r.max_results, r.start_index)
    (5, 10)
    """
    token = params.get("pageToken")
    start = (
        decode_page_token(token) if token else (_int(params.get("startIndex"), "startIndex") or 0)
    )
    return ResultsRequest(
        max_results=_int(params.get("maxResults"), "maxResults"),
        start_index=start,
        timeout_ms=_int(params.get("timeoutMs"), "timeoutMs"),
        location=params.get("location"),
        int64_timestamps=_truthy(params.get("formatOptions.useInt64Timestamp")),
    )


def encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"bqgate:{offset}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, offset = raw.partition(":")
        if prefix != "bqgate":
            raise ValueError(prefix)
        n = int(offset)
        if n < 0:
            raise ValueError(offset)
        return n
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest(
            "Invalid value at 'pageToken': not a token this gateway issued"
        ) from None


# --- responses -------------------------------------------------------------------


def _ms(value: float | int | None) -> str | None:
    return None if value is None else str(int(value))


def finished_error(error: Mapping[str, Any]) -> dict[str, Any]:
    """A finished job's ``errorResult`` as the agent sees it: the stored reason, unless a
    client would retry it (an error stored before reasons were clamped).

    >>> finished_error({"reason": "backendError", "message": "m"})
    {'reason': 'jobFailed', 'message': 'BigQuery failed the job: m'}
    >>> finished_error({"reason": "notFound", "message": "Not found: Table p:d.t"})
    {'reason': 'notFound', 'message': 'Not found: Table p:d.t'}
    """
    if error.get("reason") in JOB_ERRORS:
        return dict(error)
    return for_job(error.get("reason"), error.get("message")).to_error_proto()


def job_reference(job: Job) -> dict[str, str]:
    return {"projectId": job.project, "jobId": job.job_id, "location": job.location}


#: Statement kinds of the classifier that BigQuery names differently.
_STATEMENT_TYPES: Mapping[str, str] = {
    "TRUNCATE": "TRUNCATE_TABLE",
    "CREATE": "CREATE_TABLE",
    "DROP": "DROP_TABLE",
    "ALTER": "ALTER_TABLE",
    "CREATE_SCHEMA": "CREATE_SCHEMA",
}
_BIGQUERY_STATEMENT_TYPES = frozenset(
    {
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "TRUNCATE_TABLE",
        "CREATE_TABLE",
        "CREATE_VIEW",
        "CREATE_MATERIALIZED_VIEW",
        "CREATE_FUNCTION",
        "CREATE_TABLE_FUNCTION",
        "CREATE_PROCEDURE",
        "CREATE_SCHEMA",
        "CREATE_MODEL",
        "DROP_TABLE",
        "DROP_VIEW",
        "DROP_SCHEMA",
        "ALTER_TABLE",
        "ALTER_VIEW",
        "EXPORT_DATA",
        "LOAD_DATA",
        "ASSERT",
        "CREATE_TABLE_AS_SELECT",
        "SCRIPT",
    }
)


def statement_type(job: Job) -> str:
    """``statistics.query.statementType``: BigQuery's word when the warehouse said it,
    else the classifier's statement kind in BigQuery's vocabulary (``SCRIPT`` for several).

    >>> from bqgate.classification import Classification
    >>> j = Job.new(job_id="j", project="p", location="US", sql="x", owner="o", now_ms=0,
    ...             classification=Classification(statements=("SELECT",)))
    >>> statement_type(j)
    'SELECT'
    >>> j.classification = Classification(statements=("DECLARE", "SELECT"))
    >>> statement_type(j)
    'SCRIPT'
    """
    if job.statement_type:
        return job.statement_type
    kinds = job.classification.statements
    if len(kinds) != 1:
        return "SCRIPT" if kinds else "SELECT"
    kind = kinds[0]
    kind = _STATEMENT_TYPES.get(kind, kind)
    return kind if kind in _BIGQUERY_STATEMENT_TYPES else "SCRIPT"


def table_reference(fqn: str) -> dict[str, str]:
    """``project.dataset.table`` as a TableReference.

    >>> table_reference("p.d.t")
    {'projectId': 'p', 'datasetId': 'd', 'tableId': 't'}
    """
    project, dataset, table = fqn.rsplit(".", 2) if fqn.count(".") >= 2 else ("", "", fqn)
    return {"projectId": project, "datasetId": dataset, "tableId": table}


#: The dataset named in the few destination tables the gateway reports. It exists only in
#: the gateway: nothing in the warehouse can be read around it.
ANONYMOUS_DATASET = "_bqgate_anonymous"


def anonymous_destination(job: Job) -> dict[str, str] | None:
    """The destination table a finished job reports, where a client needs one.

    BigQuery names an anonymous table for every query. The gateway keeps results in its own
    store and serves that table itself (``tables.get``, ``tabledata.list``, owner only), but
    names it only for the clients that need it, because a client holding a destination
    table tries the Storage Read API on it (unreachable through the gateway):

    * dbt (jobs labelled ``dbt_invocation_id``) reads ``numRows`` off it after every SELECT;
    * ibis reads its session dataset off an uncached, table-less ``SELECT 1``.
    """
    dbt = "dbt_invocation_id" in job.labels
    ibis_probe = (
        job.use_query_cache is False
        and (job.total_rows or 0) <= 1
        and not job.classification.tables
    )
    if (
        not (dbt or ibis_probe)
        or job.state != DONE
        or job.error
        or job.dry_run
        or job.schema is None
        or statement_type(job) != "SELECT"
    ):
        return None
    return {
        "projectId": job.project,
        "datasetId": ANONYMOUS_DATASET,
        "tableId": ANONYMOUS_PREFIX + job.job_id,
    }


ANONYMOUS_PREFIX = "anon_"


def anonymous_job_id(dataset: str, table: str) -> str | None:
    """The job whose results ``dataset.table`` names, if it is an anonymous table.

    >>> anonymous_job_id("_bqgate_anonymous", "anon_j1"), anonymous_job_id("sales", "anon_j1")
    ('j1', None)
    """
    if dataset != ANONYMOUS_DATASET or not table.startswith(ANONYMOUS_PREFIX):
        return None
    job_id = table[len(ANONYMOUS_PREFIX) :]
    return job_id if JOB_ID_RE.match(job_id) else None


def anonymous_table(job: Job) -> dict[str, Any]:
    """The Table resource of a job's anonymous destination table (its masked results)."""
    ref = anonymous_destination(job) or {
        "projectId": job.project,
        "datasetId": ANONYMOUS_DATASET,
        "tableId": ANONYMOUS_PREFIX + job.job_id,
    }
    return {
        "kind": "bigquery#table",
        "id": f"{ref['projectId']}:{ref['datasetId']}.{ref['tableId']}",
        "tableReference": ref,
        "type": "TABLE",
        "schema": {"fields": job.schema or []},
        "numRows": str(job.total_rows or 0),
        "creationTime": _ms(job.ended_ms or job.created_ms),
        "location": job.location,
    }


def job_resource(job: Job) -> dict[str, Any]:
    """A BigQuery Job resource for ``jobs.insert``/``jobs.get``. Never a destination table:
    the gateway keeps results in its own store, so no table exists that the agent could
    read around it (the Storage Read API included)."""
    query: dict[str, Any] = {"query": job.sql, "useLegacySql": False}
    if job.default_dataset:
        query["defaultDataset"] = dict(job.default_dataset)
    if job.query_parameters:
        query["queryParameters"] = job.query_parameters
        if job.parameter_mode:
            query["parameterMode"] = job.parameter_mode
    if job.maximum_bytes_billed is not None:
        query["maximumBytesBilled"] = str(job.maximum_bytes_billed)
    query["priority"] = job.priority or "INTERACTIVE"
    if job.write_disposition:
        query["writeDisposition"] = job.write_disposition
    if job.use_query_cache is not None:
        query["useQueryCache"] = job.use_query_cache
    destination = anonymous_destination(job)
    if destination:
        query["destinationTable"] = destination
    status: dict[str, Any] = {"state": job.bigquery_state}
    if job.error:
        error = finished_error(job.error)
        status["errorResult"] = error
        status["errors"] = [dict(error)]
    stats: dict[str, Any] = {"creationTime": _ms(job.created_ms)}
    if job.started_ms:
        stats["startTime"] = _ms(job.started_ms)
    if job.ended_ms:
        stats["endTime"] = _ms(job.ended_ms)
    query_stats: dict[str, Any] = {"statementType": statement_type(job), "cacheHit": False}
    if job.total_bytes_processed is not None:
        stats["totalBytesProcessed"] = str(job.total_bytes_processed)
        query_stats["totalBytesProcessed"] = str(job.total_bytes_processed)
        query_stats["totalBytesBilled"] = "0" if job.dry_run else str(job.total_bytes_processed)
        if job.dry_run:
            query_stats["estimatedBytesProcessed"] = str(job.total_bytes_processed)
            query_stats["totalBytesProcessedAccuracy"] = "PRECISE"
    if job.num_dml_affected_rows is not None:
        query_stats["numDmlAffectedRows"] = str(job.num_dml_affected_rows)
    if job.state == DONE and job.schema is not None:
        query_stats["schema"] = {"fields": job.schema}
    if job.referenced_tables:
        query_stats["referencedTables"] = [table_reference(t) for t in job.referenced_tables]
    stats["query"] = query_stats
    config: dict[str, Any] = {"jobType": "QUERY", "query": query}
    if job.labels:
        config["labels"] = dict(job.labels)
    if job.dry_run:
        config["dryRun"] = True
    return {
        "kind": "bigquery#job",
        "etag": f'"{job.job_id}-{job.state}"',
        "id": f"{job.project}:{job.location}.{job.job_id}",
        "selfLink": (
            f"/bigquery/v2/projects/{job.project}/jobs/{job.job_id}?location={job.location}"
        ),
        "user_email": job.owner,
        "jobReference": job_reference(job),
        "configuration": config,
        "status": status,
        "statistics": stats,
    }


def _cell_to_rest(cell: Any, fld: Mapping[str, Any], int64_ts: bool) -> Any:
    if cell is None:
        return None
    if fld.get("mode") == "REPEATED":
        elem = {**fld, "mode": "NULLABLE"}
        return [{"v": _cell_to_rest(c, elem, int64_ts)} for c in cell]
    ftype = fld.get("type", "STRING")
    if ftype in ("RECORD", "STRUCT"):
        subs = fld.get("fields") or []
        return {
            "f": [{"v": _cell_to_rest(c, f, int64_ts)} for c, f in zip(cell, subs, strict=False)]
        }
    if ftype == "TIMESTAMP" and not int64_ts:
        return repr(int(cell) / 1e6)
    return cell


def rows_to_rest(
    rows: Sequence[Sequence[Any]],
    schema: Sequence[Mapping[str, Any]],
    int64_timestamps: bool = True,
) -> list[dict[str, Any]]:
    """Compact rows to BigQuery's ``rows`` (``{"f": [{"v": ...}]}``)."""
    if _plain(schema, int64_timestamps=int64_timestamps):
        return [{"f": [{"v": c} for c in row]} for row in rows]
    return [
        {
            "f": [
                {"v": _cell_to_rest(c, f, int64_timestamps)}
                for c, f in zip(row, schema, strict=False)
            ]
        }
        for row in rows
    ]


def query_results(
    job: Job,
    *,
    rows: list[dict[str, Any]] | codec.RawJson | None,
    next_offset: int | None,
    query_response: bool = False,
) -> dict[str, Any]:
    """A ``getQueryResults`` (or, with ``query_response``, ``jobs.query``) body for ``job``."""
    body: dict[str, Any] = {
        "kind": "bigquery#getQueryResultsResponse",
        "etag": f'"{job.job_id}"',
        "jobReference": job_reference(job),
        "jobComplete": job.done,
    }
    if query_response:
        body["kind"] = "bigquery#queryResponse"
        body["queryId"] = job.job_id
    if not job.done:
        return body
    if job.error:
        body["errors"] = [finished_error(job.error)]
    body["cacheHit"] = False
    if job.total_bytes_processed is not None:
        body["totalBytesProcessed"] = str(job.total_bytes_processed)
    if job.num_dml_affected_rows is not None:
        body["numDmlAffectedRows"] = str(job.num_dml_affected_rows)
    if job.schema is not None:
        body["schema"] = {"fields": job.schema}
        if not job.dry_run:
            body["totalRows"] = str(job.total_rows or 0)
    if job.dry_run:
        return body
    if rows is not None:
        body["rows"] = rows
    if next_offset is not None:
        body["pageToken"] = encode_page_token(next_offset)
    return body


def dumps(body: Mapping[str, Any]) -> str:
    return codec.dumps(body)


def _cell_from_rest(value: Any, fld: Mapping[str, Any]) -> Any:
    if value is None:
        return None
    if fld.get("mode") == "REPEATED":
        elem = {**fld, "mode": "NULLABLE"}
        return [_cell_from_rest(e.get("v") if isinstance(e, dict) else e, elem) for e in value]
    if fld.get("type") in ("RECORD", "STRUCT"):
        subs = fld.get("fields") or []
        return [
            _cell_from_rest(c.get("v"), f) for c, f in zip(value.get("f", []), subs, strict=False)
        ]
    return value


def rest_rows(
    masked: Sequence[Sequence[Any]],
    part: Sequence[Sequence[Any]],
    schema: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """BigQuery's ``rows`` for ``masked``, the masked copy of the compact rows ``part``.

    Where a row came through the masks unchanged and ``part`` carries the rows as BigQuery
    sent them (:class:`bqgate.ports.RowsPart`), that row is BigQuery's own; every other
    row is built from its masked values. Only for flat schemas of plain cells, where a
    compact row holds every value of its REST row (a nested schema is always built).

    >>> from bqgate.ports import RowsPart
    >>> schema = [{"name": "a", "type": "STRING"}]
    >>> got = RowsPart([["x"], ["y"]], rest=[{"f": [{"v": "x"}]}, {"f": [{"v": "y"}]}])
    >>> rows = rest_rows([["x"], ["XXX"]], got, schema)
    >>> rows, rows[0] is got.rest[0]
    ([{'f': [{'v': 'x'}]}, {'f': [{'v': 'XXX'}]}], True)
    """
    rest = getattr(part, "rest", None)
    if rest is None or len(rest) != len(masked) or not _plain(schema, int64_timestamps=True):
        return rows_to_rest(masked, schema)
    out = list(rest)
    changed = list(itertools.compress(range(len(out)), map(operator.ne, masked, part)))
    for i, row in zip(changed, rows_to_rest([masked[i] for i in changed], schema), strict=True):
        out[i] = row
    return out


def _plain(schema: Sequence[Mapping[str, Any]], *, int64_timestamps: bool) -> bool:
    """Flat cells only: no REPEATED or RECORD field (and, unless int64, no TIMESTAMP)."""
    return all(
        f.get("mode") != "REPEATED"
        and f.get("type") not in ("RECORD", "STRUCT")
        and (int64_timestamps or f.get("type") != "TIMESTAMP")
        for f in schema
    )


def rest_to_compact(
    rows: Sequence[Mapping[str, Any]], schema: Sequence[Mapping[str, Any]]
) -> list[list[Any]]:
    """BigQuery's ``rows`` to compact rows (the inverse of :func:`rows_to_rest`).

    >>> schema = [{"name": "a", "type": "INTEGER"},
    ...           {"name": "r", "type": "STRING", "mode": "REPEATED"}]
    >>> rest_to_compact([{"f": [{"v": "1"}, {"v": [{"v": "x"}, {"v": "y"}]}]}], schema)
    [['1', ['x', 'y']]]
    """
    plain = all(
        f.get("mode") != "REPEATED" and f.get("type") not in ("RECORD", "STRUCT") for f in schema
    )
    if plain:
        return [[c.get("v") for c in row.get("f", [])] for row in rows]
    return [
        [_cell_from_rest(c.get("v"), f) for c, f in zip(row.get("f", []), schema, strict=False)]
        for row in rows
    ]
