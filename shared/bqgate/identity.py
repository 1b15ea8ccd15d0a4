"""Who is calling: bearer tokens, verified claims and the resulting principal.

The gateway trusts nothing static: every request carries a short-lived OIDC ID token
that a :class:`TokenVerifier` (``bqgate.adapters.oidc.OidcVerifier``) checks. This
module is the pure half: it parses the ``Authorization`` header and turns verified
claims into a :class:`Principal` with its groups (token claim + policy mapping).

>>> claims = {"iss": "https://idp.example", "sub": "42", "email": "a@example.com",
...           "exp": 1700000000, "groups": ["eng"]}
>>> cfg = Issuer("https://idp.example", ("bqgate",), "https://idp.example/jwks",
...              groups_claim="groups")
>>> p = principal_from_claims(claims, cfg, lambda who, claimed: frozenset(claimed))
>>> p.email, sorted(p.groups), p.subject
('a@example.com', ['eng'], '42')
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bqgate.errors import Unauthenticated
from bqgate.policy import Issuer

GOOGLE_ISSUER = "https://accounts.google.com"
"""Google's ID-token issuer; its tokens must also carry ``email_verified: true``."""

DEV_ISSUER = "dev"
"""Placeholder in the policy for the local dev issuer (real URL known only at runtime)."""

MAX_TOKEN_CHARS = 16 * 1024
"""Longer bearer values are rejected before any parsing."""

MAX_PRINCIPAL_CHARS = 320
MAX_GROUPS = 256

GroupsFor = Callable[[str, Iterable[str]], frozenset[str]]
"""``(principal, claimed_groups) -> groups``: usually ``Policy.groups_for``."""


