"""The local dev OIDC issuer: one RSA key in the dev state folder, a JWKS, a token mint,
and an OpenID Connect sign-in (authorization code + PKCE) for the approver console.

Run by the dev stack as ``python -m bqgate.dev.issuer --port P --state-dir D``. It binds
to loopback only and serves::

    GET  /.well-known/openid-configuration
    GET  /jwks                      (Cache-Control: max-age=300)
    POST /token  {"principal", "groups", "ttl"}  ->  {"id_token", "expires_in"}   (JSON body)
                 Authorization: Bearer <the token secret>
    GET  /authorize?response_type=code&client_id&redirect_uri&scope=openid&state&nonce
                   &code_challenge&code_challenge_method=S256   ->  a page: pick who you are
    POST /authorize  (the page's form, with the sign-in key)  ->  303 to redirect_uri?code&state
    POST /token  grant_type=authorization_code&code&redirect_uri&code_verifier   (form body,
                 client_secret_basic or client_secret_post)  ->  {"id_token", "access_token"}
    GET  /healthz

The key is generated once into ``<state-dir>/oidc/dev-key.pem``; its ``kid`` is the
RFC 7638 thumbprint of the public key. The gateway trusts this issuer only in dev mode.

``/token`` mints a token for any principal and any groups, so it answers only a caller
that shows the *token secret*, ``<state-dir>/oidc/token-secret`` (mode 0600, made once):
whoever can read the dev state folder (the developer) can mint tokens; an agent that can
reach loopback ports but was handed only its own token cannot mint an approver's token
and approve its own request. Without the secret: 401.

The sign-in knows one client, the console (``bqgate``, whose secret the dev stack keeps in
``<state-dir>/console-client-secret``). It is strict where a real provider is: PKCE with
S256 is required, a code is good for one exchange within a minute, bound to its client,
redirect URI and verifier, and redirect URIs must be on loopback. For the same reason as
the token secret, picking an identity takes the *sign-in key*,
``<state-dir>/oidc/sign-in-key`` (the dev stack's banner prints it); a browser that gave
it once keeps an HttpOnly cookie for :data:`SIGN_IN_COOKIE_TTL_S` and is not asked again.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import hmac
import html
import json
import os
import re
import secrets
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bqgate.identity import is_loopback_host
from bqgate.settings import DEV_AUDIENCE, DEV_CONSOLE_CLIENT_ID, DEV_CONSOLE_SECRET_FILE

KEY_FILE = "dev-key.pem"
SECRET_FILE = "token-secret"
OIDC_SUBDIR = "oidc"
DEFAULT_AUDIENCE = DEV_AUDIENCE
MAX_TTL_SECONDS = 12 * 3600
JWKS_MAX_AGE = 300
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_MAX_BODY = 64 * 1024
_TTL_RE = re.compile(r"^\s*(\d+)\s*([smh]?)\s*$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}

#: The one OAuth client of the sign-in: the approver console (its id and secret file).
CONSOLE_CLIENT_ID = DEV_CONSOLE_CLIENT_ID
CONSOLE_SECRET_FILE = DEV_CONSOLE_SECRET_FILE
#: Who the sign-in page offers (principal, what they are in the demo policy).
SIGN_IN_IDENTITIES: tuple[tuple[str, str], ...] = (
    ("alice@example.com", "approver (data-approvers)"),
    ("bob@example.com", "approver (data-approvers)"),
    ("agent@demo-project.iam.gserviceaccount.com", "the demo agent (ai-coding-agents)"),
)
#: The sign-in key file (in the oidc folder), and the cookie a browser keeps once it gave it.
SIGN_IN_KEY_FILE = "sign-in-key"
SIGN_IN_COOKIE = "bqgate_dev_sign_in"
SIGN_IN_COOKIE_TTL_S = 12 * 3600
#: How long a sign-in page and an authorization code stay usable.
AUTH_REQUEST_TTL_S = 600
CODE_TTL_S = 60
#: Lifetime of the ID token a code is exchanged for.
SIGN_IN_TOKEN_TTL_S = 3600
#: Most sign-ins in flight (pages shown, codes not yet exchanged).
MAX_PENDING = 1000
_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")


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
    return _load_or_create_hex(secret_path(key_dir))


def load_or_create_sign_in_key(key_dir: Path) -> str:
    """The sign-in page's key (32 random bytes, hex, mode 0600), made on first use."""
    return _load_or_create_hex(Path(key_dir) / SIGN_IN_KEY_FILE)


