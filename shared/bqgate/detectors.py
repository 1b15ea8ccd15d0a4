"""Content detectors: the second line of defence after lineage-based masking.

Every STRING cell that lineage left unmasked is scanned for values that look
sensitive whatever column they came from: e-mail addresses, payment card
numbers (Luhn-checked), US social security numbers, IBANs (mod-97 checked) and
phone numbers. Matches are replaced by ``[REDACTED:<kind>]``.

The scan is built to be cheap on the common case: a cell with no ``@`` and no
digit returns after two C-level checks, and digit detectors only run when the
cell has enough digits to hold one. Every pattern is anchored at a run boundary
and uses possessive quantifiers, so there is no catastrophic backtracking.

>>> redact("mail bob@example.com or call (415) 555-0123")
('mail [REDACTED:email] or call [REDACTED:phone]', ['email', 'phone'])
>>> scan("order 4111 1111 1111 1112 shipped")  # fails Luhn: a random id, not a card
[]
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["KINDS", "Hit", "iban_ok", "luhn_ok", "may_contain", "redact", "scan"]

KINDS = ("email", "card", "ssn", "iban", "phone")

#: What the ``email`` mask writes in place of a local part: ``XXXXX@domain`` is not a leak.
MASKED_EMAIL_PREFIX = "XXXXX@"

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]++@(?:[A-Za-z0-9-]++\.)+[A-Za-z]{2,63}(?![A-Za-z0-9-])"
)
# 13-19 digits, single spaces or dashes between them.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,30}(?![\d])")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}+(?![A-Za-z0-9])")
_PHONE = re.compile(
    r"(?<![\w+])\+[1-9](?:[ -]?\d){7,14}(?![\d])"
    r"|(?<![\w(])(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[-.])[2-9]\d{2}[-.]\d{4}(?![\d-])"
)
_ANY_DIGIT = re.compile(r"\d")
_EIGHT_DIGITS = re.compile(r"(?:\D*+\d){8}")
_TWO_DIGITS = re.compile(r"(?:\D*+\d){2}")


@dataclass(frozen=True, order=True)
class Hit:
    """One detected value: ``text[start:end]`` looks like a ``kind``."""

    start: int
    end: int
    kind: str


def luhn_ok(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum.

    >>> luhn_ok("4111111111111111"), luhn_ok("4111111111111112")
    (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """Whether an IBAN (spaces allowed) passes the ISO 13616 mod-97 check.

    >>> iban_ok("GB82 WEST 1234 5698 7654 32"), iban_ok("GB82 WEST 1234 5698 7654 33")
    (True, False)
    """
    compact = iban.replace(" ", "")
    if not 15 <= len(compact) <= 34 or not compact.isalnum() or not compact.isascii():
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def may_contain(text: str) -> bool:
    """The cheap pre-check: could ``text`` hold anything a detector finds?

    >>> may_contain("shipped"), may_contain("a@b.io"), may_contain("room 12")
    (False, True, True)
    """
    return "@" in text or _ANY_DIGIT.search(text) is not None


def _card_hits(text: str) -> list[Hit]:
    hits: list[Hit] = []
    for m in _CARD.finditer(text):
        # Try the run, then runs of whole separator-delimited groups inside it.
        groups = [(g.start(), g.end()) for g in re.finditer(r"\d+", m.group())]
        found = False
        for i in range(len(groups)):
            for j in range(len(groups), i, -1):
                start, end = groups[i][0], groups[j - 1][1]
                digits = "".join(ch for ch in m.group()[start:end] if ch.isdigit())
                if 13 <= len(digits) <= 19 and luhn_ok(digits):
                    hits.append(Hit(m.start() + start, m.start() + end, "card"))
                    found = True
                    break
            if found:
                break
    return hits


def _iban_hits(text: str) -> list[Hit]:
    hits: list[Hit] = []
    for m in _IBAN.finditer(text):
        candidate = m.group()
        while len(candidate.replace(" ", "")) >= 15:
            if iban_ok(candidate):
                hits.append(Hit(m.start(), m.start() + len(candidate), "iban"))
                break
            cut = candidate.rfind(" ")
            if cut < 0:
                break
            candidate = candidate[:cut]
    return hits


def scan(text: str) -> list[Hit]:
    """Every sensitive-looking value in ``text``, non-overlapping, in order.

    >>> [h.kind for h in scan("ssn 123-45-6789, iban DE89 3704 0044 0532 0130 00")]
    ['ssn', 'iban']
    >>> scan("ssn 666-45-6789 is not valid")
    []
    """
    has_at = "@" in text
    if not has_at and _ANY_DIGIT.search(text) is None:
        return []
    found: list[Hit] = []
    if has_at:
        found.extend(
            Hit(m.start(), m.end(), "email")
            for m in _EMAIL.finditer(text)
            if not m.group(0).startswith(MASKED_EMAIL_PREFIX)  # the email mask's own output
        )
    if _TWO_DIGITS.match(text):
        found.extend(_iban_hits(text))
        if _EIGHT_DIGITS.match(text):
            found.extend(_card_hits(text))
            found.extend(Hit(m.start(), m.end(), "ssn") for m in _SSN.finditer(text))
            found.extend(Hit(m.start(), m.end(), "phone") for m in _PHONE.finditer(text))
    if len(found) < 2:
        return found
    # Keep the earliest, then longest, of overlapping hits.
    found.sort(key=lambda h: (h.start, -h.end))
    result: list[Hit] = []
    for hit in found:
        if not result or hit.start >= result[-1].end:
            result.append(hit)
    return result


def redact(text: str) -> tuple[str, list[str]]:
    """``text`` with every hit replaced by ``[REDACTED:<kind>]``, and the kinds found.

    >>> redact("no secrets here")
    ('no secrets here', [])
    >>> redact("card 4111-1111-1111-1111")
    ('card [REDACTED:card]', ['card'])
    >>> redact("masked XXXXX@example.com, raw ann@example.com")
    ('masked XXXXX@example.com, raw [REDACTED:email]', ['email'])
    """
    hits = scan(text)
    if not hits:
        return text, []
    parts: list[str] = []
    pos = 0
    for hit in hits:
        parts.append(text[pos : hit.start])
        parts.append(f"[REDACTED:{hit.kind}]")
        pos = hit.end
    parts.append(text[pos:])
    return "".join(parts), [h.kind for h in hits]
