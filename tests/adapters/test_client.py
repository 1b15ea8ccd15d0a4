"""gateway_client: a real BigQuery client, dev ID tokens, and a stand-in gateway."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import google.auth.exceptions
import google.auth.transport.requests
import pytest
from bqgate.adapters.client import DevIdTokenCredentials
from bqgate.adapters.oidc import OidcVerifier
from bqgate.client import gateway_client
from bqgate.dev import issuer
from bqgate.errors import BqgateError
from bqgate.identity import Principal, bearer_token
from bqgate.policy import Issuer
from google.cloud.bigquery.retry import DEFAULT_RETRY

AGENT = "agent@demo-project.iam.gserviceaccount.com"
QUICK = DEFAULT_RETRY.with_deadline(5)  # never the 10-minute default in tests


@dataclass
class Seen:
    principals: list[Principal] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


class GatewayServer(ThreadingHTTPServer):
    daemon_threads = True
    verifier: OidcVerifier
    seen: Seen


class GatewayHandler(BaseHTTPRequestHandler):
    """Just enough gateway: authenticate, then answer datasets.list."""

    server: GatewayServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        try:
            principal = self.server.verifier.verify(bearer_token(self.headers.get("Authorization")))
            status, body = 200, {"kind": "bigquery#datasetList", "datasets": []}
            self.server.seen.principals.append(principal)
        except BqgateError as exc:
            status, body = exc.http_status, exc.to_body()
        self.server.seen.paths.append(self.path)
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Path, GatewayServer]]:
    dev_dir = tmp_path / ".bqgate-dev"
    oidc = issuer.serve("127.0.0.1", 0, dev_dir / "oidc")
    gateway = GatewayServer(("127.0.0.1", 0), GatewayHandler)
    gateway.verifier = OidcVerifier(
        [Issuer("dev", ("bqgate",), "dev", groups_claim="groups", dev_only=True)],
        dev_issuer_url=oidc.issuer_url,
        dev_mode=True,
    )
    gateway.seen = Seen()
    threading.Thread(target=gateway.serve_forever, args=(0.05,), daemon=True).start()
    endpoints = {
        "oidc_issuer": oidc.issuer_url,
        "gateway": f"http://127.0.0.1:{gateway.server_address[1]}",
    }
    (dev_dir / "endpoints.json").write_text(json.dumps(endpoints))
    yield dev_dir, gateway
    gateway.shutdown()
    gateway.server_close()
    oidc.shutdown()
    oidc.server_close()


def test_gateway_client_calls_the_gateway_with_fresh_dev_tokens(
    stack: tuple[Path, GatewayServer],
) -> None:
    dev_dir, gateway = stack
    client = gateway_client(dev_dir=dev_dir)
    assert client.project == "demo-project"
    datasets = list(client.list_datasets(timeout=5, retry=QUICK))
    assert datasets == []
    (principal,) = gateway.seen.principals
    assert principal.email == AGENT
    assert gateway.seen.paths[0].startswith("/bigquery/v2/projects/demo-project/datasets")


def test_gateway_client_speaks_for_the_chosen_principal(
    stack: tuple[Path, GatewayServer],
) -> None:
    dev_dir, gateway = stack
    client = gateway_client(project="other-project", principal="bob@example.com", dev_dir=dev_dir)
    list(client.list_datasets(timeout=5, retry=QUICK))
    assert [p.email for p in gateway.seen.principals] == ["bob@example.com"]
    assert "/projects/other-project/" in gateway.seen.paths[0]


def test_gateway_client_without_dev_stack_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(issuer.DevStackNotFound, match="no dev stack state"):
        gateway_client(dev_dir=tmp_path)


def test_dev_credentials_refresh_and_set_expiry(stack: tuple[Path, GatewayServer]) -> None:
    dev_dir, gateway = stack
    issuer_url = issuer.read_endpoints(dev_dir)["oidc_issuer"]
    secret = issuer.load_secret(dev_dir / "oidc")
    credentials = DevIdTokenCredentials(
        issuer_url, AGENT, groups=("etl",), ttl_seconds=600, secret=secret
    )
    assert not credentials.valid
    credentials.refresh(google.auth.transport.requests.Request())
    assert credentials.valid
    assert isinstance(credentials.token, str)
    assert gateway.verifier.verify(credentials.token).groups == {"etl"}
    first = credentials.token
    credentials.refresh(google.auth.transport.requests.Request())
    assert credentials.token != first  # every refresh is a new short-lived token


def test_dev_credentials_fail_fast_and_without_retryable_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    credentials = DevIdTokenCredentials(f"http://127.0.0.1:{port}", AGENT, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(google.auth.exceptions.RefreshError, match="unreachable"):
        credentials.refresh(google.auth.transport.requests.Request())
    assert time.monotonic() - started < 2


def test_dev_credentials_report_issuer_refusal(stack: tuple[Path, GatewayServer]) -> None:
    dev_dir, _ = stack
    issuer_url = issuer.read_endpoints(dev_dir)["oidc_issuer"]
    secret = issuer.load_secret(dev_dir / "oidc")
    credentials = DevIdTokenCredentials(issuer_url, " not trimmed", secret=secret)
    with pytest.raises(google.auth.exceptions.RefreshError, match="HTTP 400"):
        credentials.refresh(google.auth.transport.requests.Request())
    without = DevIdTokenCredentials(issuer_url, "alice@example.com", groups=("data-approvers",))
    with pytest.raises(google.auth.exceptions.RefreshError, match=r"HTTP 401.*token secret"):
        without.refresh(google.auth.transport.requests.Request())


def test_a_session_reads_the_environment_once_and_keeps_its_proxies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import requests
    from bqgate.adapters.google_clients import environment_read_once

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    out = environment_read_once(requests.Session(), "https://executor-abc.a.run.app/")
    assert out.proxies.get("https") == "http://proxy.internal:3128" and not out.trust_env
    assert out.verify == "/etc/ssl/certs/ca-certificates.crt"
    local = environment_read_once(requests.Session(), "http://127.0.0.1:8080/")
    assert "http" not in local.proxies  # no_proxy holds as before
