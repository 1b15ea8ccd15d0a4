"""Content detectors (bqgate.detectors)."""

from __future__ import annotations

import time

import pytest
from bqgate.detectors import iban_ok, luhn_ok, may_contain, redact, scan
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("contact ann.lee+news@mail.example.co.uk today", ["email"]),
        ("card 4111 1111 1111 1111 exp 12/29", ["card"]),
        ("card 4111-1111-1111-1111", ["card"]),
        ("amex 378282246310005", ["card"]),
        ("4111111111111111 1234", ["card"]),
        ("ssn 123-45-6789", ["ssn"]),
        ("iban GB82 WEST 1234 5698 7654 32 EUR", ["iban"]),
        ("iban DE89370400440532013000", ["iban"]),
        ("call +14155550123", ["phone"]),
        ("call +44 20 7946 0958", ["phone"]),
        ("call (415) 555-0123 or 415-555-0199", ["phone", "phone"]),
        ("a@b.io, 123-45-6789 and 5555555555554444", ["email", "ssn", "card"]),
    ],
)
def test_detects(text: str, kinds: list[str]) -> None:
    assert [h.kind for h in scan(text)] == kinds


@pytest.mark.parametrize(
    "text",
    [
        "order 4111 1111 1111 1112 shipped",  # fails Luhn
        "id 7324982374982374",  # random id, fails Luhn
        "ssn 000-12-3456",
        "ssn 666-12-3456",
        "ssn 912-12-3456",
        "ssn 123-00-4567",
        "ssn 123-45-0000",
        "iban GB82 WEST 1234 5698 7654 33",  # fails mod-97
        "on 2024-01-31 at 10:00:00",
        "version 1.2.3, build 20240131",
        "user@localhost",
        "no secrets at all",
        "",
        "price 123.45 qty 7",
        "call 055-123-4567",  # area codes start 2-9
    ],
)
def test_does_not_flag(text: str) -> None:
    assert scan(text) == []


def test_redact_replaces_only_the_matches() -> None:
    text, kinds = redact("From bob@example.com: SSN 123-45-6789.")
    assert text == "From [REDACTED:email]: SSN [REDACTED:ssn]."
    assert kinds == ["email", "ssn"]


def test_checksums() -> None:
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")
    assert iban_ok("NL91ABNA0417164300") and not iban_ok("NL91ABNA0417164301")
    assert not iban_ok("NL91-ABNA")


def test_precheck() -> None:
    assert not may_contain("plain words only")
    assert may_contain("x@y") and may_contain("a1")


@pytest.mark.parametrize(
    "text",
    [
        "a" * 50_000 + "@",
        "a." * 25_000 + "@" + "b." * 25_000,
        "1 " * 50_000,
        "1-" * 50_000,
        "A1 " * 30_000,
        ("x@" + "a-" * 1000) * 20,
        "(" * 20_000 + "555) 123-" * 2000,
    ],
)
def test_no_catastrophic_backtracking(text: str) -> None:
    start = time.perf_counter()
    scan(text)
    # A guard against catastrophic backtracking (minutes), not a performance target: the
    # bound is loose so a busy machine cannot fail it.
    assert time.perf_counter() - start < 20.0


@settings(max_examples=500, deadline=None)
@given(
    st.text(
        alphabet=st.characters(codec="utf-8") | st.sampled_from(list("0123456789 -@.+()")),
        max_size=200,
    )
)
def test_never_raises_and_redaction_is_stable(text: str) -> None:
    hits = scan(text)
    assert all(0 <= h.start < h.end <= len(text) for h in hits)
    redacted, kinds = redact(text)
    assert len(kinds) == len(hits)
    if not hits:
        assert redacted == text
