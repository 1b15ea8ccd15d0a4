"""The agent side's Google pieces: a BigQuery client that never builds a Storage client,
and ID-token credentials minted by the local dev issuer (``POST /token``) shortly before
each one expires. :mod:`bqgate.client` finds the dev stack and puts them together.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import google.auth.credentials
import google.auth.exceptions
import google.auth.transport
from google.api_core.client_options import ClientOptions
from google.cloud import bigquery

from bqgate.settings import DEV_AUDIENCE

DEV_TOKEN_TTL = 3600
_EXPIRY_MARGIN = datetime.timedelta(seconds=30)

__all__ = [
    "BigQueryClient",
    "DevIdTokenCredentials",
    "IdTokenCredentials",
    "adc_id_token_credentials",
    "bigquery_client",
]


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
        audience: str = DEV_AUDIENCE,
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


#: Credentials whose token is an ID token for the gateway (dev issuer's or Google's).
IdTokenCredentials = google.auth.credentials.Credentials


def adc_id_token_credentials(audience: str) -> IdTokenCredentials:
    """Google ID-token credentials for ``audience`` from Application Default Credentials."""
    import google.auth.transport.requests
    import google.oauth2.id_token

    credentials: IdTokenCredentials = google.oauth2.id_token.fetch_id_token_credentials(
        audience, request=google.auth.transport.requests.Request()
    )
    return credentials


def bigquery_client(url: str, *, project: str, credentials: IdTokenCredentials) -> BigQueryClient:
    """The standard client (never a Storage client) with every call sent to ``url``."""
    return BigQueryClient(
        project=project, credentials=credentials, client_options=ClientOptions(api_endpoint=url)
    )
