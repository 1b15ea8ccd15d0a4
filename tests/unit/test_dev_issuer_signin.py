"""The dev issuer's OpenID Connect sign-in (authorization code + PKCE), on a real server on
127.0.0.1: what the console's client library relies on, and what it must refuse."""

from __future__ import annotations

import base64
import re
import secrets
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from bqgate.adapters.oidc import OidcVerifier
from bqgate.dev import issuer
from bqgate.policy import Issuer

SECRET = "s3cret-" + "x" * 20
CALLBACK = "http://127.0.0.1:9/console/auth/callback"
DEV = Issuer("dev", ("bqgate",), "dev", groups_claim="groups", dev_only=True)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[issuer.DevIssuerServer]:
    secret_file = tmp_path / "console-client-secret"
    secret_file.write_text(SECRET + "\n")
    srv = issuer.serve("127.0.0.1", 0, tmp_path / "oidc", client_secret_file=secret_file)
    yield srv
    srv.shutdown()
    srv.server_close()


def authorize_params(**change: Any) -> dict[str, Any]:
    verifier = change.pop("verifier", "v" * 50)
    params = {
        "response_type": "code",
        "client_id": "bqgate",
        "redirect_uri": CALLBACK,
        "scope": "openid email",
        "state": "st-1",
        "nonce": "n-1",
        "code_challenge": issuer.pkce_challenge(verifier),
        "code_challenge_method": "S256",
    }
    params.update(change)
    return {k: v for k, v in params.items() if v is not None}


def pick(
    srv: issuer.DevIssuerServer,
    principal: str,
    *,
    key: str | None = "",
    cookies: dict[str, str] | None = None,
    **change: Any,
) -> requests.Response:
    """Show the sign-in page, then pick ``principal`` (with the sign-in key by default)."""
    page = requests.get(
        srv.issuer_url + "/authorize",
        params=authorize_params(**change),
        cookies=cookies,
        timeout=5,
    )
    assert page.status_code == 200, page.text
    found = re.search(r'name="request_id" value="([^"]+)"', page.text)
    assert found, page.text
    request_id = found.group(1)

    form = {"request_id": request_id, "principal": principal}
    if key is not None:
        form["sign_in_key"] = key or srv.sign_in_key
    return requests.post(
        srv.issuer_url + "/authorize",
        data=form,
        cookies=cookies,
        allow_redirects=False,
        timeout=5,
    )


def code_of(resp: requests.Response) -> str:
    assert resp.status_code == 303
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(resp.headers["Location"]).query)
    return query["code"][0]


def exchange(
    srv: issuer.DevIssuerServer,
    code: str,
    *,
    verifier: str = "v" * 50,
    secret: str = SECRET,
    redirect_uri: str = CALLBACK,
) -> requests.Response:
    return requests.post(
        srv.issuer_url + "/token",
        auth=("bqgate", secret),
        timeout=5,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        },
    )


def test_discovery_describes_the_code_flow(server: issuer.DevIssuerServer) -> None:
    doc = requests.get(server.issuer_url + "/.well-known/openid-configuration", timeout=5).json()
    assert doc["authorization_endpoint"] == server.issuer_url + "/authorize"
    assert doc["token_endpoint"] == server.issuer_url + "/token"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["response_types_supported"] == ["code"]


def test_the_sign_in_page_offers_alice_bob_and_the_agent(server: issuer.DevIssuerServer) -> None:
    page = requests.get(server.issuer_url + "/authorize", params=authorize_params(), timeout=5)
    assert page.status_code == 200 and page.headers["X-Frame-Options"] == "DENY"
    for who in (
        "alice@example.com",
        "bob@example.com",
        "agent@demo-project.iam.gserviceaccount.com",
    ):
        assert f'value="{who}"' in page.text
    assert "<legend>Sign in as</legend>" in page.text


def test_code_flow_gives_a_verifiable_id_token_with_the_nonce(
    server: issuer.DevIssuerServer,
) -> None:
    picked = pick(server, "alice@example.com")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(picked.headers["Location"]).query)
    assert query["state"] == ["st-1"] and query["iss"] == [server.issuer_url]
    assert picked.headers["Location"].startswith(CALLBACK + "?")
    answer = exchange(server, query["code"][0])
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    claims = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert claims["nonce"] == "n-1" and claims["aud"] == "bqgate"
    verifier = OidcVerifier([DEV], dev_issuer_url=server.issuer_url, dev_mode=True)
    assert verifier.verify(body["id_token"]).email == "alice@example.com"
    assert body["access_token"] != body["id_token"] and "." not in body["access_token"]


def test_client_secret_post_works_too(server: issuer.DevIssuerServer) -> None:
    code = code_of(pick(server, "bob@example.com"))
    answer = requests.post(
        server.issuer_url + "/token",
        timeout=5,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": CALLBACK,
            "code_verifier": "v" * 50,
            "client_id": "bqgate",
            "client_secret": SECRET,
        },
    )
    assert answer.status_code == 200 and answer.json()["id_token"]


