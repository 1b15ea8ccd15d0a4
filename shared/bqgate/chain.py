"""The keyed MAC that chains a session's events, and the key it is computed with.

Each event's ``mac`` is HMAC-SHA256, under the *chain key*, of the previous event's ``mac``,
a newline and the canonical encoding of the event. Someone who can write Firestore but does
not hold the key (it lives in Secret Manager; only the functions that append and the people
who verify may read it) cannot compute a valid ``mac`` for an edited event, so editing an
event and recomputing every later link no longer passes verification. What the key cannot
show by itself, events removed at the end of a session or a whole session removed, the
checkpoints do (:mod:`bqgate.anchors`).

Pure: stdlib only.

>>> key = ChainKey(b"k" * 32)
>>> key.mac("a") == key.mac("a") != ChainKey(b"j" * 32).mac("a")
True
>>> len(key.key_id), key.key_id == ChainKey(b"k" * 32).key_id
(16, True)
>>> key
ChainKey(key_id='...')
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: ``prev_mac`` of a session's first event.
GENESIS = "0" * 64
#: The algorithm every ``mac`` (events and checkpoints) is computed with.
ALG = "hmac-sha256"
#: Fewest bytes a chain key may have.
MIN_KEY_BYTES = 32
#: Name of the chain key file in the dev state folder.
DEV_KEY_FILE = "audit-chain.key"

__all__ = [
    "ALG",
    "DEV_KEY_FILE",
    "GENESIS",
    "MIN_KEY_BYTES",
    "ChainKey",
    "ChainKeyError",
    "Keyring",
    "load_or_create_dev_key",
]


class ChainKeyError(ValueError):
    """The chain key is missing or too short (the message never holds key material)."""


@dataclass(frozen=True)
class ChainKey:
    """A chain key. ``key_id`` names it in every event it seals (rotation keeps old ids
    verifiable) and reveals nothing of it; ``repr`` never shows the secret."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise ChainKeyError(f"the audit chain key must have at least {MIN_KEY_BYTES} bytes")

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"bqgate-chain-key-id\n" + self.secret).hexdigest()[:16]

    def __repr__(self) -> str:
        return "ChainKey(key_id='...')" if self.secret else "ChainKey()"

    def mac(self, text: str) -> str:
        """HMAC-SHA256 (hex) of ``text`` (UTF-8) under this key."""
        return hmac.new(self.secret, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def derive(self, purpose: str) -> ChainKey:
        """A separate key for another purpose (checkpoints), so a MAC made for one kind of
        record never verifies as another.

        >>> k = ChainKey(b"k" * 32)
        >>> k.derive("checkpoint").mac("x") != k.mac("x")
        True
        """
        return ChainKey(hmac.new(self.secret, purpose.encode("utf-8"), hashlib.sha256).digest())

    @classmethod
    def from_text(cls, text: str) -> ChainKey:
        """The key from its stored text (a Secret Manager value or the dev key file): hex
        of at least 32 bytes, or any text of at least 32 characters.

        >>> ChainKey.from_text("ab" * 32).secret == bytes.fromhex("ab" * 32)
        True
        >>> ChainKey.from_text("short")
        Traceback (most recent call last):
        ...
        bqgate.chain.ChainKeyError: the audit chain key must have at least 32 bytes
        """
        text = text.strip()
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = b""
        return cls(raw if len(raw) >= MIN_KEY_BYTES else text.encode("utf-8"))


class Keyring:
    """The keys a verifier accepts (the current one first), found by ``key_id``.

    >>> a, b = ChainKey(b"a" * 32), ChainKey(b"b" * 32)
    >>> ring = Keyring([a, b])
    >>> ring.get(b.key_id) is b, ring.get("nope"), ring.current is a
    (True, None, True)
    """

    def __init__(self, keys: Iterable[ChainKey]) -> None:
        self._keys = list(keys)
        if not self._keys:
            raise ChainKeyError("no audit chain key")
        self._by_id = {k.key_id: k for k in self._keys}

    @property
    def current(self) -> ChainKey:
        return self._keys[0]

    def get(self, key_id: str) -> ChainKey | None:
        return self._by_id.get(key_id)

    def __iter__(self) -> Iterator[ChainKey]:
        return iter(self._keys)


def load_or_create_dev_key(state_dir: Path) -> ChainKey:
    """The dev stack's chain key (``<state>/audit-chain.key``, mode 0600), created once."""
    path = Path(state_dir) / DEV_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{DEV_KEY_FILE}.{secrets.token_hex(6)}")
        tmp.write_text(secrets.token_hex(32) + "\n")
        tmp.chmod(0o600)
        try:
            path.hardlink_to(tmp)  # atomic create-if-absent
        except FileExistsError:
            pass  # a concurrent first start won: keep its key
        finally:
            tmp.unlink(missing_ok=True)
    return ChainKey.from_text(path.read_text())
