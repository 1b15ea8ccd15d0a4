"""Errors carry no data: scrub warehouse error text before anyone sees it.

BigQuery's error messages quote values (``Bad int64 value: 123-45-6789``), name the
internal job (``bqgate_<hash>``), link to the console and name the project the executor
runs in. With the masking rewrite a quoted value can only be a masked one; this module
is the second line for everything else. What the agent and the session record get:

* no URL, no internal job id (``bqgate_...``, UUIDs), no warehouse project (it becomes the
  project the agent named);
* every content detector (SSNs, cards, emails, phones, IBANs ...) applied;
* at most :data:`MAX_CHARS` characters;
* BigQuery's reason kept, and a useful message: ``Unrecognized name: nope_col`` stays.

>>> scrub("Bad int64 value: 123-45-6789 at https://console.cloud.google.com/x", "p", "p")
'Bad int64 value: [REDACTED:ssn] at <url>'
>>> scrub("Not found: Table wh-proj:sales.nope; job bqgate_" + "a" * 64, "wh-proj", "demo")
'Not found: Table demo:sales.nope; job <job>'
>>> scrub("Unrecognized name: nope_col at [1:8]", "p", "p")
'Unrecognized name: nope_col at [1:8]'
>>> scrub("POST http://127.0.0.1:9050/bigquery/v2/projects/p/jobs: Syntax error: x", "p", "p")
'Syntax error: x'
"""

from __future__ import annotations

import re

from bqgate import detectors

#: Longest error message passed on (BigQuery's can quote a whole row).
MAX_CHARS = 500

_URL = re.compile(r"\b(?:https?|gs|bigquery)://\S+", re.IGNORECASE)
_JOB_ID = re.compile(
    r"\bbqgate_[0-9a-f]{16,}\b|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"
    r"|\bjob_[A-Za-z0-9_-]{16,}\b",
    re.IGNORECASE,
)
_TRAILER = re.compile(r"\s*(?:Location: \S+|Job ID: \S+)\s*", re.IGNORECASE)
# The client library prefixes the HTTP call: "POST https://...: Syntax error ...".
_CALL = re.compile(r"^\s*(?:\d{3}\s+)?(?:GET|POST|PUT|PATCH|DELETE)\s+\S+?:?\s+", re.IGNORECASE)


def scrub(message: str, warehouse_project: str | None, shown_project: str) -> str:
    """``message`` with URLs, job ids and the warehouse project removed, detectors applied."""
    text = str(message or "")
    text = _TRAILER.sub(" ", text)
    text = _CALL.sub("", text)
    text = _URL.sub("<url>", text)
    text = _JOB_ID.sub("<job>", text)
    if warehouse_project and warehouse_project != shown_project:
        text = re.sub(rf"(?<![\w-]){re.escape(warehouse_project)}(?![\w-])", shown_project, text)
    if detectors.may_contain(text):
        text, _ = detectors.redact(text)
    text = " ".join(text.split())
    if len(text) > MAX_CHARS:
        text = text[: MAX_CHARS - 3] + "..."
    return text or "the query failed"
