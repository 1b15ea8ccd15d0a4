"""The discovery document the gateway serves (``/$discovery/rest``), so ``bq --api=URL``
and other discovery-driven clients need no ``--discovery_file``.

It is BigQuery's own v2 document trimmed to the methods below
(``tools/trim_discovery.py`` writes ``bigquery_discovery.json``), with its URLs pointed
at the gateway.

>>> doc = discovery_document("https://gw.example/")
>>> doc["rootUrl"], doc["baseUrl"], sorted(doc["resources"]["tables"]["methods"])
('https://gw.example/', 'https://gw.example/bigquery/v2/', ['get', 'list'])
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

#: What the gateway implements, by discovery resource.
METHODS: dict[str, tuple[str, ...]] = {
    "datasets": ("get", "list"),
    "jobs": ("cancel", "get", "getQueryResults", "insert", "list", "query"),
    "projects": ("list",),
    "tabledata": ("insertAll", "list"),
    "tables": ("get", "list"),
}

DOCUMENT = Path(__file__).with_name("bigquery_discovery.json")


@functools.cache
def _trimmed() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    return loaded


def discovery_document(root_url: str) -> dict[str, Any]:
    """The trimmed document with every URL pointing at ``root_url`` (ends with ``/``)."""
    doc = copy.deepcopy(_trimmed())
    service_path = doc.get("servicePath", "bigquery/v2/")
    doc["rootUrl"] = root_url
    doc["mtlsRootUrl"] = root_url
    doc["baseUrl"] = root_url + service_path
    doc["batchPath"] = "batch/bigquery/v2"
    return doc