def _load_or_create_hex(path: Path) -> str:
    """A random hex secret in ``path`` (mode 0600), made once; safe against races."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(32) + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text(encoding="ascii").strip()


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
    ``extra_claims`` (custom claims such as ``env: production``, or the sign-in's
    ``nonce``; registered names refused).

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


def is_loopback_redirect(uri: str) -> bool:
    """Whether ``uri`` may receive this issuer's codes: http(s) on loopback, no fragment.

    >>> is_loopback_redirect("http://127.0.0.1:8181/console/auth/callback")
    True
    >>> is_loopback_redirect("https://evil.example/cb"), is_loopback_redirect("http://127.0.0.1/#x")
    (False, False)
    """
    try:
        parts = urllib.parse.urlsplit(uri)
        host = parts.hostname or ""
        _ = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or parts.fragment or parts.username:
        return False
    return is_loopback_host(host)


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE ``verifier`` (RFC 7636 appendix B).

    >>> pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
    'E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM'
    """
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class AuthRequest:
    """A validated authorization request (a sign-in page that was shown)."""

    client_id: str
    redirect_uri: str
    state: str
    nonce: str | None
    code_challenge: str
    expires_at: float


@dataclass(frozen=True)
class Grant:
    """An authorization code's binding: who signed in, for which client and verifier."""

    request: AuthRequest
    principal: str
    expires_at: float


class OAuthFailure(Exception):
    """A token request refused with an RFC 6749 ``error`` code."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


class DevIssuerServer(ThreadingHTTPServer):
    """The dev issuer's HTTP server; ``issuer_url`` is the ``iss`` of its tokens."""

    daemon_threads = True
    request_queue_size = 64  # bursts of token fetches from many agents at once

    def __init__(
        self,
        host: str,
        port: int,
        key_dir: Path,
        issuer_url: str | None,
        client_secret_file: Path | None = None,
    ) -> None:
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"the dev issuer binds to loopback only, not {host!r}")
        self.key_dir = Path(key_dir)
        self.key = load_or_create_key(self.key_dir)
        self.secret = load_or_create_secret(self.key_dir)
        self.sign_in_key = load_or_create_sign_in_key(self.key_dir)
        self.jwks = {"keys": [public_jwk(self.key)]}
        self.client_secret_file = client_secret_file
        self.auth_requests: dict[str, AuthRequest] = {}
        self.grants: dict[str, Grant] = {}
        self.sign_in_lock = threading.Lock()
        super().__init__((host, port), _Handler)
        bound_port = self.server_address[1]
        shown = "127.0.0.1" if host == "localhost" else host
        shown = f"[{shown}]" if ":" in shown else shown
        self.issuer_url = (issuer_url or f"http://{shown}:{bound_port}").rstrip("/")

    def sign_in_cookie_value(self) -> str:
        """What a browser that gave the sign-in key keeps (not the key itself)."""
        return hmac.new(self.sign_in_key.encode(), b"bqgate-dev-sign-in", "sha256").hexdigest()

    def client_secret(self, client_id: str) -> str | None:
        """The secret of a known client (read on each use: the dev stack may write it late)."""
        if client_id != CONSOLE_CLIENT_ID or self.client_secret_file is None:
            return None
        try:
            secret = self.client_secret_file.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return secret or None

    def _purge(self, now: float) -> None:
        for table in (self.auth_requests, self.grants):
            for key in [k for k, v in table.items() if v.expires_at <= now]:
                del table[key]
        if len(self.auth_requests) + len(self.grants) >= MAX_PENDING:
            raise OAuthFailure("temporarily_unavailable", "too many sign-ins in flight", 503)

    def remember_request(self, request: AuthRequest) -> str:
        with self.sign_in_lock:
            self._purge(time.time())
            request_id = secrets.token_urlsafe(24)
            self.auth_requests[request_id] = request
            return request_id

    def grant(self, request_id: str, principal: str) -> tuple[AuthRequest, str]:
        """Turn a shown sign-in page into a one-time code for ``principal``."""
        with self.sign_in_lock:
            now = time.time()
            self._purge(now)
            request = self.auth_requests.pop(request_id, None)
            if request is None:
                raise OAuthFailure("invalid_request", "this sign-in page expired; start again")
            code = secrets.token_urlsafe(32)
            self.grants[code] = Grant(request, principal, now + CODE_TTL_S)
            return request, code

    def redeem(self, code: str) -> Grant:
        """The code's grant, once (a second exchange of the same code fails)."""
        with self.sign_in_lock:
            grant = self.grants.pop(code, None)
        if grant is None or grant.expires_at <= time.time():
            raise OAuthFailure(
                "invalid_grant", "the authorization code is unknown, used or expired"
            )
        return grant


