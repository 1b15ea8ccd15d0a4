"""Warehouse metadata as the policy lets a caller see it: pure rules and REST shapes.

Deny by default: a dataset is visible to a caller only when the policy names it and a
rule lets one of the caller's groups read its tier (allow, or approve: the caller may
read it with an approval). Everything else is invisible: absent from lists, 404 on get.
Resources are rebuilt from an allowlist of fields (no ACLs, no view SQL, no links), and
a sensitive column says in its description how it is masked.

>>> from bqgate.policy import load_policy
>>> policy = load_policy("policies/default.yaml")
>>> agents = policy.groups_for("agent@demo-project.iam.gserviceaccount.com")
>>> visible_datasets(policy, agents)
[('demo-project', 'analytics'), ('demo-project', 'finance'), ('demo-project', 'sales')]
>>> can_read(policy, agents, "demo-project", "secret")
False
>>> can_read(policy, frozenset(), "demo-project", "sales")
False
>>> t = shape_table({"tableReference": {"projectId": "demo-project", "datasetId": "sales",
...     "tableId": "customers"}, "schema": {"fields": [{"name": "ssn", "type": "STRING"}]},
...     "access": ["x"]}, policy)
>>> t["schema"]["fields"][0]["description"], "access" in t
('masked by bqgate: last4', False)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bqgate.policy import Policy

#: Dataset fields a caller may see.
DATASET_FIELDS = (
    "datasetReference",
    "friendlyName",
    "description",
    "labels",
    "location",
    "creationTime",
    "lastModifiedTime",
    "defaultTableExpirationMs",
    "defaultPartitionExpirationMs",
    "type",
)
#: Table fields a caller may see (the schema is rebuilt field by field).
TABLE_FIELDS = (
    "tableReference",
    "friendlyName",
    "description",
    "labels",
    "location",
    "type",
    "creationTime",
    "lastModifiedTime",
    "expirationTime",
    "numRows",
    "numBytes",
    "timePartitioning",
    "rangePartitioning",
    "clustering",
    "requirePartitionFilter",
)
#: Fields of a tables.list item.
TABLE_ITEM_FIELDS = (
    "tableReference",
    "friendlyName",
    "labels",
    "type",
    "creationTime",
    "expirationTime",
    "timePartitioning",
    "rangePartitioning",
    "clustering",
)
SCHEMA_FIELD_KEYS = ("name", "type", "mode", "description", "maxLength", "precision", "scale")

MASK_NOTE = "masked by bqgate: {strategy}"


def can_read(policy: Policy, groups: Iterable[str], project: str, dataset: str) -> bool:
    """May a caller in ``groups`` read ``project.dataset`` (now or with an approval)?"""
    tier = policy.tier_of(project, dataset)
    if tier is None:
        return False
    return policy.action_for(groups, tier, "read") in ("allow", "approve")


def visible_datasets(policy: Policy, groups: Iterable[str]) -> list[tuple[str, str]]:
    """Every ``(project, dataset)`` the caller may see, sorted."""
    wanted = frozenset(groups)
    out = []
    for name in policy.datasets:
        project, dataset = name.rsplit(".", 1)
        if can_read(policy, wanted, project, dataset):
            out.append((project, dataset))
    return sorted(out)


def visible_projects(policy: Policy, groups: Iterable[str]) -> list[str]:
    """The projects that hold at least one dataset the caller may see."""
    return sorted({p for p, _ in visible_datasets(policy, groups)})


def _pick(resource: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    return {k: resource[k] for k in keys if resource.get(k) is not None}


def shape_dataset(resource: Mapping[str, Any], *, item: bool = False) -> dict[str, Any]:
    """A Dataset resource (or a datasets.list item) from the allowlist."""
    out = _pick(resource, DATASET_FIELDS)
    ref = out.get("datasetReference") or {}
    out["kind"] = "bigquery#dataset"
    out["id"] = f"{ref.get('projectId')}:{ref.get('datasetId')}"
    if item:
        return {
            k: out[k]
            for k in ("kind", "id", "datasetReference", "labels", "friendlyName", "location")
            if k in out
        }
    return out


def _shape_fields(
    fields: Iterable[Mapping[str, Any]], masks: Mapping[str, str]
) -> list[dict[str, Any]]:
    out = []
    for fld in fields:
        shaped = _pick(fld, SCHEMA_FIELD_KEYS)
        strategy = masks.get(str(fld.get("name", "")).lower())
        if strategy:
            note = MASK_NOTE.format(strategy=strategy)
            shaped["description"] = (
                f"{note}. {shaped['description']}" if shaped.get("description") else note
            )
        subs = fld.get("fields")
        if isinstance(subs, list):
            shaped["fields"] = _shape_fields(subs, {})
        out.append(shaped)
    return out


def shape_table(resource: Mapping[str, Any], policy: Policy) -> dict[str, Any]:
    """A Table resource from the allowlist, sensitive columns described as masked."""
    out = _pick(resource, TABLE_FIELDS)
    ref = out.get("tableReference") or {}
    fqn = f"{ref.get('projectId')}.{ref.get('datasetId')}.{ref.get('tableId')}"
    masks = policy.sensitive_for(fqn)
    schema = (resource.get("schema") or {}).get("fields") or []
    out["schema"] = {"fields": _shape_fields(schema, masks)}
    if resource.get("type") in ("VIEW", "MATERIALIZED_VIEW"):
        # The view's SQL may name tables outside the policy: it stays hidden.
        out["view"] = {"useLegacySql": False}
    out["kind"] = "bigquery#table"
    out["id"] = f"{ref.get('projectId')}:{ref.get('datasetId')}.{ref.get('tableId')}"
    return out


def shape_table_item(resource: Mapping[str, Any]) -> dict[str, Any]:
    """A tables.list item from the allowlist."""
    out = _pick(resource, TABLE_ITEM_FIELDS)
    ref = out.get("tableReference") or {}
    out["kind"] = "bigquery#table"
    out["id"] = f"{ref.get('projectId')}:{ref.get('datasetId')}.{ref.get('tableId')}"
    return out


__all__ = [
    "can_read",
    "shape_dataset",
    "shape_table",
    "shape_table_item",
    "visible_datasets",
    "visible_projects",
]
