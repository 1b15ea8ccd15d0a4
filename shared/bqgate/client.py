"""Agent helper: ``from bqgate.client import gateway_client``.

The implementation lives in :mod:`bqgate.adapters.client` (it imports ``google.*``) and
is loaded on first call, so importing this module stays pure and cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bqgate.adapters.client import BigQueryClient


def gateway_client(
    url: str | None = None,
    *,
    project: str = "demo-project",
    principal: str | None = None,
    audience: str = "bqgate",
    dev_dir: Path | None = None,
) -> BigQueryClient:
    """A ``google.cloud.bigquery.Client`` that talks to the gateway with ID tokens.

    See :func:`bqgate.adapters.client.gateway_client`.
    """
    from bqgate.adapters.client import gateway_client as build

    return build(url, project=project, principal=principal, audience=audience, dev_dir=dev_dir)
