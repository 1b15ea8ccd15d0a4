"""OIDC ID-token verification against the trusted issuers' JWKS (PyJWT + requests).

One code path serves every issuer (Google's certs URL also returns a JWKS). The signing
algorithm always comes from the key, never from the token header. Keys are cached per
issuer (``Cache-Control: max-age``, default 5 min, capped at 24 h, floor 1 min); an
unknown ``kid`` triggers at most one refresh per minute per issuer. A slow or dead
JWKS endpoint fails the request closed with :class:`~bqgate.errors.Unavailable`.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests

from bqgate.errors import Unauthenticated, Unavailable
from bqgate.identity import (
    DEV_ISSUER,
    MAX_TOKEN_CHARS,
    GroupsFor,
    Principal,
    is_loopback,
    principal_from_claims,
    safe_repr,
)
from bqgate.policy import Issuer, Policy

DEFAULT_MAX_AGE = 300.0
MAX_MAX_AGE = 24 * 3600.0
MIN_MAX_AGE = 60.0
UNKNOWN_KID_REFRESH_INTERVAL = 60.0
FAILURE_BACKOFF = 5.0
MAX_JWKS_BYTES = 1024 * 1024
DISCOVERY_SUFFIX = "/.well-known/openid-configuration"

# Algorithms a key may declare; a key without ``alg`` gets the first for its type.
_RSA_ALGS = ("RS256", "RS384", "RS512")
_EC_ALGS = {"P-256": "ES256", "P-384": "ES384"}
_MIN_RSA_BITS = 2048


def _claimed_only(principal: str, claimed: Iterable[str]) -> frozenset[str]:
    return frozenset(claimed)


def parse_max_age(cache_control: str | None) -> float:
    """Seconds to cache a JWKS response, from its ``Cache-Control`` header.

    >>> parse_max_age("public, max-age=19800, must-revalidate")
    19800.0
    >>> parse_max_age(None), parse_max_age("no-store"), parse_max_age("max-age=99999999")
    (300.0, 60.0, 86400.0)
    """
    if not cache_control:
        return DEFAULT_MAX_AGE
    seconds: float | None = None
    for part in cache_control.split(","):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-store", "no-cache"):
            return MIN_MAX_AGE
        if name == "max-age":
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                seconds = None
    if seconds is None or not math.isfinite(seconds):
        return DEFAULT_MAX_AGE
    return min(max(seconds, MIN_MAX_AGE), MAX_MAX_AGE)


def _check_url(url: str, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and is_loopback(url):
        return
    raise ValueError(f"{what} must be an https URL (http only on loopback): {url!r}")


@dataclass(frozen=True)
class _Key:
    key: Any
    algorithm: str


def _parse_key(jwk: object) -> tuple[str | None, _Key] | None:
    """A usable signing key from one JWK entry, or None (skipped)."""
    if not isinstance(jwk, dict) or "d" in jwk or jwk.get("use", "sig") != "sig":
        return None
    kty, alg = jwk.get("kty"), jwk.get("alg")
    if kty == "RSA":
        algorithm = alg if alg in _RSA_ALGS else ("RS256" if alg is None else None)
    elif kty == "EC":
        expected = _EC_ALGS.get(str(jwk.get("crv")))
        algorithm = expected if alg in (None, expected) else None
    else:
        algorithm = None
    if algorithm is None:
        return None
    try:
        key = jwt.PyJWK(jwk, algorithm=algorithm).key
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    if kty == "RSA" and getattr(key, "key_size", 0) < _MIN_RSA_BITS:
        return None
    kid = jwk.get("kid")
    return (kid if isinstance(kid, str) else None), _Key(key, algorithm)


@dataclass(frozen=True)
class _KeySet:
    by_kid: Mapping[str, _Key]
    anonymous: tuple[_Key, ...]
    expires_at: float


#: Verified tokens an instance remembers (least recently verified out).
VERIFIED_TOKENS = 4096


@dataclass(frozen=True)
class _Verified:
    """A token verified once: by which key, its claims and its principal."""

    issuer: str
    kid: str | None
    key: _Key
    claims: Mapping[str, Any]
    principal: Principal


@dataclass
class _IssuerKeys:
    """The JWKS cache of one issuer. Reads are lock-free; refreshes hold ``lock``."""

    issuer: str
    jwks_uri: str
    http_timeout: float
    clock: Callable[[], float]
    keyset: _KeySet | None = None
    last_kid_refresh: float = -math.inf
    failed_at: float = -math.inf
    resolved_uri: str | None = None
    fetches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def key_for(self, kid: str | None) -> _Key:
        keyset = self.keyset
        if keyset is None or self.clock() >= keyset.expires_at:
            keyset = self._refresh(force=False)
        found = self._lookup(keyset, kid)
        if found is None and kid is not None:
            keyset = self._refresh(force=True)
            found = self._lookup(keyset, kid)
        if found is None:
            if kid is None:
                raise Unauthenticated("token has no key id ('kid') and the issuer has many keys")
            raise Unauthenticated(
                f"token signing key {safe_repr(kid, 64)} is not known for issuer {self.issuer}"
            )
        return found

    @staticmethod
    def _lookup(keyset: _KeySet, kid: str | None) -> _Key | None:
        if kid is not None:
            return keyset.by_kid.get(kid)
        every = [*keyset.by_kid.values(), *keyset.anonymous]
        return every[0] if len(every) == 1 else None

    def _refresh(self, *, force: bool) -> _KeySet:
        """Fetch the keys if still needed once the lock is held; fail closed."""
        if not self.lock.acquire(timeout=2 * self.http_timeout + 1):
            raise self._unavailable()
        try:
            now = self.clock()
            keyset = self.keyset
            if force and keyset is not None:
                if now - self.last_kid_refresh < UNKNOWN_KID_REFRESH_INTERVAL:
                    return keyset  # rate limit: one unknown-kid refresh per minute
                self.last_kid_refresh = now
            elif keyset is not None and now < keyset.expires_at:
                return keyset  # another thread refreshed while we waited
            if now - self.failed_at < FAILURE_BACKOFF:
                raise self._unavailable()
            try:
                keyset = self._fetch(now)
            except Unavailable:
                self.failed_at = now
                raise
            self.keyset = keyset
            return keyset
        finally:
            self.lock.release()

    def _unavailable(self) -> Unavailable:
        return Unavailable(f"identity provider keys unavailable for issuer {self.issuer}")

    def _fetch(self, now: float) -> _KeySet:
        if self.resolved_uri is None:
            if self.jwks_uri.endswith(DISCOVERY_SUFFIX):
                document, _ = self._get_json(self.jwks_uri)
                uri = document.get("jwks_uri")
                if document.get("issuer") != self.issuer or not isinstance(uri, str):
                    raise self._unavailable()
                try:
                    _check_url(uri, "jwks_uri")
                except ValueError:
                    raise self._unavailable() from None
                self.resolved_uri = uri
            else:
                self.resolved_uri = self.jwks_uri
        document, cache_control = self._get_json(self.resolved_uri)
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise self._unavailable()
        by_kid: dict[str, _Key] = {}
        anonymous: list[_Key] = []
        for entry in entries:
            parsed = _parse_key(entry)
            if parsed is None:
                continue
            kid, key = parsed
            if kid is None:
                anonymous.append(key)
            else:
                by_kid[kid] = key
        if not by_kid and not anonymous:
            raise self._unavailable()
        return _KeySet(by_kid, tuple(anonymous), now + parse_max_age(cache_control))

    def _get_json(self, url: str) -> tuple[dict[str, Any], str | None]:
        """GET a small JSON object within ~``http_timeout``; Unavailable on any failure."""
        deadline = time.monotonic() + self.http_timeout
        self.fetches += 1
        try:
            with requests.get(
                url,
                timeout=(self.http_timeout, self.http_timeout),
                stream=True,
                headers={"Accept": "application/json"},
            ) as response:
                if response.status_code != 200:
                    raise self._unavailable()
                body = bytearray()
                for chunk in response.iter_content(chunk_size=16384):
                    body.extend(chunk)
                    if len(body) > MAX_JWKS_BYTES or time.monotonic() > deadline:
                        raise self._unavailable()
                cache_control = response.headers.get("Cache-Control")
            document = json.loads(bytes(body))
        except (requests.RequestException, ValueError):
            raise self._unavailable() from None
        if not isinstance(document, dict):
            raise self._unavailable()
        return document, cache_control


def resolve_issuers(
    issuers: Iterable[Issuer], *, dev_issuer_url: str | None, dev_mode: bool
) -> tuple[Issuer, ...]:
    """The issuers to trust at runtime: the dev issuer only in dev mode, with its real URL.

    >>> dev = Issuer("dev", ("bqgate",), "dev", groups_claim="groups", dev_only=True)
    >>> google = Issuer("https://accounts.google.com", ("bqgate",),
    ...                         "https://www.googleapis.com/oauth2/v3/certs")
    >>> [i.issuer for i in resolve_issuers([google, dev], dev_issuer_url=None, dev_mode=False)]
    ['https://accounts.google.com']
    >>> [(i.issuer, i.jwks_uri) for i in resolve_issuers(
    ...     [dev], dev_issuer_url="http://127.0.0.1:8095/", dev_mode=True)]
    [('http://127.0.0.1:8095', 'http://127.0.0.1:8095/jwks')]
    """
    resolved: list[Issuer] = []
    for cfg in issuers:
        issuer, jwks_uri = cfg.issuer, cfg.jwks_uri
        if cfg.dev_only:
            if not dev_mode:
                continue
            if issuer == DEV_ISSUER or jwks_uri == DEV_ISSUER:
                if not dev_issuer_url:
                    raise ValueError("dev mode trusts the dev issuer but no dev issuer URL is set")
                base = dev_issuer_url.rstrip("/")
                issuer = base if issuer == DEV_ISSUER else issuer
                jwks_uri = f"{base}/jwks" if jwks_uri == DEV_ISSUER else jwks_uri
        elif DEV_ISSUER in (issuer, jwks_uri):
            raise ValueError("the 'dev' issuer placeholder is only allowed with dev_only: true")
        _check_url(jwks_uri, f"jwks_uri of issuer {issuer}")
        if not cfg.audiences:
            raise ValueError(f"issuer {issuer} has no audiences")
        if any(r.issuer == issuer for r in resolved):
            raise ValueError(f"issuer {issuer} is configured twice")
        resolved.append(
            Issuer(
                issuer=issuer,
                audiences=tuple(cfg.audiences),
                jwks_uri=jwks_uri,
                principal_claim=cfg.principal_claim,
                groups_claim=cfg.groups_claim,
                dev_only=cfg.dev_only,
            )
        )
    return tuple(resolved)


class OidcVerifier:
    """Verifies OIDC ID tokens from the trusted issuers; implements ``TokenVerifier``.

    Args:
        issuers: Trusted issuers (``Policy.identity.issuers``).
        clock_skew_seconds: Leeway for ``exp``, ``iat`` and ``nbf``.
        groups_for: ``(principal, claimed) -> groups`` (``Policy.groups_for``); by default
            the token's claimed groups only.
        dev_issuer_url: The local dev issuer's URL, replacing the ``dev`` placeholder.
        dev_mode: Trust ``dev_only`` issuers (never in the cloud).
        http_timeout: Seconds a JWKS fetch may take before the request fails closed.
        clock: Epoch-seconds clock for token times and the key cache (tests inject one).
        max_lifetime_seconds: Tokens valid for longer (``exp - iat``) are rejected.
    """

    def __init__(
        self,
        issuers: Iterable[Issuer],
        *,
        clock_skew_seconds: int = 60,
        groups_for: GroupsFor | None = None,
        dev_issuer_url: str | None = None,
        dev_mode: bool = False,
        http_timeout: float = 3.0,
        clock: Callable[[], float] = time.time,
        max_lifetime_seconds: int = 24 * 3600,
    ) -> None:
        self._issuers = {
            cfg.issuer: cfg
            for cfg in resolve_issuers(issuers, dev_issuer_url=dev_issuer_url, dev_mode=dev_mode)
        }
        self._skew = clock_skew_seconds
        self._groups_for: GroupsFor = groups_for or _claimed_only
        self._clock = clock
        self._max_lifetime = max_lifetime_seconds
        self._keys = {
            iss: _IssuerKeys(iss, cfg.jwks_uri, http_timeout, clock)
            for iss, cfg in self._issuers.items()
        }
        # Tokens already verified (by digest): a client sends the same token with every
        # request. Times are checked again on each use; an entry holds only while the
        # key that verified it is still the issuer's current one.
        self._verified: OrderedDict[bytes, _Verified] = OrderedDict()
        self._verified_lock = threading.Lock()

    @classmethod
    def from_policy(
        cls,
        policy: Policy,
        *,
        dev_mode: bool,
        dev_issuer_url: str | None,
        http_timeout: float = 3.0,
    ) -> OidcVerifier:
        """The verifier for a loaded ``bqgate.policy.Policy``."""
        return cls(
            policy.identity.issuers,
            clock_skew_seconds=policy.identity.clock_skew_seconds,
            groups_for=policy.groups_for,
            dev_issuer_url=dev_issuer_url,
            dev_mode=dev_mode,
            http_timeout=http_timeout,
        )

    @property
    def trusted_issuers(self) -> tuple[str, ...]:
        """The ``iss`` values this verifier accepts."""
        return tuple(self._issuers)

    def jwks_fetches(self, issuer: str) -> int:
        """How many HTTP fetches the key cache of ``issuer`` has made (for metrics)."""
        return self._keys[issuer].fetches

    def verify(self, token: str) -> Principal:
        """Verify ``token`` and return its principal.

        Raises:
            Unauthenticated: the token is invalid for any reason.
            Unavailable: the issuer's keys cannot be fetched.
        """
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated("malformed token")
        if token.count(".") != 2:
            raise Unauthenticated("malformed token: not a signed JWT")
        digest = hashlib.sha256(token.encode()).digest()
        with self._verified_lock:
            seen = self._verified.get(digest)
        if seen is not None and self._still_current(seen):
            self._check_times(seen.claims)
            return seen.principal
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthenticated("malformed token") from None
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            raise Unauthenticated("token has no 'iss' claim")
        cfg = self._issuers.get(iss)
        if cfg is None:
            raise Unauthenticated(f"token issuer {safe_repr(iss)} is not trusted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("token header 'kid' is malformed")
        key = self._keys[iss].key_for(kid)
        claims = self._decode(token, key, cfg)
        self._check_times(claims)
        principal = principal_from_claims(claims, cfg, self._groups_for)
        with self._verified_lock:
            self._verified[digest] = _Verified(iss, kid, key, claims, principal)
            while len(self._verified) > VERIFIED_TOKENS:
                self._verified.popitem(last=False)
        return principal

    def _still_current(self, seen: _Verified) -> bool:
        """Is the key that verified ``seen`` still the issuer's, in an unexpired key set?"""
        keyset = self._keys[seen.issuer].keyset
        return (
            keyset is not None
            and self._clock() < keyset.expires_at
            and _IssuerKeys._lookup(keyset, seen.kid) is seen.key
        )

    def _decode(self, token: str, key: _Key, cfg: Issuer) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[key.algorithm],
                audience=list(cfg.audiences),
                issuer=cfg.issuer,
                options={
                    "require": ["iss", "aud", "exp", "iat", "sub"],
                    "verify_exp": False,  # checked below with the injected clock
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated("token algorithm does not match the issuer's key") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("token signature is invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token has no {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                f"token audience is not accepted by issuer {cfg.issuer}"
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("token issuer is not trusted") from None
        except jwt.PyJWTError:
            raise Unauthenticated("token is invalid") from None
        return claims

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()

        def number(name: str) -> float | None:
            value = claims.get(name)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise Unauthenticated(f"token claim {name!r} must be a number")
            return float(value)

        exp, iat, nbf = number("exp"), number("iat"), number("nbf")
        if exp is None or iat is None:
            raise Unauthenticated("token has no 'exp' or 'iat' claim")
        if now > exp + self._skew:
            raise Unauthenticated("token has expired")
        if iat > now + self._skew:
            raise Unauthenticated("token was issued in the future")
        if nbf is not None and nbf > now + self._skew:
            raise Unauthenticated("token is not yet valid")
        if exp - iat > self._max_lifetime:
            raise Unauthenticated("token lifetime is too long")
