"""The local dev OIDC issuer: one RSA key in the dev state folder, a JWKS, and a token mint.

Run by the dev stack as ``python -m bqgate.dev.issuer --port P --state-dir D``. It binds
to loopback only and serves::

    GET  /.well-known/openid-configuration
    GET  /jwks                      (Cache-Control: max-age=300)
    POST /token  {"principal", "groups", "ttl"}  ->  {"id_token", "expires_in"}
                 Authorization: Bearer <the token secret>
    GET  /healthz

The key is generated once into ``<state-dir>/oidc/dev-key.pem``; its ``kid`` is the
RFC 7638 thumbprint of the public key. The gateway trusts this issuer only in dev mode.

``/token`` mints a token for any principal and any groups, so it answers only a caller
that shows the *token secret*, ``<state-dir>/oidc/token-secret`` (mode 0600, made once):
whoever can read the dev state folder (the developer) can mint tokens; an agent that can
reach loopback ports but was handed only its own token cannot mint an approver's token
and approve its own request. Without the secret: 401.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

KEY_FILE = "dev-key.pem"
SECRET_FILE = "token-secret"
OIDC_SUBDIR = "oidc"
DEFAULT_AUDIENCE = "bqgate"
MAX_TTL_SECONDS = 12 * 3600
JWKS_MAX_AGE = 300
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_MAX_BODY = 64 * 1024
_TTL_RE = re.compile(r"^\s*(\d+)\s*([smh]?)\s*$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_ttl(text: str | int) -> int:
    """Seconds from ``90s``, ``15m``, ``1h`` (or a bare number of seconds), 1 s .. 12 h.

    >>> parse_ttl("90s"), parse_ttl("15m"), parse_ttl("1h"), parse_ttl(30)
    (90, 900, 3600, 30)
    >>> parse_ttl("13h")
    Traceback (most recent call last):
    ValueError: ttl must be between 1s and 12h, got '13h'
    """
    if isinstance(text, bool):
        raise ValueError(f"invalid ttl {text!r}: use e.g. 90s, 15m, 1h")
    if isinstance(text, int):
        seconds = text
    else:
        match = _TTL_RE.match(text.lower())
        if not match:
            raise ValueError(f"invalid ttl {text!r}: use e.g. 90s, 15m, 1h")
        seconds = int(match.group(1)) * _TTL_UNITS[match.group(2)]
    if not 1 <= seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl must be between 1s and 12h, got {text!r}")
    return seconds


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 SHA-256 thumbprint of an RSA public JWK (base64url, no padding).

    >>> n = (  # the example key of RFC 7638 section 3.1
    ...     "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aP"
    ...     "FFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl9"
    ...     "3lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdA"
    ...     "ZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3"
    ...     "XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ... )
    >>> jwk_thumbprint({"kty": "RSA", "e": "AQAB", "n": n})
    'NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs'
    """
    canonical = json.dumps(
        {"e": jwk["e"], "kty": jwk["kty"], "n": jwk["n"]}, separators=(",", ":"), sort_keys=True
    )
    digest = hashlib.sha256(canonical.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def public_jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    """The public JWK of ``key``, with ``kid`` = its thumbprint and ``alg`` RS256."""
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "e": _b64url_uint(numbers.e), "n": _b64url_uint(numbers.n)}
    return {**jwk, "use": "sig", "alg": "RS256", "kid": jwk_thumbprint(jwk)}


def key_path(key_dir: Path) -> Path:
    """Where the dev signing key lives inside ``key_dir``."""
    return Path(key_dir) / KEY_FILE


def load_key(key_dir: Path) -> rsa.RSAPrivateKey:
    """The existing dev key. Raises FileNotFoundError if the dev stack never created it."""
    data = key_path(key_dir).read_bytes()
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{key_path(key_dir)} is not an RSA private key")
    return key


