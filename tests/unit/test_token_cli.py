"""``bqgate token`` and the dev issuer it relies on (real servers on 127.0.0.1)."""

from __future__ import annotations

import argparse
import json
import os
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from bqgate.adapters.oidc import OidcVerifier
from bqgate.commands import token as token_command
from bqgate.dev import issuer
from bqgate.policy import Issuer

AGENT = "agent@demo-project.iam.gserviceaccount.com"
DEV = Issuer("dev", ("bqgate",), "dev", groups_claim="groups", dev_only=True)


def run_token(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="bqgate")
    token_command.register(parser.add_subparsers())
    args = parser.parse_args(["token", *argv])
    return int(args.func(args))


@pytest.fixture
def dev_stack(tmp_path: Path) -> Iterator[tuple[Path, issuer.DevIssuerServer]]:
    """A dev dir as the dev stack leaves it: a running issuer and endpoints.json."""
    dev_dir = tmp_path / ".bqgate-dev"
    server = issuer.serve("127.0.0.1", 0, dev_dir / "oidc")
    (dev_dir / "endpoints.json").write_text(
        json.dumps({"oidc_issuer": server.issuer_url, "gateway": "http://127.0.0.1:1"})
    )
    yield dev_dir, server
    server.shutdown()
    server.server_close()


