"""OidcVerifier against real JWKS endpoints served by local HTTP servers in threads."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from bqgate.adapters.oidc import OidcVerifier
from bqgate.dev import issuer as dev_issuer
from bqgate.errors import Unauthenticated, Unavailable
from bqgate.identity import GOOGLE_ISSUER, Principal
from bqgate.policy import Issuer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

NOW = 1_750_000_000.0
AGENT = "agent@demo-project.iam.gserviceaccount.com"


# --- a real JWKS server ------------------------------------------------------------------


@dataclass
class JwksState:
    """What the test JWKS server serves; tests mutate it and read the counters."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    cache_control: str | None = "public, max-age=300"
    delay: float = 0.0
    status: int = 200
    hits: dict[str, int] = field(default_factory=dict)
    issuer_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, path: str) -> int:
        with self.lock:
            return self.hits.get(path, 0)


class JwksServer(ThreadingHTTPServer):
    daemon_threads = True
    state: JwksState


class JwksHandler(BaseHTTPRequestHandler):
    server: JwksServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        state = self.server.state
        with state.lock:
            state.hits[self.path] = state.hits.get(self.path, 0) + 1
        if state.delay:
            time.sleep(state.delay)
        if self.path == "/.well-known/openid-configuration":
            body: dict[str, Any] = {
                "issuer": state.issuer_url,
                "jwks_uri": f"{state.issuer_url}/keys",
            }
        elif self.path == "/keys":
            body = {"keys": list(state.keys)}
        else:
            self.send_error(404)
            return
        payload = json.dumps(body).encode()
        try:
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if state.cache_control:
                self.send_header("Cache-Control", state.cache_control)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client gave up (slow-endpoint test)


@pytest.fixture
def jwks() -> Iterator[JwksState]:
    server = JwksServer(("127.0.0.1", 0), JwksHandler)
    server.state = JwksState(issuer_url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.state
    server.shutdown()
    server.server_close()


# --- keys and tokens ---------------------------------------------------------------------


@dataclass
class SigningKey:
    private: Any
    kid: str
    alg: str

    def jwk(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            jwt.get_algorithm_by_name(self.alg).to_jwk(self.private.public_key())
        )
        return {**data, "kid": self.kid, "use": "sig", "alg": self.alg}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(
            claims, self.private, algorithm=self.alg, headers={"kid": self.kid, **header}
        )


_RSA_CACHE: list[Any] = []


def rsa_key(kid: str, alg: str = "RS256") -> SigningKey:
    # Key generation is slow-ish; a few keys are enough for the whole module.
    if len(_RSA_CACHE) < 4:
        _RSA_CACHE.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    index = sum(map(ord, kid)) % len(_RSA_CACHE)
    return SigningKey(_RSA_CACHE[index], kid, alg)


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {
        "main": SigningKey(
            rsa.generate_private_key(public_exponent=65537, key_size=2048), "k1", "RS256"
        ),
        "rotated": SigningKey(
            rsa.generate_private_key(public_exponent=65537, key_size=2048), "k2", "RS256"
        ),
        "attacker": SigningKey(
            rsa.generate_private_key(public_exponent=65537, key_size=2048), "k1", "RS256"
        ),
        "okta": SigningKey(ec.generate_private_key(ec.SECP256R1()), "okta-ec-1", "ES256"),
    }


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(signature)}"


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def groups_for(principal: str, claimed: Iterable[str] = ()) -> frozenset[str]:
    """Like ``Policy.groups_for`` over policies/default.yaml's static members."""
    static = {AGENT: {"ai-coding-agents"}, "alice@example.com": {"data-approvers"}}
    return frozenset(static.get(principal, set())) | frozenset(claimed)


