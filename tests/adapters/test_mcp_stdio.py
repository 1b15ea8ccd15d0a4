"""``bqgate mcp``'s token handling: fresh ID tokens on every forwarded request, refreshed when
they expire (against the real dev issuer and the stack's MCP endpoint), once more on a 401,
and a clear exit when there is no stack to forward to."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import google.auth.credentials
import httpx2
import pytest
from bqgate.adapters.client import DevIdTokenCredentials
from bqgate.adapters.mcp_stdio import CredentialsAuth
from bqgate.cli import main
from bqgate.dev import issuer
from bqgate.dev.stack import Stack
from conftest import AGENT

LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
ACCEPT = {"Accept": "application/json, text/event-stream"}


class CountingCredentials(google.auth.credentials.Credentials):
    """Credentials whose every refresh mints the next numbered token, valid for an hour."""

    def __init__(self) -> None:
        super().__init__()
        self.refreshes = 0

    def refresh(self, request: Any) -> None:
        self.refreshes += 1
        self.token = f"token-{self.refreshes}"
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        self.expiry = now + datetime.timedelta(hours=1)


def test_a_valid_token_is_reused_and_a_401_refreshes_it_once() -> None:
    creds = CountingCredentials()
    seen: list[str] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.headers["Authorization"])
        return httpx2.Response(401 if len(seen) == 2 else 200, json={})

    with httpx2.Client(auth=CredentialsAuth(creds), transport=httpx2.MockTransport(answer)) as c:
        assert c.get("http://gw.test/mcp").status_code == 200
        assert c.get("http://gw.test/mcp").status_code == 200  # 401, refreshed, retried
        assert c.get("http://gw.test/mcp").status_code == 200
    assert seen == ["Bearer token-1", "Bearer token-1", "Bearer token-2", "Bearer token-2"]
    assert creds.refreshes == 2


@pytest.mark.emulators
def test_expired_dev_tokens_are_minted_again_and_accepted(stack: Stack) -> None:
    secret = issuer.load_secret(stack.state_dir / issuer.OIDC_SUBDIR)
    # 31 s tokens: the credentials count them as expired at once (refresh margin), so
    # every request needs a new one from the issuer.
    creds = DevIdTokenCredentials(stack.url("oidc_issuer"), AGENT, ttl_seconds=31, secret=secret)
    sent: list[str] = []
    hooks = {"request": [lambda r: sent.append(r.headers["Authorization"])]}
    url = stack.endpoints()["mcp"]
    with httpx2.Client(auth=CredentialsAuth(creds), event_hooks=hooks, timeout=60) as http:
        first = http.post(url, json=LIST, headers=ACCEPT)
        time.sleep(1.1)
        second = http.post(url, json=LIST, headers=ACCEPT)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert {t["name"] for t in second.json()["result"]["tools"]} >= {"execute_sql"}
    assert len(sent) == 2 and sent[0] != sent[1]


def test_bqgate_mcp_without_a_dev_stack_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["mcp", "--dev-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr()
    assert err.out == "" and err.err.startswith("bqgate: ") and "--url" in err.err
