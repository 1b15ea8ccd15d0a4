"""Write the gateway's discovery document: BigQuery's own, trimmed to what bqgate serves.

    python tools/trim_discovery.py [SOURCE] > shared/bqgate/wire/bigquery_discovery.json

SOURCE is BigQuery's v2 discovery document; by default the copy the Google Cloud SDK's
``bq`` ships (``platform/bq/discovery_next/bigquery.json``). Only the methods in
:data:`bqgate.wire.discovery.METHODS` and the schemas they reach are kept, so a client
built from the document offers exactly what the gateway answers. The gateway fills in
its own URL when it serves the document (``bqgate.wire.discovery``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

from bqgate.wire.discovery import METHODS

DEFAULT_SOURCE = "/usr/lib/google-cloud-sdk/platform/bq/discovery_next/bigquery.json"


def refs(node: Any) -> set[str]:
    """Every schema name ``node`` refers to."""
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            found.add(node["$ref"])
        for value in node.values():
            found |= refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= refs(value)
    return found


def trim(doc: dict[str, Any]) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    for resource, methods in METHODS.items():
        source = doc["resources"][resource]["methods"]
        resources[resource] = {"methods": {m: source[m] for m in methods}}
    wanted = refs(resources) | refs(doc.get("parameters", {}))
    schemas: dict[str, Any] = {}
    while wanted - set(schemas):
        for name in sorted(wanted - set(schemas)):
            schemas[name] = doc["schemas"][name]
            wanted |= refs(schemas[name])
    out = {k: v for k, v in doc.items() if k not in ("resources", "schemas", "endpoints")}
    out["resources"] = resources
    out["schemas"] = dict(sorted(schemas.items()))
    out["description"] = (
        "BigQuery API as the bqgate gateway serves it: every request is authenticated, "
        "judged by policy and masked. " + doc.get("description", "")
    )
    return out


def main(argv: list[str]) -> int:
    source = Path(argv[1] if len(argv) > 1 else DEFAULT_SOURCE)
    doc = json.loads(source.read_text())
    json.dump(trim(doc), sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