def claims_for(iss: str, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": iss,
        "aud": "bqgate",
        "sub": "1234567890",
        "email": AGENT,
        "iat": int(NOW) - 10,
        "exp": int(NOW) + 3600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def verifier(jwks: JwksState, keys: dict[str, SigningKey], clock: FakeClock) -> OidcVerifier:
    jwks.keys = [keys["main"].jwk()]
    return OidcVerifier(
        [Issuer(jwks.issuer_url, ("bqgate", "other-aud"), f"{jwks.issuer_url}/keys")],
        clock_skew_seconds=60,
        groups_for=groups_for,
        http_timeout=2.0,
        clock=clock,
    )


# --- acceptance --------------------------------------------------------------------------


def test_valid_token_yields_principal_with_static_groups(
    verifier: OidcVerifier, jwks: JwksState, keys: dict[str, SigningKey]
) -> None:
    principal = verifier.verify(keys["main"].sign(claims_for(jwks.issuer_url)))
    assert principal == Principal(
        email=AGENT,
        groups=frozenset({"ai-coding-agents"}),
        issuer=jwks.issuer_url,
        subject="1234567890",
        expires_at=int(NOW) + 3600,
    )


def test_audience_list_with_one_accepted_value_passes(
    verifier: OidcVerifier, jwks: JwksState, keys: dict[str, SigningKey]
) -> None:
    token = keys["main"].sign(claims_for(jwks.issuer_url, aud=["someone-else", "other-aud"]))
    assert verifier.verify(token).email == AGENT


def test_clock_skew_tolerates_small_drift(
    verifier: OidcVerifier, jwks: JwksState, keys: dict[str, SigningKey]
) -> None:
    token = keys["main"].sign(
        claims_for(jwks.issuer_url, iat=int(NOW) + 30, nbf=int(NOW) + 30, exp=int(NOW) - 30)
    )
    assert verifier.verify(token).email == AGENT


def test_second_issuer_with_ec_key_and_groups_claim(
    jwks: JwksState, keys: dict[str, SigningKey], clock: FakeClock
) -> None:
    okta = JwksServer(("127.0.0.1", 0), JwksHandler)
    okta_url = f"http://127.0.0.1:{okta.server_address[1]}"
    okta.state = JwksState(keys=[keys["okta"].jwk()], issuer_url=okta_url)
    threading.Thread(target=okta.serve_forever, args=(0.05,), daemon=True).start()
    try:
        jwks.keys = [keys["main"].jwk()]
        verifier = OidcVerifier(
            [
                Issuer(jwks.issuer_url, ("bqgate",), f"{jwks.issuer_url}/keys"),
                Issuer(okta_url, ("api://bqgate",), f"{okta_url}/keys", groups_claim="groups"),
            ],
            groups_for=groups_for,
            clock=clock,
        )
        token = keys["okta"].sign(
            claims_for(okta_url, aud="api://bqgate", email="alice@example.com", groups=["eng"])
        )
        principal = verifier.verify(token)
        assert principal.email == "alice@example.com"
        assert principal.groups == {"eng", "data-approvers"}
        assert principal.issuer == okta_url
        # Keys do not cross issuers: Okta's token re-labelled with the first issuer fails.
        forged = keys["okta"].sign(claims_for(jwks.issuer_url, email="alice@example.com"))
        with pytest.raises(Unauthenticated, match="not known"):
            verifier.verify(forged)
        assert verifier.verify(keys["main"].sign(claims_for(jwks.issuer_url))).groups == {
            "ai-coding-agents"
        }
    finally:
        okta.shutdown()
        okta.server_close()


def test_rsa_key_declaring_rs384_is_honoured(jwks: JwksState, clock: FakeClock) -> None:
    key = rsa_key("k384", "RS384")
    jwks.keys = [key.jwk()]
    verifier = OidcVerifier(
        [Issuer(jwks.issuer_url, ("bqgate",), f"{jwks.issuer_url}/keys")], clock=clock
    )
    assert verifier.verify(key.sign(claims_for(jwks.issuer_url))).email == AGENT
    # ... and a token claiming RS256 for that key is refused: the key decides.
    downgraded = SigningKey(key.private, "k384", "RS256").sign(claims_for(jwks.issuer_url))
    with pytest.raises(Unauthenticated, match="algorithm"):
        verifier.verify(downgraded)


def test_discovery_document_is_followed(
    jwks: JwksState, keys: dict[str, SigningKey], clock: FakeClock
) -> None:
    jwks.keys = [keys["main"].jwk()]
    verifier = OidcVerifier(
        [
            Issuer(
                jwks.issuer_url, ("bqgate",), f"{jwks.issuer_url}/.well-known/openid-configuration"
            )
        ],
        clock=clock,
    )
    for _ in range(3):
        assert verifier.verify(keys["main"].sign(claims_for(jwks.issuer_url))).email == AGENT
    assert jwks.count("/.well-known/openid-configuration") == 1
    assert jwks.count("/keys") == 1


def test_google_issuer_requires_verified_email(
    jwks: JwksState, keys: dict[str, SigningKey], clock: FakeClock
) -> None:
    jwks.keys = [keys["main"].jwk()]
    verifier = OidcVerifier(
        [Issuer(GOOGLE_ISSUER, ("bqgate",), f"{jwks.issuer_url}/keys")], clock=clock
    )
    ok = keys["main"].sign(claims_for(GOOGLE_ISSUER, email_verified=True))
    assert verifier.verify(ok).issuer == GOOGLE_ISSUER
    unverified = keys["main"].sign(claims_for(GOOGLE_ISSUER, email_verified=False))
    with pytest.raises(Unauthenticated, match="not verified"):
        verifier.verify(unverified)


# --- every rejection ---------------------------------------------------------------------


def _public_pem(key: SigningKey) -> bytes:
    return key.private.public_key().public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _hs256_with_public_key(key: SigningKey, claims: dict[str, Any]) -> str:
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(_public_pem(key), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def _tampered(key: SigningKey, claims: dict[str, Any]) -> str:
    header, _, signature = key.sign(claims).split(".")
    evil = b64(json.dumps({**claims, "email": "root@example.com"}).encode())
    return f"{header}.{evil}.{signature}"


REJECTIONS: list[tuple[str, str]] = [
    ("alg_none", "algorithm"),
    ("alg_none_no_kid", "algorithm|key id"),
    ("hs256_with_public_key", "algorithm"),
    ("unknown_kid", "not known"),
    ("tampered_payload", "signature"),
    ("attacker_key_same_kid", "signature"),
    ("expired", "expired"),
    ("wrong_audience", "audience"),
    ("no_audience", "'aud'"),
    ("untrusted_issuer", "not trusted"),
    ("no_issuer", "'iss'"),
    ("missing_email", "'email'"),
    ("missing_sub", "'sub'"),
    ("missing_exp", "'exp'"),
    ("missing_iat", "'iat'"),
    ("issued_in_future", "future"),
    ("not_yet_valid", "not yet valid"),
    ("lifetime_too_long", "lifetime"),
    ("string_exp", "number"),
    ("garbage", "malformed"),
    ("two_segments", "malformed"),
    ("bad_base64", "malformed"),
    ("empty", "malformed"),
]


def _make_rejected(case: str, iss: str, keys: dict[str, SigningKey]) -> str:
    main = keys["main"]
    good = claims_for(iss)
    tokens: dict[str, Callable[[], str]] = {
        "alg_none": lambda: raw_token({"alg": "none", "typ": "JWT", "kid": "k1"}, good),
        "alg_none_no_kid": lambda: raw_token({"alg": "none"}, good),
        "hs256_with_public_key": lambda: _hs256_with_public_key(main, good),
        "unknown_kid": lambda: SigningKey(main.private, "nope", "RS256").sign(good),
        "tampered_payload": lambda: _tampered(main, good),
        "attacker_key_same_kid": lambda: keys["attacker"].sign(good),
        "expired": lambda: main.sign(claims_for(iss, iat=int(NOW) - 7200, exp=int(NOW) - 61)),
        "wrong_audience": lambda: main.sign(claims_for(iss, aud="not-bqgate")),
        "no_audience": lambda: main.sign(claims_for(iss, aud=None)),
        "untrusted_issuer": lambda: main.sign(claims_for("https://evil.example")),
        "no_issuer": lambda: main.sign({k: v for k, v in good.items() if k != "iss"}),
        "missing_email": lambda: main.sign(claims_for(iss, email=None)),
        "missing_sub": lambda: main.sign(claims_for(iss, sub=None)),
        "missing_exp": lambda: main.sign(claims_for(iss, exp=None)),
        "missing_iat": lambda: main.sign(claims_for(iss, iat=None)),
        "issued_in_future": lambda: main.sign(claims_for(iss, iat=int(NOW) + 120)),
        "not_yet_valid": lambda: main.sign(claims_for(iss, nbf=int(NOW) + 120)),
        "lifetime_too_long": lambda: main.sign(claims_for(iss, exp=int(NOW) + 90 * 86400)),
        "string_exp": lambda: main.sign({**good, "exp": "tomorrow"}),
        "garbage": lambda: "not a jwt",
        "two_segments": lambda: "abc.def",
        "bad_base64": lambda: "!!!.@@@.###",
        "empty": lambda: "",
    }
    return tokens[case]()


@pytest.mark.parametrize(("case", "reason"), REJECTIONS, ids=[c for c, _ in REJECTIONS])
def test_rejections_are_unauthenticated_with_a_reason(
    case: str,
    reason: str,
    verifier: OidcVerifier,
    jwks: JwksState,
    keys: dict[str, SigningKey],
) -> None:
    token = _make_rejected(case, jwks.issuer_url, keys)
    with pytest.raises(Unauthenticated, match=reason) as info:
        verifier.verify(token)
    error = info.value
    assert error.http_status == 401
    assert error.reason == "unauthorized"
    # The message never echoes the token or any of its segments.
    rendered = json.dumps(error.to_body())
    for segment in token.split("."):
        if len(segment) > 12:
            assert segment not in rendered
    assert error.__cause__ is None


def test_dev_issuer_is_trusted_only_in_dev_mode(tmp_path: Path) -> None:
    server = dev_issuer.serve("127.0.0.1", 0, tmp_path / "oidc")
    try:
        from bqgate.policy import Issuer as Cfg

        dev = Cfg("dev", ("bqgate",), "dev", groups_claim="groups", dev_only=True)
        token = dev_issuer.mint_token(
            AGENT, ["extra"], 600, issuer_url=server.issuer_url, key_dir=tmp_path / "oidc"
        )
        prod = OidcVerifier([dev], groups_for=groups_for, dev_issuer_url=server.issuer_url)
        assert prod.trusted_issuers == ()
        with pytest.raises(Unauthenticated, match="not trusted"):
            prod.verify(token)
        devmode = OidcVerifier(
            [dev], groups_for=groups_for, dev_issuer_url=server.issuer_url, dev_mode=True
        )
        principal = devmode.verify(token)
        assert principal.groups == {"ai-coding-agents", "extra"}
        assert principal.issuer == server.issuer_url
    finally:
        server.shutdown()
        server.server_close()


def test_configuration_errors_are_loud() -> None:
    dev = Issuer("dev", ("bqgate",), "dev", dev_only=True)
    with pytest.raises(ValueError, match="no dev issuer URL"):
        OidcVerifier([dev], dev_mode=True)
    with pytest.raises(ValueError, match="https"):
        OidcVerifier([Issuer("https://i.example", ("a",), "http://i.example/keys")])
    with pytest.raises(ValueError, match="only allowed with dev_only"):
        OidcVerifier([Issuer("dev", ("a",), "dev")])
    with pytest.raises(ValueError, match="no audiences"):
        OidcVerifier([Issuer("https://i.example", (), "https://i.example/keys")])
    twice = Issuer("https://i.example", ("a",), "https://i.example/keys")
    with pytest.raises(ValueError, match="twice"):
        OidcVerifier([twice, twice])


# --- the key cache -----------------------------------------------------------------------


def test_jwks_fetched_once_for_many_verifications_and_again_after_rotation(
    verifier: OidcVerifier, jwks: JwksState, keys: dict[str, SigningKey], clock: FakeClock
) -> None:
    for i in range(50):
        token = keys["main"].sign(claims_for(jwks.issuer_url, sub=f"s{i}"))
        assert verifier.verify(token).subject == f"s{i}"
        clock.now += 1
    assert jwks.count("/keys") == 1
    # The IdP rotates: new kid published, old one kept for in-flight tokens.
    jwks.keys = [keys["rotated"].jwk(), keys["main"].jwk()]
    assert verifier.verify(keys["rotated"].sign(claims_for(jwks.issuer_url))).email == AGENT
    assert jwks.count("/keys") == 2
    for _ in range(10):
        verifier.verify(keys["rotated"].sign(claims_for(jwks.issuer_url)))
        verifier.verify(keys["main"].sign(claims_for(jwks.issuer_url)))
    assert jwks.count("/keys") == 2
    assert verifier.jwks_fetches(jwks.issuer_url) == 2


def test_unknown_kid_refresh_is_rate_limited_to_once_a_minute(
    verifier: OidcVerifier, jwks: JwksState, keys: dict[str, SigningKey], clock: FakeClock
) -> None:
    verifier.verify(keys["main"].sign(claims_for(jwks.issuer_url)))
    assert jwks.count("/keys") == 1

    def bogus(n: int) -> str:
        return SigningKey(keys["main"].private, f"bogus-{n}", "RS256").sign(
            claims_for(jwks.issuer_url)
        )

    for n in range(20):
        with pytest.raises(Unauthenticated, match="not known"):
            verifier.verify(bogus(n))
    assert jwks.count("/keys") == 2  # one refresh for the first unknown kid, then none
    clock.now += 59
    with pytest.raises(Unauthenticated, match="not known"):
        verifier.verify(bogus(99))
    assert jwks.count("/keys") == 2
    clock.now += 2  # a minute since the last unknown-kid refresh
    jwks.keys = [keys["main"].jwk(), keys["rotated"].jwk()]
    assert verifier.verify(keys["rotated"].sign(claims_for(jwks.issuer_url))).email == AGENT
    assert jwks.count("/keys") == 3


def test_cache_control_max_age_is_honoured(
    jwks: JwksState, keys: dict[str, SigningKey], clock: FakeClock
) -> None:
    jwks.keys = [keys["main"].jwk()]
    jwks.cache_control = "public, max-age=120, must-revalidate"
    verifier = OidcVerifier(
        [Issuer(jwks.issuer_url, ("bqgate",), f"{jwks.issuer_url}/keys")], clock=clock
    )
    start = clock.now
    verifier.verify(keys["main"].sign(claims_for(jwks.issuer_url)))
    clock.now = start + 119
    verifier.verify(keys["main"].sign(claims_for(jwks.issuer_url, iat=int(clock.now))))
    assert jwks.count("/keys") == 1
    clock.now = start + 121
    verifier.verify(keys["main"].sign(claims_for(jwks.issuer_url, iat=int(clock.now))))
    assert jwks.count("/keys") == 2


def test_default_max_age_is_five_minutes(
    jwks: JwksState, keys: dict[str, SigningKey], clock: FakeClock
) -> None:
    jwks.keys = [keys["main"].jwk()]
    jwks.cache_control = None
    verifier = OidcVerifier(
        [Issuer(jwks.issuer_url, ("bqgate",), f"{jwks.issuer_url}/keys")], clock=clock
    )
    start = clock.now
    verifier.verify(keys["main"].sign(claims_for(jwks.issuer_url)))
    clock.now = start + 299
    verifier.verify(keys["main"].sign(claims_for(jwks.issuer_url, iat=int(clock.now))))
    assert jwks.count("/keys") == 1
    clock.now = start + 301
    verifier.verify(keys["main"].sign(claims_for(jwks.issuer_url, iat=int(clock.now))))
    assert jwks.count("/keys") == 2


def test_concurrent_cold_cache_fetches_once(
    jwks: JwksState, keys: dict[str, SigningKey], clock: FakeClock
) -> None:
    jwks.keys = [keys["main"].jwk()]
    jwks.delay = 0.2  # widen the race window
    verifier = OidcVerifier(
        [Issuer(jwks.issuer_url, ("bqgate",), f"{jwks.issuer_url}/keys")],
        clock=clock,
        http_timeout=2.0,
    )
    token = keys["main"].sign(claims_for(jwks.issuer_url))
    results: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(verifier.verify(token).email)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert errors == []
    assert results == [AGENT] * 16
    assert jwks.count("/keys") == 1


def test_keys_that_must_not_be_used_are_skipped(
    jwks: JwksState, keys: dict[str, SigningKey], clock: FakeClock
) -> None:
    secret = b64(b"shared-secret-shared-secret-1234")
    jwks.keys = [
        {"kty": "oct", "kid": "hmac", "k": secret, "alg": "HS256"},
        {**keys["main"].jwk(), "kid": "enc", "use": "enc"},
        {**keys["main"].jwk(), "kid": "weird-alg", "alg": "PS999"},
        keys["main"].jwk(),
    ]
    verifier = OidcVerifier(
        [Issuer(jwks.issuer_url, ("bqgate",), f"{jwks.issuer_url}/keys")], clock=clock
    )
    hs = jwt.encode(
        claims_for(jwks.issuer_url),
        base64.urlsafe_b64decode(secret + "=="),
        "HS256",
        headers={"kid": "hmac"},
    )
    with pytest.raises(Unauthenticated, match="not known"):
        verifier.verify(hs)
    for kid in ("enc", "weird-alg"):
        with pytest.raises(Unauthenticated, match="not known"):
            verifier.verify(
                SigningKey(keys["main"].private, kid, "RS256").sign(claims_for(jwks.issuer_url))
            )
    assert verifier.verify(keys["main"].sign(claims_for(jwks.issuer_url))).email == AGENT


# --- failing closed ----------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_dead_jwks_endpoint_fails_closed_quickly(keys: dict[str, SigningKey]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    verifier = OidcVerifier(
        [Issuer(url, ("bqgate",), f"{url}/keys")], http_timeout=1.0, clock=FakeClock()
    )
    started = time.monotonic()
    with pytest.raises(Unavailable, match="identity provider keys unavailable for issuer") as info:
        verifier.verify(keys["main"].sign(claims_for(url)))
    assert time.monotonic() - started < 1.5
    assert info.value.http_status == 503
    assert info.value.reason not in ("backendError", "rateLimitExceeded", "internalError")


def test_slow_jwks_endpoint_fails_closed_within_the_timeout(
    jwks: JwksState, keys: dict[str, SigningKey]
) -> None:
    jwks.keys = [keys["main"].jwk()]
    jwks.delay = 3.0
    clock = FakeClock()
    verifier = OidcVerifier(
        [Issuer(jwks.issuer_url, ("bqgate",), f"{jwks.issuer_url}/keys")],
        http_timeout=0.5,
        clock=clock,
    )
    token = keys["main"].sign(claims_for(jwks.issuer_url))
    started = time.monotonic()
    with pytest.raises(Unavailable):
        verifier.verify(token)
    assert time.monotonic() - started < 1.5
    # Right after a failure, requests fail fast instead of queueing on the dead endpoint.
    started = time.monotonic()
    with pytest.raises(Unavailable):
        verifier.verify(token)
    assert time.monotonic() - started < 0.2
    assert jwks.count("/keys") == 1
    # Once the endpoint recovers (and the back-off has passed) keys load again.
    jwks.delay = 0.0
    clock.now += 10
    assert (
        verifier.verify(keys["main"].sign(claims_for(jwks.issuer_url, iat=int(clock.now)))).email
        == AGENT
    )


@pytest.mark.parametrize(
    ("status", "keys_doc"),
    [(500, None), (200, "not-a-list"), (200, [])],
    ids=["http-500", "keys-not-a-list", "no-usable-keys"],
)
def test_bad_jwks_documents_fail_closed(
    jwks: JwksState, keys: dict[str, SigningKey], status: int, keys_doc: Any
) -> None:
    jwks.status = status
    jwks.keys = keys_doc if keys_doc is not None else [keys["main"].jwk()]
    verifier = OidcVerifier(
        [Issuer(jwks.issuer_url, ("bqgate",), f"{jwks.issuer_url}/keys")],
        clock=FakeClock(),
    )
    with pytest.raises(Unavailable):
        verifier.verify(keys["main"].sign(claims_for(jwks.issuer_url)))


def test_expired_cache_with_dead_endpoint_fails_closed(
    verifier: OidcVerifier, jwks: JwksState, keys: dict[str, SigningKey], clock: FakeClock
) -> None:
    verifier.verify(keys["main"].sign(claims_for(jwks.issuer_url)))
    jwks.status = 503
    clock.now += 301
    with pytest.raises(Unavailable):
        verifier.verify(keys["main"].sign(claims_for(jwks.issuer_url, iat=int(clock.now))))


def test_from_policy_with_the_default_policy(tmp_path: Path) -> None:
    from bqgate.policy import load_policy

    policy = load_policy(Path(__file__).parents[2] / "policies" / "default.yaml")
    cloud = OidcVerifier.from_policy(policy, dev_mode=False, dev_issuer_url=None)
    assert cloud.trusted_issuers == (GOOGLE_ISSUER,)
    server = dev_issuer.serve("127.0.0.1", 0, tmp_path / "oidc")
    try:
        local = OidcVerifier.from_policy(policy, dev_mode=True, dev_issuer_url=server.issuer_url)
        assert local.trusted_issuers == (GOOGLE_ISSUER, server.issuer_url)
        token = dev_issuer.mint_token(
            "Agent@demo-project.iam.gserviceaccount.com",
            ["extra"],
            300,
            issuer_url=server.issuer_url,
            key_dir=tmp_path / "oidc",
        )
        # Static membership from the policy (case-insensitive) plus the claimed group.
        assert local.verify(token).groups == {"ai-coding-agents", "extra"}
        with pytest.raises(Unauthenticated, match="not trusted"):
            cloud.verify(token)
    finally:
        server.shutdown()
        server.server_close()


# --- tokens verified once ------------------------------------------------------------------


def test_a_token_sent_again_is_not_verified_again_but_its_times_are(
    verifier: OidcVerifier,
    jwks: JwksState,
    keys: dict[str, SigningKey],
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[str] = []
    decode = verifier._decode

    def counted(token: str, key: Any, cfg: Issuer) -> dict[str, Any]:
        decoded.append(token)
        return decode(token, key, cfg)

    monkeypatch.setattr(verifier, "_decode", counted)
    token = keys["main"].sign(claims_for(jwks.issuer_url, exp=int(NOW) + 120))
    first = verifier.verify(token)
    assert [verifier.verify(token) for _ in range(5)] == [first] * 5
    assert len(decoded) == 1  # one signature check for six requests
    clock.now += 120 + 61  # past exp and the skew: the remembered token expires too
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(token)
    other = keys["main"].sign(claims_for(jwks.issuer_url, sub="other"))
    assert verifier.verify(other).subject == "other" and len(decoded) == 2


def test_a_remembered_token_is_verified_again_once_its_key_is_withdrawn(
    verifier: OidcVerifier, jwks: JwksState, keys: dict[str, SigningKey], clock: FakeClock
) -> None:
    token = keys["main"].sign(claims_for(jwks.issuer_url))
    assert verifier.verify(token).email == AGENT
    # The IdP withdraws k1 (compromised) and publishes k2; the key cache expires and is
    # fetched again: the token signed with k1 no longer passes, remembered or not.
    jwks.keys = [keys["rotated"].jwk()]
    clock.now += 301
    verifier.verify(keys["rotated"].sign(claims_for(jwks.issuer_url, iat=int(clock.now) - 5)))
    with pytest.raises(Unauthenticated, match="not known"):
        verifier.verify(token)


def test_a_forged_token_is_not_taken_for_a_remembered_one(
    verifier: OidcVerifier, jwks: JwksState, keys: dict[str, SigningKey]
) -> None:
    token = keys["main"].sign(claims_for(jwks.issuer_url))
    verifier.verify(token)
    forged = keys["attacker"].sign(claims_for(jwks.issuer_url))  # same kid, other key
    with pytest.raises(Unauthenticated, match="signature"):
        verifier.verify(forged)
