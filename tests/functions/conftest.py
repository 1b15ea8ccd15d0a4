"""Fixtures of the function tests: in-process wiring built from the stack's environment."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bqgate.dev.stack import Stack
from helpers import clear_bootstrap


@pytest.fixture()
def wired(stack: Stack) -> Iterator[Stack]:
    """The stack, with ``bqgate.bootstrap`` wired afresh from its environment (not a stale
    cache of an earlier test), and forgotten afterwards."""
    clear_bootstrap()
    yield stack
    clear_bootstrap()
