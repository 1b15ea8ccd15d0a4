"""A standard ``google.cloud.bigquery.Client`` pointed at the gateway, with ID tokens.

Locally the credentials mint fresh dev tokens from the dev issuer (``POST /token``)
shortly before each one expires; in the cloud they are Google ID-token credentials for
the gateway's audience from Application Default Credentials. Either way the agent holds
no static secret and no BigQuery rights.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import google.auth.credentials
import google.auth.exceptions
import google.auth.transport
from google.api_core.client_options import ClientOptions
from google.cloud import bigquery

from bqgate.adapters.oidc import _is_loopback
from bqgate.dev import issuer as dev_issuer

DEFAULT_LOCAL_PRINCIPAL = "agent@demo-project.iam.gserviceaccount.com"
DEV_TOKEN_TTL = 3600
_EXPIRY_MARGIN = datetime.timedelta(seconds=30)

__all__ = ["BigQueryClient", "DevIdTokenCredentials", "gateway_client"]


class BigQueryClient(bigquery.Client):
    """The standard client, except that it never builds a BigQuery Storage client.

    The gateway serves rows over REST only (the Storage Read API would read tables around
    it, so it stays unreachable): with ``google-cloud-bigquery-storage`` installed, the
    plain client's ``list_rows(...).to_dataframe()`` would try it and fail. This one reads
    those rows over REST, the client's own fallback when the Storage client is missing.
    """

    def _ensure_bqstorage_client(self, bqstorage_client: Any = None, *args: Any, **kw: Any) -> Any:
        return bqstorage_client


class DevIdTokenCredentials(google.auth.credentials.Credentials):
    """ID-token credentials from the local dev issuer; refreshed before expiry.

    A failure to reach the issuer raises ``RefreshError`` (never ``TransportError``,
    which the BigQuery client would retry for minutes).
    """

    def __init__(
        self,
        issuer_url: str,
        principal: str,
        *,
        groups: tuple[str, ...] = (),
        audience: str = dev_issuer.DEFAULT_AUDIENCE,
        ttl_seconds: int = DEV_TOKEN_TTL,
        timeout: float = 5.0,
        secret: str | None = None,
    ) -> None:
        super().__init__()
        self._issuer_url = issuer_url.rstrip("/")
        self._principal = principal
        self._groups = groups
        self._audience = audience
        self._ttl = ttl_seconds
        self._timeout = timeout
        self._secret = secret

    @property
    def principal(self) -> str:
        """The principal the minted tokens speak for."""
        return self._principal

    def refresh(self, request: google.auth.transport.Request) -> None:
        """Mint a new token at the dev issuer and set ``token`` and ``expiry``."""
        body = json.dumps(
            {
                "principal": self._principal,
                "groups": list(self._groups),
                "ttl": self._ttl,
                "audience": self._audience,
            }
        ).encode("utf-8")
        url = f"{self._issuer_url}/token"
        try:
            response = request(
                url,
                method="POST",
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {self._secret or ''}",
                },
                timeout=self._timeout,
            )
        except google.auth.exceptions.TransportError as exc:
            raise google.auth.exceptions.RefreshError(
                f"dev issuer at {self._issuer_url} is unreachable: {type(exc).__name__}"
            ) from None
        try:
            answer: Any = json.loads(response.data)
        except ValueError:
            answer = {}
        token = answer.get("id_token") if isinstance(answer, dict) else None
        if response.status != 200 or not isinstance(token, str):
            error = answer.get("error") if isinstance(answer, dict) else None
            raise google.auth.exceptions.RefreshError(
                f"dev issuer refused a token (HTTP {response.status}): {error or 'no id_token'}"
            )
        expires_in = int(answer.get("expires_in", self._ttl))
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        self.token = token
        self.expiry = now + datetime.timedelta(seconds=expires_in) - _EXPIRY_MARGIN


def gateway_client(
    url: str | None = None,
    *,
    project: str = "demo-project",
    principal: str | None = None,
    audience: str = "bqgate",
    dev_dir: Path | None = None,
) -> BigQueryClient:
    """A BigQuery client whose every call goes through the gateway at ``url``.

    Local (a dev dir is given, a ``principal`` is given, ``url`` is omitted or on
    loopback): the dev stack is found through ``endpoints.json`` (``url`` defaults to
    its ``gateway``) and tokens for ``principal`` (default the demo agent) are minted by
    the dev issuer. Otherwise: ID tokens for ``audience`` from ADC.

    Raises:
        DevStackNotFound: local use but no dev stack state.
    """
    local = dev_dir is not None or principal is not None or url is None or _is_loopback(url)
    credentials: google.auth.credentials.Credentials
    if local:
        endpoints = dev_issuer.read_endpoints(dev_issuer.find_dev_dir(dev_dir))
        url = url or endpoints.get("gateway")
        issuer_url = endpoints.get("oidc_issuer")
        if not url or not issuer_url:
            raise dev_issuer.DevStackNotFound(
                "endpoints.json lacks 'gateway' or 'oidc_issuer'; is the dev stack running?"
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
        import google.auth.transport.requests
        import google.oauth2.id_token

        credentials = google.oauth2.id_token.fetch_id_token_credentials(
            audience, request=google.auth.transport.requests.Request()
        )
    assert url is not None
    return BigQueryClient(
        project=project,
        credentials=credentials,
        client_options=ClientOptions(api_endpoint=url),
    )