@dataclass(frozen=True)
class Principal:
    """A verified caller.

    Attributes:
        email: The principal id (the issuer's principal claim, usually ``email``).
        groups: Groups from the token claim and the policy's static mapping.
        issuer: The token's ``iss``.
        subject: The token's ``sub``.
        expires_at: The token's ``exp`` (epoch seconds).
        claims: The token's custom scalar claims (``env: production`` ...), which policy
            rules may match with ``when: {claims: ...}``; registered claims are left out.
    """

    email: str
    groups: frozenset[str] = field(default_factory=frozenset)
    issuer: str = ""
    subject: str = ""
    expires_at: int = 0
    claims: Mapping[str, str | int | float | bool] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready record for jobs and sessions (never holds the token).

        >>> Principal("a@x.io", frozenset({"b", "a"}), "https://i", "s1", 9).to_record()
        {'email': 'a@x.io', 'groups': ['a', 'b'], 'issuer': 'https://i', 'subject': 's1', \
'expires_at': 9}
        """
        return {
            "email": self.email,
            "groups": sorted(self.groups),
            "issuer": self.issuer,
            "subject": self.subject,
            "expires_at": self.expires_at,
        }


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a URL's hostname) is this machine: ``localhost`` or a loopback IP.

    >>> is_loopback_host("127.0.0.1"), is_loopback_host("::1"), is_loopback_host("gw.example")
    (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback(url: str) -> bool:
    """Whether ``url`` points at this machine (the dev stack).

    >>> is_loopback("http://localhost:8180/x"), is_loopback("https://gw.example")
    (True, False)
    """
    return is_loopback_host(urlsplit(url).hostname or "")


def bearer_token(authorization_header: str | None) -> str:
    """The token from an ``Authorization: Bearer <token>`` header.

    Raises:
        Unauthenticated: header missing, not a bearer scheme, empty or malformed.

    >>> bearer_token("Bearer abc.def.ghi")
    'abc.def.ghi'
    >>> bearer_token("bearer   abc.def.ghi  ")
    'abc.def.ghi'
    >>> bearer_token(None)
    Traceback (most recent call last):
    bqgate.errors.Unauthenticated: missing bearer token
    >>> bearer_token("Basic dXNlcjpwYXNz")
    Traceback (most recent call last):
    bqgate.errors.Unauthenticated: authorization header is not a bearer token
    """
    if authorization_header is None or not authorization_header.strip():
        raise Unauthenticated("missing bearer token")
    scheme, _, rest = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated("authorization header is not a bearer token")
    token = rest.strip()
    if not token:
        raise Unauthenticated("missing bearer token")
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthenticated("bearer token is too long")
    if not token.isascii() or any(c.isspace() or not c.isprintable() for c in token):
        raise Unauthenticated("bearer token is malformed")
    return token


def safe_repr(value: object, limit: int = 80) -> str:
    """A short printable rendering of an untrusted value, for error messages.

    >>> safe_repr("https://evil.example")
    "'https://evil.example'"
    >>> safe_repr("x" * 200, limit=10)
    "'xxxxxxxxxx'..."
    """
    if isinstance(value, str):
        text = "".join(c if c.isprintable() else "?" for c in value[:limit])
        return repr(text) + ("..." if len(value) > limit else "")
    return type(value).__name__


def _claimed_groups(claims: Mapping[str, Any], groups_claim: str | None) -> tuple[str, ...]:
    """Groups named by the token's groups claim (absent claim: none).

    >>> _claimed_groups({"g": ["a", "b"]}, "g"), _claimed_groups({"g": "a"}, "g")
    (('a', 'b'), ('a',))
    >>> _claimed_groups({"g": ["a"]}, None)
    ()
    >>> _claimed_groups({"g": [1]}, "g")
    Traceback (most recent call last):
    bqgate.errors.Unauthenticated: token claim 'g' must be a list of group names
    """
    if groups_claim is None or claims.get(groups_claim) is None:
        return ()
    raw = claims[groups_claim]
    if isinstance(raw, str):
        raw = [raw]
    if (
        not isinstance(raw, list)
        or len(raw) > MAX_GROUPS
        or not all(isinstance(g, str) and g for g in raw)
    ):
        raise Unauthenticated(f"token claim {groups_claim!r} must be a list of group names")
    return tuple(raw)


def principal_from_claims(
    claims: Mapping[str, Any], issuer_cfg: Issuer, policy_groups_for: GroupsFor
) -> Principal:
    """Build the :class:`Principal` from already-verified claims.

    The principal claim (``email`` unless configured; emails are lower-cased) and ``sub``
    are required; Google tokens must not say ``email_verified: false``.

    Raises:
        Unauthenticated: a required claim is missing or malformed.

    >>> cfg = Issuer(GOOGLE_ISSUER, ("bqgate",), "https://x/certs")
    >>> none = lambda who, claimed: frozenset()
    >>> claims = {"iss": GOOGLE_ISSUER, "sub": "1", "exp": 5, "email": "a@b.c"}
    >>> principal_from_claims(claims, cfg, none).email
    'a@b.c'
    >>> principal_from_claims({**claims, "email_verified": False}, cfg, none)
    Traceback (most recent call last):
    bqgate.errors.Unauthenticated: token email is not verified
    >>> principal_from_claims({"iss": GOOGLE_ISSUER, "sub": "1", "exp": 5}, cfg, none)
    Traceback (most recent call last):
    bqgate.errors.Unauthenticated: token has no 'email' claim
    """
    claim = issuer_cfg.principal_claim
    who = claims.get(claim)
    if not isinstance(who, str) or not who.strip():
        raise Unauthenticated(f"token has no {claim!r} claim")
    if len(who) > MAX_PRINCIPAL_CHARS or not who.isprintable() or who != who.strip():
        raise Unauthenticated(f"token claim {claim!r} is malformed")
    if claim == "email":
        who = who.lower()  # emails compare case-insensitively everywhere (owners, approvers)
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated("token has no 'sub' claim")
    if issuer_cfg.issuer == GOOGLE_ISSUER and "email_verified" in claims:
        verified = claims["email_verified"]
        if verified is not True and verified != "true":
            raise Unauthenticated("token email is not verified")
    expires_at = claims.get("exp")
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
        raise Unauthenticated("token has no 'exp' claim")
    issuer = claims.get("iss")
    claimed = _claimed_groups(claims, issuer_cfg.groups_claim)
    return Principal(
        email=who,
        groups=frozenset(policy_groups_for(who, claimed)),
        issuer=issuer if isinstance(issuer, str) else issuer_cfg.issuer,
        subject=subject,
        expires_at=int(expires_at),
        claims=custom_claims(claims, {claim, issuer_cfg.groups_claim or ""}),
    )


#: Claims every OIDC token may carry; they are never policy claims.
REGISTERED_CLAIMS = frozenset(
    {
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "nbf",
        "jti",
        "azp",
        "auth_time",
        "nonce",
        "at_hash",
        "c_hash",
        "acr",
        "amr",
        "sid",
        "email",
        "email_verified",
        "hd",
        "name",
        "picture",
        "given_name",
        "family_name",
        "locale",
        "groups",
        "scope",
        "scp",
        "ver",
        "uid",
        "cid",
    }
)
#: Most custom claims kept per principal, and the longest value kept.
MAX_CLAIMS = 32
MAX_CLAIM_CHARS = 256


def custom_claims(
    claims: Mapping[str, Any], also_skip: set[str]
) -> dict[str, str | int | float | bool]:
    """The token's custom scalar claims (at most :data:`MAX_CLAIMS`, short values only).

    >>> custom_claims({"sub": "1", "env": "production", "n": 2, "x": [1], "e": "a@b"}, {"e"})
    {'env': 'production', 'n': 2}
    """
    out: dict[str, str | int | float | bool] = {}
    for name in sorted(claims):
        if name in REGISTERED_CLAIMS or name in also_skip or len(out) >= MAX_CLAIMS:
            continue
        value = claims[name]
        if isinstance(value, bool | int | float) or (
            isinstance(value, str) and len(value) <= MAX_CLAIM_CHARS and value.isprintable()
        ):
            out[name] = value
    return out