_PAGE_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;"
    "color:#1a1a1a;background:#fff;line-height:1.5}"
    "button{display:block;width:100%;margin:.5rem 0;padding:.75rem;font-size:1rem;"
    "text-align:left;border:2px solid #1d4ed8;border-radius:6px;background:#fff;color:#1a1a1a;"
    "cursor:pointer}button:focus,button:hover{background:#dbeafe;outline:3px solid #1d4ed8}"
    ".who{font-weight:600}.what{color:#374151}.note{color:#374151;font-size:.9rem}"
)


def sign_in_page(request_id: str, client_id: str, redirect_uri: str, *, ask_key: bool) -> str:
    """The page where a developer picks who signs in (one button per identity), with the
    sign-in key field when this browser has not shown the key yet."""
    key_field = (
        '<p><label for="sign_in_key">Dev sign-in key</label><br>'
        '<input id="sign_in_key" name="sign_in_key" type="password" required size="40" '
        'autocomplete="current-password" aria-describedby="key-help"><br>'
        f'<small id="key-help">From the dev stack\'s banner, or the file '
        f"{OIDC_SUBDIR}/{SIGN_IN_KEY_FILE} in the dev state folder. This browser remembers it "
        "for 12 hours.</small></p>"
        if ask_key
        else ""
    )
    buttons = "".join(
        f'<button type="submit" name="principal" value="{html.escape(who)}" '
        f'id="sign-in-{html.escape(who.split("@")[0])}">'
        f'<span class="who">{html.escape(who)}</span><br>'
        f'<span class="what">{html.escape(what)}</span></button>'
        for who, what in SIGN_IN_IDENTITIES
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Sign in - bqgate dev issuer</title><style>{_PAGE_STYLE}</style></head><body>"
        "<main><h1>Sign in</h1>"
        f"<p><b>{html.escape(client_id)}</b> asks who you are. This is the local dev issuer: "
        "pick an identity (no password).</p>"
        '<form method="post" action="/authorize">'
        f'<input type="hidden" name="request_id" value="{html.escape(request_id)}">'
        f"{key_field}"
        f"<fieldset><legend>Sign in as</legend>{buttons}</fieldset></form>"
        f'<p class="note">You will be sent back to {html.escape(redirect_uri)}</p>'
        "</main></body></html>"
    )


def _error_page(message: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign-in error</title>'
        f"<style>{_PAGE_STYLE}</style></head><body><main><h1>Sign-in error</h1>"
        f"<p>{html.escape(message)}</p></main></body></html>"
    )


def _with_query(uri: str, params: Mapping[str, str]) -> str:
    """``uri`` with ``params`` added to its query.

    >>> _with_query("http://127.0.0.1/cb?a=1", {"code": "x y"})
    'http://127.0.0.1/cb?a=1&code=x+y'
    """
    joiner = "&" if urllib.parse.urlsplit(uri).query else "?"
    return uri + joiner + urllib.parse.urlencode(params)


