"""The pure half of identity: bearer parsing, claims -> principal, records."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import pytest
from bqgate.errors import Unauthenticated
from bqgate.identity import (
    GOOGLE_ISSUER,
    MAX_TOKEN_CHARS,
    Principal,
    bearer_token,
    principal_from_claims,
)
from bqgate.policy import Issuer
from bqgate.ports import TokenVerifier

OKTA = Issuer(
    "https://okta.example", ("bqgate",), "https://okta.example/keys", groups_claim="groups"
)
GOOGLE = Issuer(GOOGLE_ISSUER, ("bqgate",), "https://www.googleapis.com/oauth2/v3/certs")
STATIC = {"agent@demo-project.iam.gserviceaccount.com": frozenset({"ai-coding-agents"})}


def policy_groups(principal: str, claimed: Iterable[str] = ()) -> frozenset[str]:
    """A stand-in for ``Policy.groups_for``: static members plus claimed groups."""
    return STATIC.get(principal, frozenset()) | frozenset(claimed)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": "https://okta.example",
        "aud": "bqgate",
        "sub": "00u1",
        "email": "dev@example.com",
        "iat": 1_700_000_000,
        "exp": 1_700_003_600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


# --- bearer_token -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer a.b.c", "a.b.c"),
        ("bearer a.b.c", "a.b.c"),
        ("BEARER   a.b.c   ", "a.b.c"),
    ],
)
def test_bearer_token_extracts_the_token(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing bearer token"),
        ("", "missing bearer token"),
        ("Bearer", "missing bearer token"),
        ("Bearer    ", "missing bearer token"),
        ("Basic dXNlcjpwYXNz", "not a bearer token"),
        ("Token a.b.c", "not a bearer token"),
        ("Bearer a.b c", "malformed"),
        ("Bearer a.b.\x00c", "malformed"),
        ("Bearer a.b.\u00e9", "malformed"),
        ("Bearer " + "a" * (MAX_TOKEN_CHARS + 1), "too long"),
    ],
)
def test_bearer_token_rejects_bad_headers(header: str | None, reason: str) -> None:
    with pytest.raises(Unauthenticated, match=reason) as info:
        bearer_token(header)
    assert info.value.http_status == 401
    assert info.value.reason == "unauthorized"


def test_bearer_token_errors_never_echo_the_value() -> None:
    secret = "s3cr3t.t0k3n.v4lu3 extra"
    with pytest.raises(Unauthenticated) as info:
        bearer_token(f"Bearer {secret}")
    assert "s3cr3t" not in str(info.value)
    assert "s3cr3t" not in str(info.value.to_body())


# --- principal_from_claims -----------------------------------------------------------------


def test_principal_merges_claimed_and_static_groups() -> None:
    principal = principal_from_claims(
        claims(email="agent@demo-project.iam.gserviceaccount.com", groups=["eng", "oncall"]),
        OKTA,
        policy_groups,
    )
    assert principal == Principal(
        email="agent@demo-project.iam.gserviceaccount.com",
        groups=frozenset({"ai-coding-agents", "eng", "oncall"}),
        issuer="https://okta.example",
        subject="00u1",
        expires_at=1_700_003_600,
    )


def test_groups_claim_is_ignored_when_issuer_has_none_configured() -> None:
    principal = principal_from_claims(
        claims(iss=GOOGLE_ISSUER, groups=["admins"]), GOOGLE, policy_groups
    )
    assert principal.groups == frozenset()


def test_groups_claim_may_be_a_single_string() -> None:
    principal = principal_from_claims(claims(groups="eng"), OKTA, policy_groups)
    assert principal.groups == frozenset({"eng"})


@pytest.mark.parametrize("bad", [[1, 2], {"a": 1}, ["ok", ""], 7, ["g"] * 1000])
def test_malformed_groups_claim_is_rejected(bad: object) -> None:
    with pytest.raises(Unauthenticated, match="list of group names"):
        principal_from_claims(claims(groups=bad), OKTA, policy_groups)


def test_email_principal_is_lower_cased() -> None:
    principal = principal_from_claims(claims(email="Dev@Example.COM"), OKTA, policy_groups)
    assert principal.email == "dev@example.com"


def test_custom_principal_claim() -> None:
    cfg = dataclasses.replace(OKTA, principal_claim="preferred_username")
    principal = principal_from_claims(
        claims(preferred_username="svc-etl", email=None), cfg, policy_groups
    )
    assert principal.email == "svc-etl"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"email": None}, "no 'email' claim"),
        ({"email": ""}, "no 'email' claim"),
        ({"email": 42}, "no 'email' claim"),
        ({"email": " padded@example.com"}, "malformed"),
        ({"email": "a\nb@example.com"}, "malformed"),
        ({"email": "x" * 400}, "malformed"),
        ({"sub": None}, "no 'sub' claim"),
        ({"sub": ""}, "no 'sub' claim"),
        ({"exp": None}, "no 'exp' claim"),
        ({"exp": True}, "no 'exp' claim"),
    ],
)
def test_missing_or_malformed_claims_are_rejected(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(Unauthenticated, match=reason):
        principal_from_claims(claims(**overrides), OKTA, policy_groups)


def test_custom_principal_claim_missing_does_not_fall_back_to_email() -> None:
    cfg = dataclasses.replace(OKTA, principal_claim="upn")
    with pytest.raises(Unauthenticated, match="no 'upn' claim"):
        principal_from_claims(claims(), cfg, policy_groups)


@pytest.mark.parametrize("verified", [False, "false", None, 0])
def test_google_requires_email_verified_when_present(verified: object) -> None:
    with pytest.raises(Unauthenticated, match="not verified"):
        principal_from_claims(
            {**claims(iss=GOOGLE_ISSUER), "email_verified": verified}, GOOGLE, policy_groups
        )


@pytest.mark.parametrize("verified", [True, "true"])
def test_google_accepts_verified_email(verified: object) -> None:
    principal = principal_from_claims(
        claims(iss=GOOGLE_ISSUER, email_verified=verified), GOOGLE, policy_groups
    )
    assert principal.issuer == GOOGLE_ISSUER


def test_email_verified_false_is_not_enforced_for_other_issuers() -> None:
    principal = principal_from_claims(claims(email_verified=False), OKTA, policy_groups)
    assert principal.email == "dev@example.com"


# --- Principal ---------------------------------------------------------------------------


def test_principal_record_is_json_ready_and_holds_no_token() -> None:
    principal = principal_from_claims(claims(groups=["b", "a"]), OKTA, policy_groups)
    record = principal.to_record()
    assert record == {
        "email": "dev@example.com",
        "groups": ["a", "b"],
        "issuer": "https://okta.example",
        "subject": "00u1",
        "expires_at": 1_700_003_600,
    }
    assert not any("token" in key for key in record)


def test_principal_is_immutable() -> None:
    principal = Principal("a@example.com")
    with pytest.raises(dataclasses.FrozenInstanceError):
        principal.email = "b@example.com"  # type: ignore[misc]


def test_a_hand_written_fake_satisfies_the_verifier_port() -> None:
    class FakeVerifier:
        def verify(self, token: str) -> Principal:
            if token != "good":
                raise Unauthenticated("token is invalid")
            return Principal("a@example.com", frozenset({"g"}))

    verifier: TokenVerifier = FakeVerifier()
    assert verifier.verify("good").groups == {"g"}
    with pytest.raises(Unauthenticated):
        verifier.verify("bad")