def load_or_create_key(key_dir: Path) -> rsa.RSAPrivateKey:
    """The dev key, generated (2048-bit RSA, mode 0600) on first use; safe against races."""
    path = key_path(key_dir)
    if path.exists():
        return load_key(key_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{KEY_FILE}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # atomic create-if-absent: a concurrent winner keeps its key
    finally:
        tmp.unlink(missing_ok=True)
    return load_key(key_dir)


def secret_path(key_dir: Path) -> Path:
    """Where the token endpoint's secret lives inside ``key_dir``."""
    return Path(key_dir) / SECRET_FILE


def load_secret(key_dir: Path) -> str:
    """The token endpoint's secret. Raises FileNotFoundError if the issuer never made it."""
    return secret_path(key_dir).read_text(encoding="ascii").strip()


def load_or_create_secret(key_dir: Path) -> str:
    """The token endpoint's secret (32 random bytes, hex, mode 0600), made on first use."""
    path = secret_path(key_dir)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{SECRET_FILE}.{secrets.token_hex(6)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(32) + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return load_secret(key_dir)


def request_token(
    issuer_url: str,
    principal: str,
    groups: Sequence[str],
    ttl_seconds: int,
    audience: str = DEFAULT_AUDIENCE,
    *,
    secret: str,
    timeout: float = 5.0,
    claims: Mapping[str, str] | None = None,
) -> str:
    """A token from a running dev issuer's ``/token`` endpoint (what ``bqgate token`` does).

    ``claims`` are custom claims to carry (``{"env": "production"}``).

    Raises:
        ValueError: the issuer refused (its error message), or is unreachable.
    """
    import urllib.error
    import urllib.request

    body = json.dumps(
        {
            "principal": principal,
            "groups": list(groups),
            "ttl": ttl_seconds,
            "audience": audience,
            "claims": dict(claims or {}),
        }
    ).encode("utf-8")
    req = urllib.request.Request(
        issuer_url.rstrip("/") + "/token",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {secret}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read()).get("error")
        except (ValueError, AttributeError):
            error = None
        raise ValueError(
            f"the dev issuer refused (HTTP {exc.code}): {error or exc.reason}"
        ) from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"the dev issuer at {issuer_url} is unreachable: {exc}") from None
    token = answer.get("id_token") if isinstance(answer, dict) else None
    if not isinstance(token, str):
        raise ValueError("the dev issuer answered without an id_token")
    return token


def mint_token(
    principal: str,
    groups: Sequence[str],
    ttl_seconds: int,
    audience: str = DEFAULT_AUDIENCE,
    *,
    issuer_url: str,
    key_dir: Path,
    now: float | None = None,
    extra_claims: Mapping[str, str] | None = None,
) -> str:
    """An RS256 ID token for ``principal`` signed by the dev key in ``key_dir``.

    Claims: ``iss`` (``issuer_url``), ``aud``, ``sub`` and ``email`` (the principal),
    ``email_verified``, ``groups``, ``iat``, ``nbf``, ``exp``, ``jti``, plus
    ``extra_claims`` (custom claims such as ``env: production``; registered names refused).

    Raises:
        FileNotFoundError: no dev key in ``key_dir`` (the dev issuer creates it).
        ValueError: bad principal, groups or ttl.
    """
    if not principal or not principal.strip() or principal != principal.strip():
        raise ValueError("principal must be a non-empty string without surrounding spaces")
    if isinstance(groups, str) or not all(isinstance(g, str) and g for g in groups):
        raise ValueError("groups must be a list of non-empty strings")
    ttl = parse_ttl(ttl_seconds)
    key = load_key(key_dir)
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer_url.rstrip("/"),
        "aud": audience,
        "sub": principal,
        "email": principal,
        "email_verified": True,
        "groups": list(groups),
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "jti": secrets.token_urlsafe(12),
    }
    for name, value in (extra_claims or {}).items():
        if name in claims or not name:
            raise ValueError(f"claim {name!r} cannot be set")
        claims[name] = value
    kid = public_jwk(key)["kid"]
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


DEV_DIR_ENV = "BQGATE_DEV_DIR"
DEV_DIR_NAME = ".bqgate-dev"
ENDPOINTS_FILE = "endpoints.json"


class DevStackNotFound(Exception):
    """The dev stack's state (``.bqgate-dev/endpoints.json``) is missing or unreadable."""