class _Handler(BaseHTTPRequestHandler):
    server: DevIssuerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: request lines would only add noise to the dev stack logs."""

    def _send(
        self,
        status: int,
        body: Mapping[str, Any],
        cache: str = "no-store",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        payload = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", cache)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _send_html(self, status: int, page: str) -> None:
        payload = page.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        self.wfile.write(payload)

    def _redirect(self, location: str, cookie: str | None = None) -> None:
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", location)
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.send_header("Content-Length", "0")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()

    def _body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= _MAX_BODY:
            return None
        return self.rfile.read(length)

    def do_GET(self) -> None:
        url = self.server.issuer_url
        path, _, query = self.path.partition("?")
        if path == "/.well-known/openid-configuration":
            self._send(
                HTTPStatus.OK,
                {
                    "issuer": url,
                    "authorization_endpoint": f"{url}/authorize",
                    "token_endpoint": f"{url}/token",
                    "jwks_uri": f"{url}/jwks",
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "response_types_supported": ["code"],
                    "grant_types_supported": ["authorization_code"],
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": [
                        "client_secret_basic",
                        "client_secret_post",
                    ],
                    "scopes_supported": ["openid", "email", "profile"],
                    "subject_types_supported": ["public"],
                    "claims_supported": [
                        "iss",
                        "aud",
                        "sub",
                        "email",
                        "email_verified",
                        "groups",
                        "exp",
                        "iat",
                        "nonce",
                    ],
                },
                cache=f"public, max-age={JWKS_MAX_AGE}",
            )
        elif path == "/jwks":
            self._send(HTTPStatus.OK, self.server.jwks, cache=f"public, max-age={JWKS_MAX_AGE}")
        elif path == "/healthz":
            self._send(HTTPStatus.OK, {"ok": True, "issuer": url})
        elif path == "/authorize":
            self._authorize_page(urllib.parse.parse_qs(query))
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def _authorize_page(self, query: Mapping[str, list[str]]) -> None:
        """Validate an authorization request; show the picker, or say (or redirect) why not."""

        def one(name: str) -> str:
            values = query.get(name) or [""]
            return values[0] if len(values) == 1 else ""

        client_id, redirect_uri = one("client_id"), one("redirect_uri")
        if self.server.client_secret(client_id) is None:
            self._send_html(HTTPStatus.BAD_REQUEST, _error_page(f"unknown client {client_id!r}"))
            return
        if not is_loopback_redirect(redirect_uri):
            self._send_html(
                HTTPStatus.BAD_REQUEST,
                _error_page("redirect_uri must be an http(s) URL on loopback"),
            )
            return
        # The redirect URI is good: further errors go back to the client, as OAuth says.
        state = one("state")
        problem = None
        if one("response_type") != "code":
            problem = ("unsupported_response_type", "only response_type=code is supported")
        elif "openid" not in one("scope").split():
            problem = ("invalid_scope", "the openid scope is required")
        elif one("code_challenge_method") != "S256" or not one("code_challenge"):
            problem = ("invalid_request", "PKCE with code_challenge_method=S256 is required")
        elif not state or len(state) > 512:
            problem = ("invalid_request", "a state parameter (at most 512 characters) is required")
        elif len(one("nonce")) > 512 or len(one("code_challenge")) > 128:
            problem = ("invalid_request", "nonce or code_challenge is too long")
        if problem is not None:
            params = {"error": problem[0], "error_description": problem[1]}
            if state:
                params["state"] = state[:512]
            self._redirect(_with_query(redirect_uri, params))
            return
        request = AuthRequest(
            client_id=client_id,
            redirect_uri=redirect_uri,
            state=state,
            nonce=one("nonce") or None,
            code_challenge=one("code_challenge"),
            expires_at=time.time() + AUTH_REQUEST_TTL_S,
        )
        try:
            request_id = self.server.remember_request(request)
        except OAuthFailure as exc:
            self._send_html(exc.status, _error_page(exc.description))
            return
        self._send_html(
            HTTPStatus.OK,
            sign_in_page(
                request_id, client_id, redirect_uri, ask_key=not self._signed_in_browser()
            ),
        )

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if path == "/authorize":
            self._authorize_submit()
        elif path == "/token" and ctype == "application/x-www-form-urlencoded":
            self._token_exchange()
        elif path == "/token":
            self._mint()
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def _form(self) -> dict[str, str] | None:
        """A form body as single values; None when absent, too big or a field repeats."""
        body = self._body()
        if body is None:
            return None
        try:
            pairs = urllib.parse.parse_qsl(
                body.decode("utf-8"), keep_blank_values=True, strict_parsing=True
            )
        except (UnicodeDecodeError, ValueError):
            return None
        form = dict(pairs)
        return form if len(form) == len(pairs) else None

    def _signed_in_browser(self) -> bool:
        """Whether this browser showed the sign-in key before (its cookie)."""
        cookies = SimpleCookie()
        with contextlib.suppress(CookieError):
            cookies.load(self.headers.get("Cookie") or "")
        shown = cookies.get(SIGN_IN_COOKIE)
        return shown is not None and hmac.compare_digest(
            shown.value.encode(), self.server.sign_in_cookie_value().encode()
        )

    def _authorize_submit(self) -> None:
        form = self._form()
        principal = (form or {}).get("principal", "")
        if form is None or principal not in {who for who, _ in SIGN_IN_IDENTITIES}:
            self._send_html(HTTPStatus.BAD_REQUEST, _error_page("pick one of the identities"))
            return
        remember = False
        if not self._signed_in_browser():
            key = form.get("sign_in_key", "").strip()
            if not hmac.compare_digest(key.encode(), self.server.sign_in_key.encode()):
                self._send_html(
                    HTTPStatus.UNAUTHORIZED,
                    _error_page(
                        "the dev sign-in key is missing or wrong: it is in the dev state folder "
                        f"({OIDC_SUBDIR}/{SIGN_IN_KEY_FILE}), and the dev stack's banner "
                        "prints it. Go back, enter it and pick again."
                    ),
                )
                return
            remember = True
        try:
            request, code = self.server.grant(form.get("request_id", ""), principal)
        except OAuthFailure as exc:
            self._send_html(exc.status, _error_page(exc.description))
            return
        cookie = None
        if remember:
            cookie = (
                f"{SIGN_IN_COOKIE}={self.server.sign_in_cookie_value()}; Path=/; HttpOnly; "
                f"SameSite=Strict; Max-Age={SIGN_IN_COOKIE_TTL_S}"
            )
        self._redirect(
            _with_query(
                request.redirect_uri,
                {"code": code, "state": request.state, "iss": self.server.issuer_url},
            ),
            cookie=cookie,
        )

    def _client(self, form: Mapping[str, str]) -> str:
        """The authenticated client id (client_secret_basic or client_secret_post)."""
        header = self.headers.get("Authorization") or ""
        if header.lower().startswith("basic "):
            try:
                raw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise OAuthFailure("invalid_client", "malformed client credentials", 401) from None
            user, _, password = raw.partition(":")
            client_id = urllib.parse.unquote_plus(user)
            secret = urllib.parse.unquote_plus(password)
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        expected = self.server.client_secret(client_id)
        if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            raise OAuthFailure("invalid_client", "client authentication failed", 401)
        return client_id

    def _token_exchange(self) -> None:
        form = self._form()
        try:
            if form is None:
                raise OAuthFailure(
                    "invalid_request", "a form body without repeated fields is required"
                )
            client_id = self._client(form)
            if form.get("grant_type") != "authorization_code":
                raise OAuthFailure("unsupported_grant_type", "only authorization_code is supported")
            grant = self.server.redeem(form.get("code", ""))
            request = grant.request
            if request.client_id != client_id or request.redirect_uri != form.get("redirect_uri"):
                raise OAuthFailure("invalid_grant", "the code was issued to another client or URI")
            verifier = form.get("code_verifier", "")
            if not _VERIFIER.match(verifier) or not hmac.compare_digest(
                pkce_challenge(verifier), request.code_challenge
            ):
                raise OAuthFailure("invalid_grant", "the PKCE code_verifier does not match")
            extra = {"nonce": request.nonce} if request.nonce else {}
            id_token = mint_token(
                grant.principal,
                [],
                SIGN_IN_TOKEN_TTL_S,
                client_id,
                issuer_url=self.server.issuer_url,
                key_dir=self.server.key_dir,
                extra_claims=extra,
            )
        except OAuthFailure as exc:
            extra_headers = {"WWW-Authenticate": "Basic"} if exc.status == 401 else {}
            self._send(
                exc.status,
                {"error": exc.error, "error_description": exc.description},
                headers=extra_headers,
            )
            return
        self._send(
            HTTPStatus.OK,
            {
                "access_token": secrets.token_urlsafe(32),  # opaque: nothing accepts it
                "token_type": "Bearer",
                "expires_in": SIGN_IN_TOKEN_TTL_S,
                "id_token": id_token,
                "scope": "openid email",
            },
        )

    def _mint(self) -> None:
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
        body = self._body()
        if body is None:
            self._send(HTTPStatus.BAD_REQUEST, {"error": "a JSON body is required"})
            return
        try:
            request = json.loads(body)
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
    host: str,
    port: int,
    key_dir: Path,
    *,
    issuer_url: str | None = None,
    client_secret_file: Path | None = None,
) -> DevIssuerServer:
    """A bound (not yet serving) dev issuer. ``port`` 0 picks a free port.

    ``client_secret_file`` holds the console client's secret; without it the sign-in
    (``/authorize``) knows no client and refuses every request.
    """
    return DevIssuerServer(host, port, key_dir, issuer_url, client_secret_file)


def serve(
    host: str,
    port: int,
    key_dir: Path,
    *,
    issuer_url: str | None = None,
    client_secret_file: Path | None = None,
) -> DevIssuerServer:
    """Start the dev issuer in a daemon thread; stop it with ``shutdown()`` + ``server_close()``."""
    server = make_server(
        host, port, key_dir, issuer_url=issuer_url, client_secret_file=client_secret_file
    )
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
        args.host,
        args.port,
        args.state_dir / OIDC_SUBDIR,
        issuer_url=args.issuer_url,
        client_secret_file=args.state_dir / CONSOLE_SECRET_FILE,
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