def get_json(
    url: str, body: dict[str, Any] | None = None, secret: str | None = None
) -> tuple[int, dict[str, Any], Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    request.add_header("Content-Type", "application/json")
    if secret is not None:
        request.add_header("Authorization", f"Bearer {secret}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


# --- bqgate token ------------------------------------------------------------------------


def test_token_is_accepted_by_the_verifier_through_the_dev_issuer(
    dev_stack: tuple[Path, issuer.DevIssuerServer], capsys: pytest.CaptureFixture[str]
) -> None:
    dev_dir, server = dev_stack
    code = run_token(
        "--principal",
        AGENT,
        "--group",
        "etl",
        "--group",
        "oncall",
        "--ttl",
        "15m",
        "--dev-dir",
        str(dev_dir),
    )
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    token = out.strip()
    assert out == token + "\n"  # only the token, so $(bqgate token ...) works
    verifier = OidcVerifier([DEV], dev_issuer_url=server.issuer_url, dev_mode=True)
    principal = verifier.verify(token)
    assert principal.email == AGENT
    assert principal.groups == {"etl", "oncall"}
    assert principal.issuer == server.issuer_url
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 900
    assert claims["aud"] == "bqgate"
    assert claims["sub"] == AGENT


def test_token_finds_the_dev_dir_through_the_environment(
    dev_stack: tuple[Path, issuer.DevIssuerServer],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dev_dir, server = dev_stack
    monkeypatch.setenv("BQGATE_DEV_DIR", str(dev_dir))
    assert run_token("--principal", "bob@example.com", "--audience", "other") == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    assert (claims["email"], claims["aud"], claims["iss"]) == (
        "bob@example.com",
        "other",
        server.issuer_url,
    )
    assert claims["exp"] - claims["iat"] == 3600


def test_token_finds_the_dev_dir_from_the_working_directory(
    dev_stack: tuple[Path, issuer.DevIssuerServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    dev_dir, _ = dev_stack
    nested = dev_dir.parent / "src" / "pkg"
    nested.mkdir(parents=True)
    monkeypatch.delenv("BQGATE_DEV_DIR", raising=False)
    assert issuer.find_dev_dir(cwd=nested) == dev_dir.resolve()
    assert issuer.find_dev_dir(dev_dir / "x") == dev_dir / "x"
    assert issuer.find_dev_dir(environ={"BQGATE_DEV_DIR": "/elsewhere"}) == Path("/elsewhere")


def test_missing_dev_stack_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_token("--principal", AGENT, "--dev-dir", str(tmp_path / "nothing"))
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert "no dev stack state" in err


def test_missing_secret_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "endpoints.json").write_text(json.dumps({"oidc_issuer": "http://127.0.0.1:9"}))
    assert run_token("--principal", AGENT, "--dev-dir", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err == "bqgate: the dev issuer's token secret is missing; is the dev stack running?\n"
    assert not (tmp_path / "oidc").exists()  # never invents a secret or a key


def test_an_unreachable_issuer_is_a_one_line_error(
    dev_stack: tuple[Path, issuer.DevIssuerServer], capsys: pytest.CaptureFixture[str]
) -> None:
    dev_dir, _ = dev_stack
    (dev_dir / "endpoints.json").write_text(json.dumps({"oidc_issuer": "http://127.0.0.1:9"}))
    assert run_token("--principal", AGENT, "--dev-dir", str(dev_dir)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unreachable" in err


def test_endpoints_without_issuer_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "endpoints.json").write_text(json.dumps({"gateway": "http://127.0.0.1:9"}))
    assert run_token("--principal", AGENT, "--dev-dir", str(tmp_path)) == 2
    assert "oidc_issuer" in capsys.readouterr().err


@pytest.mark.parametrize("ttl", ["13h", "0s", "1d", "soon", "-5m"])
def test_bad_ttl_is_rejected(
    ttl: str, dev_stack: tuple[Path, issuer.DevIssuerServer], capsys: pytest.CaptureFixture[str]
) -> None:
    dev_dir, _ = dev_stack
    assert run_token("--principal", AGENT, f"--ttl={ttl}", "--dev-dir", str(dev_dir)) == 2
    assert "ttl" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("1h", 3600), ("12h", 43200), ("45", 45)]
)
def test_parse_ttl(text: str, seconds: int) -> None:
    assert issuer.parse_ttl(text) == seconds


# --- the dev issuer ----------------------------------------------------------------------


def test_key_is_created_once_private_and_kid_is_stable(tmp_path: Path) -> None:
    key_dir = tmp_path / "oidc"
    first = issuer.load_or_create_key(key_dir)
    second = issuer.load_or_create_key(key_dir)
    assert issuer.public_jwk(first) == issuer.public_jwk(second)
    mode = stat.S_IMODE(os.stat(issuer.key_path(key_dir)).st_mode)
    assert mode == 0o600
    assert list(key_dir.iterdir()) == [issuer.key_path(key_dir)]  # no temp files left


def test_issuer_serves_discovery_and_cacheable_jwks(
    dev_stack: tuple[Path, issuer.DevIssuerServer],
) -> None:
    _, server = dev_stack
    status, discovery, _ = get_json(f"{server.issuer_url}/.well-known/openid-configuration")
    assert status == 200
    assert discovery["issuer"] == server.issuer_url
    assert discovery["jwks_uri"] == f"{server.issuer_url}/jwks"
    status, jwks, headers = get_json(discovery["jwks_uri"])
    assert status == 200
    assert headers["Cache-Control"] == "public, max-age=300"
    (key,) = jwks["keys"]
    assert key["kty"] == "RSA" and key["alg"] == "RS256" and "d" not in key
    assert key["kid"] == issuer.jwk_thumbprint(key)


def test_issuer_discovery_works_for_the_verifier(
    dev_stack: tuple[Path, issuer.DevIssuerServer],
) -> None:
    _, server = dev_stack
    via_discovery = Issuer(
        "dev",
        ("bqgate",),
        f"{server.issuer_url}/.well-known/openid-configuration",
        dev_only=True,
    )
    verifier = OidcVerifier([via_discovery], dev_issuer_url=server.issuer_url, dev_mode=True)
    _, answer, _ = get_json(f"{server.issuer_url}/token", {"principal": AGENT}, server.secret)
    assert verifier.verify(answer["id_token"]).email == AGENT


def test_issuer_token_endpoint(dev_stack: tuple[Path, issuer.DevIssuerServer]) -> None:
    _, server = dev_stack
    status, answer, headers = get_json(
        f"{server.issuer_url}/token",
        {"principal": AGENT, "groups": ["g"], "ttl": "90s"},
        issuer.load_secret(server.key_dir),
    )
    assert status == 200
    assert answer["expires_in"] == 90
    assert headers["Cache-Control"] == "no-store"
    verifier = OidcVerifier([DEV], dev_issuer_url=server.issuer_url, dev_mode=True)
    assert verifier.verify(answer["id_token"]).groups == {"g"}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"principal": 7},
        {"principal": AGENT, "groups": "g"},
        {"principal": AGENT, "ttl": "2d"},
        {"principal": " padded"},
        {"principal": AGENT, "groups": [1]},
    ],
)
def test_issuer_token_endpoint_rejects_bad_requests(
    body: dict[str, Any], dev_stack: tuple[Path, issuer.DevIssuerServer]
) -> None:
    _, server = dev_stack
    status, answer, _ = get_json(f"{server.issuer_url}/token", body or {"x": 1}, server.secret)
    assert status == 400
    assert answer["error"]


@pytest.mark.parametrize("secret", [None, "", "wrong", "Bearer"])
def test_the_token_endpoint_without_the_secret_is_401(
    secret: str | None, dev_stack: tuple[Path, issuer.DevIssuerServer]
) -> None:
    """An agent that can reach the issuer but not read the state folder cannot mint
    an approver's token."""
    _, server = dev_stack
    status, answer, _ = get_json(
        f"{server.issuer_url}/token",
        {"principal": "alice@example.com", "groups": ["data-approvers"]},
        secret,
    )
    assert status == 401
    assert "token secret" in answer["error"] and "id_token" not in answer


def test_the_token_secret_is_made_once_and_private(tmp_path: Path) -> None:
    first = issuer.load_or_create_secret(tmp_path / "oidc")
    assert issuer.load_or_create_secret(tmp_path / "oidc") == first and len(first) == 64
    assert stat.S_IMODE(os.stat(issuer.secret_path(tmp_path / "oidc")).st_mode) == 0o600


def test_issuer_binds_to_loopback_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        issuer.make_server("0.0.0.0", 0, tmp_path)