def test_a_code_is_good_once(server: issuer.DevIssuerServer) -> None:
    code = code_of(pick(server, "alice@example.com"))
    assert exchange(server, code).status_code == 200
    again = exchange(server, code)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_a_wrong_verifier_burns_the_code(server: issuer.DevIssuerServer) -> None:
    code = code_of(pick(server, "alice@example.com"))
    wrong = exchange(server, code, verifier="w" * 50)
    assert wrong.status_code == 400 and wrong.json() == {
        "error": "invalid_grant",
        "error_description": "the PKCE code_verifier does not match",
    }
    assert exchange(server, code).json()["error"] == "invalid_grant"


def test_wrong_client_secret_or_redirect_uri_is_refused(server: issuer.DevIssuerServer) -> None:
    code = code_of(pick(server, "alice@example.com"))
    bad = exchange(server, code, secret="guess")
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    assert bad.headers["WWW-Authenticate"] == "Basic"
    code = code_of(pick(server, "alice@example.com"))
    other = exchange(server, code, redirect_uri="http://127.0.0.1:9/elsewhere")
    assert other.status_code == 400 and other.json()["error"] == "invalid_grant"
    basic = base64.b64encode(b"bqgate:" + SECRET.encode()).decode()
    grant = requests.post(
        server.issuer_url + "/token",
        timeout=5,
        headers={"Authorization": "Basic " + basic},
        data={"grant_type": "password", "code": "x"},
    )
    assert grant.json()["error"] == "unsupported_grant_type"


@pytest.mark.parametrize(
    "change, error",
    [
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": None}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "email"}, "invalid_scope"),
        ({"state": None}, "invalid_request"),
    ],
)
def test_bad_authorization_requests_go_back_with_an_error(
    server: issuer.DevIssuerServer, change: dict[str, Any], error: str
) -> None:
    resp = requests.get(
        server.issuer_url + "/authorize",
        params=authorize_params(**change),
        allow_redirects=False,
        timeout=5,
    )
    assert resp.status_code == 303
    assert resp.headers["Location"].startswith(CALLBACK + "?")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(resp.headers["Location"]).query)
    assert query["error"] == [error] and "code" not in query


@pytest.mark.parametrize(
    "change",
    [
        {"redirect_uri": "https://evil.example/cb"},
        {"redirect_uri": "http://127.0.0.1:9/cb#frag"},
        {"redirect_uri": None},
        {"client_id": "someone-else"},
    ],
)
def test_unknown_clients_and_foreign_redirects_get_a_page_not_a_redirect(
    server: issuer.DevIssuerServer, change: dict[str, Any]
) -> None:
    resp = requests.get(
        server.issuer_url + "/authorize",
        params=authorize_params(**change),
        allow_redirects=False,
        timeout=5,
    )
    assert resp.status_code == 400 and "Location" not in resp.headers
    assert "Sign-in error" in resp.text


def test_only_the_offered_identities_can_sign_in(server: issuer.DevIssuerServer) -> None:
    resp = pick(server, "mallory@example.com")
    assert resp.status_code == 400 and "pick one of the identities" in resp.text
    stale = requests.post(
        server.issuer_url + "/authorize",
        allow_redirects=False,
        timeout=5,
        data={
            "request_id": secrets.token_urlsafe(24),
            "principal": "alice@example.com",
            "sign_in_key": server.sign_in_key,
        },
    )
    assert stale.status_code == 400 and "expired" in stale.text


def test_without_a_client_secret_file_the_sign_in_is_off(tmp_path: Path) -> None:
    srv = issuer.serve("127.0.0.1", 0, tmp_path / "oidc")
    try:
        resp = requests.get(srv.issuer_url + "/authorize", params=authorize_params(), timeout=5)
        assert resp.status_code == 400 and "unknown client" in resp.text
    finally:
        srv.shutdown()
        srv.server_close()


def test_picking_an_identity_takes_the_sign_in_key(server: issuer.DevIssuerServer) -> None:
    """Reaching loopback is not enough to sign in as an approver (as for /token)."""
    page = requests.get(server.issuer_url + "/authorize", params=authorize_params(), timeout=5)
    assert 'name="sign_in_key" type="password"' in page.text
    assert '<label for="sign_in_key">' in page.text
    for key in (None, "guess"):
        refused = pick(server, "alice@example.com", key=key)
        assert refused.status_code == 401 and "Location" not in refused.headers
        assert "sign-in key is missing or wrong" in refused.text
    assert (server.key_dir / issuer.SIGN_IN_KEY_FILE).stat().st_mode & 0o777 == 0o600


def test_a_browser_that_gave_the_key_keeps_a_cookie_not_the_key(
    server: issuer.DevIssuerServer,
) -> None:
    first = pick(server, "bob@example.com")
    assert first.status_code == 303
    cookie = first.cookies.get(issuer.SIGN_IN_COOKIE)
    assert cookie and server.sign_in_key not in cookie
    header = first.headers["Set-Cookie"]
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Max-Age=43200" in header
    jar = {issuer.SIGN_IN_COOKIE: cookie}
    page = requests.get(
        server.issuer_url + "/authorize", params=authorize_params(), cookies=jar, timeout=5
    )
    assert "sign_in_key" not in page.text
    again = pick(server, "alice@example.com", key=None, cookies=jar)
    assert again.status_code == 303 and "Set-Cookie" not in again.headers
    forged = pick(server, "alice@example.com", key=None, cookies={issuer.SIGN_IN_COOKIE: "0" * 64})
    assert forged.status_code == 401
