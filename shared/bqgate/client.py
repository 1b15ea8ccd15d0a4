"""Agent helper: ``from bqgate.client import gateway_client``.

A standard ``google.cloud.bigquery.Client`` pointed at the gateway, with ID tokens. Locally
the credentials mint fresh dev tokens from the dev issuer shortly before each one expires;
in the cloud they are Google ID-token credentials for the gateway's audience from
Application Default Credentials. Either way the agent holds no static secret and no
BigQuery rights. The Google pieces (:mod:`bqgate.adapters.client`) and the dev stack's
state (:mod:`bqgate.dev.issuer`) load on first call, so importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bqgate.settings import DEV_AUDIENCE

if TYPE_CHECKING:
    from bqgate.adapters.client import BigQueryClient, IdTokenCredentials

DEFAULT_LOCAL_PRINCIPAL = "agent@demo-project.iam.gserviceaccount.com"


def gateway_credentials(
    url: str | None = None,
    *,
    principal: str | None = None,
    audience: str = DEV_AUDIENCE,
    dev_dir: Path | None = None,
    endpoint: str = "gateway",
) -> tuple[str, IdTokenCredentials]:
    """The URL to call and refreshing ID-token credentials for it.

    Local (a dev dir is given, a ``principal`` is given, ``url`` is omitted or on
    loopback): the dev stack is found through ``endpoints.json`` (``url`` defaults to
    its ``endpoint`` entry) and tokens for ``principal`` (default the demo agent) are
    minted by the dev issuer. Otherwise: ID tokens for ``audience`` from ADC.

    Raises:
        DevStackNotFound: local use but no dev stack state.
    """
    from bqgate.adapters.client import DevIdTokenCredentials, adc_id_token_credentials
    from bqgate.dev import issuer as dev_issuer
    from bqgate.identity import is_loopback

    local = dev_dir is not None or principal is not None or url is None or is_loopback(url)
    credentials: IdTokenCredentials
    if local:
        endpoints = dev_issuer.read_endpoints(dev_issuer.find_dev_dir(dev_dir))
        url = url or endpoints.get(endpoint)
        issuer_url = endpoints.get("oidc_issuer")
        if not url or not issuer_url:
            raise dev_issuer.DevStackNotFound(
                f"endpoints.json lacks {endpoint!r} or 'oidc_issuer'; is the dev stack running?"
            )
        dev_dir = dev_issuer.find_dev_dir(dev_dir)
        state = Path(endpoints.get("state_dir") or dev_dir)
        try:
            secret = dev_issuer.load_secret(state / dev_issuer.OIDC_SUBDIR)
        except OSError:
            secret = None  # the issuer will refuse, and the first call says so
        credentials = DevIdTokenCredentials(
            issuer_url, principal or DEFAULT_LOCAL_PRINCIPAL, audience=audience, secret=secret
        )
    else:
        credentials = adc_id_token_credentials(audience)
    assert url is not None
    return url, credentials


def gateway_client(
    url: str | None = None,
    *,
    project: str = "demo-project",
    principal: str | None = None,
    audience: str = DEV_AUDIENCE,
    dev_dir: Path | None = None,
) -> BigQueryClient:
    """A BigQuery client whose every call goes through the gateway at ``url``.

    Credentials and the URL as :func:`gateway_credentials` finds them.

    Raises:
        DevStackNotFound: local use but no dev stack state.
    """
    from bqgate.adapters.client import bigquery_client

    url, credentials = gateway_credentials(
        url, principal=principal, audience=audience, dev_dir=dev_dir
    )
    return bigquery_client(url, project=project, credentials=credentials)