def find_dev_dir(
    explicit: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Path:
    """The dev state folder: ``explicit``, else ``$BQGATE_DEV_DIR``, else the nearest
    ``.bqgate-dev`` holding ``endpoints.json`` from ``cwd`` upwards, else the one at the
    repository root. The folder may not exist; :func:`read_endpoints` says so.
    """
    if explicit is not None:
        return Path(explicit)
    env = os.environ if environ is None else environ
    if env.get(DEV_DIR_ENV):
        return Path(env[DEV_DIR_ENV])
    start = (cwd or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / DEV_DIR_NAME / ENDPOINTS_FILE).is_file():
            return folder / DEV_DIR_NAME
    return Path(__file__).resolve().parents[3] / DEV_DIR_NAME  # repo/shared/bqgate/dev


def read_endpoints(dev_dir: Path) -> dict[str, str]:
    """``endpoints.json`` of a running dev stack (endpoint name -> URL).

    Raises:
        DevStackNotFound: the file is missing or is not a JSON object of strings.
    """
    path = Path(dev_dir) / ENDPOINTS_FILE
    hint = "start it with `bqgate dev up` or pass --dev-dir"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DevStackNotFound(f"no dev stack state at {path}; {hint}") from None
    except (OSError, ValueError) as exc:
        raise DevStackNotFound(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DevStackNotFound(f"{path} is not a JSON object")
    return {str(k): v for k, v in data.items() if isinstance(v, str)}


class DevIssuerServer(ThreadingHTTPServer):
    """The dev issuer's HTTP server; ``issuer_url`` is the ``iss`` of its tokens."""

    daemon_threads = True
    request_queue_size = 64  # bursts of token fetches from many agents at once

    def __init__(self, host: str, port: int, key_dir: Path, issuer_url: str | None) -> None:
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"the dev issuer binds to loopback only, not {host!r}")
        self.key_dir = Path(key_dir)
        self.key = load_or_create_key(self.key_dir)
        self.secret = load_or_create_secret(self.key_dir)
        self.jwks = {"keys": [public_jwk(self.key)]}
        super().__init__((host, port), _Handler)
        bound_port = self.server_address[1]
        shown = "127.0.0.1" if host == "localhost" else host
        shown = f"[{shown}]" if ":" in shown else shown
        self.issuer_url = (issuer_url or f"http://{shown}:{bound_port}").rstrip("/")


class _Handler(BaseHTTPRequestHandler):
    server: DevIssuerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: request lines would only add noise to the dev stack logs."""

    def _send(self, status: int, body: Mapping[str, Any], cache: str = "no-store") -> None:
        payload = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        url = self.server.issuer_url
        path = self.path.split("?", 1)[0]
        if path == "/.well-known/openid-configuration":
            self._send(
                HTTPStatus.OK,
                {
                    "issuer": url,
                    "jwks_uri": f"{url}/jwks",
                    "token_endpoint": f"{url}/token",
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "claims_supported": ["iss", "aud", "sub", "email", "groups", "exp", "iat"],
                },
                cache=f"public, max-age={JWKS_MAX_AGE}",
            )
        elif path == "/jwks":
            self._send(HTTPStatus.OK, self.server.jwks, cache=f"public, max-age={JWKS_MAX_AGE}")
        elif path == "/healthz":
            self._send(HTTPStatus.OK, {"ok": True, "issuer": url})
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/token":
            self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        auth = self.headers.get("Authorization") or ""
        shown = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(shown.encode(), self.server.secret.encode()):
            self.close_connection = True  # the body is left unread
            self._send(
                HTTPStatus.UNAUTHORIZED,
                {
                    "error": "the dev token endpoint needs the token secret from the dev state "
                    "folder (oidc/token-secret) as a bearer token; `bqgate token` sends it"
                },
            )
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= _MAX_BODY:
            self._send(HTTPStatus.BAD_REQUEST, {"error": "a JSON body is required"})
            return
        try:
            request = json.loads(self.rfile.read(length))
            if not isinstance(request, dict):
                raise ValueError("the body must be a JSON object")
            principal = request.get("principal")
            if not isinstance(principal, str):
                raise ValueError("'principal' is required")
            groups = request.get("groups") or []
            if not isinstance(groups, list):
                raise ValueError("'groups' must be a list")
            ttl = parse_ttl(request.get("ttl", 3600))
            audience = request.get("audience", DEFAULT_AUDIENCE)
            if not isinstance(audience, str) or not audience:
                raise ValueError("'audience' must be a string")
            claims = request.get("claims") or {}
            if not isinstance(claims, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in claims.items()
            ):
                raise ValueError("'claims' must be an object of strings")
            token = mint_token(
                principal,
                groups,
                ttl,
                audience,
                issuer_url=self.server.issuer_url,
                key_dir=self.server.key_dir,
                extra_claims=claims,
            )
        except (ValueError, TypeError) as exc:
            self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        self._send(HTTPStatus.OK, {"id_token": token, "expires_in": ttl, "token_type": "Bearer"})


def make_server(
    host: str, port: int, key_dir: Path, *, issuer_url: str | None = None
) -> DevIssuerServer:
    """A bound (not yet serving) dev issuer. ``port`` 0 picks a free port."""
    return DevIssuerServer(host, port, key_dir, issuer_url)


def serve(host: str, port: int, key_dir: Path, *, issuer_url: str | None = None) -> DevIssuerServer:
    """Start the dev issuer in a daemon thread; stop it with ``shutdown()`` + ``server_close()``."""
    server = make_server(host, port, key_dir, issuer_url=issuer_url)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.1,), name="bqgate-dev-issuer", daemon=True
    )
    thread.start()
    return server


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bqgate.dev.issuer --port P --state-dir D``: serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m bqgate.dev.issuer", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", choices=LOOPBACK_HOSTS)
    parser.add_argument("--port", type=int, default=8095)
    parser.add_argument("--state-dir", type=Path, required=True, help="the dev state folder")
    parser.add_argument("--issuer-url", default=None, help="iss override (default: bound URL)")
    args = parser.parse_args(argv)
    server = make_server(
        args.host, args.port, args.state_dir / OIDC_SUBDIR, issuer_url=args.issuer_url
    )
    print(f"bqgate dev issuer: {server.issuer_url}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
