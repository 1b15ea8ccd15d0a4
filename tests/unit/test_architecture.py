"""The pure core imports no google.*, slack_sdk or flask: only bqgate.adapters may."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "shared" / "bqgate"
FORBIDDEN = ("google", "slack_sdk", "flask", "functions_framework", "cloudevents")
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "adapters" not in p.relative_to(PACKAGE).parts)


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_check_sees_adapter_imports() -> None:
    # The same check on an adapter finds its google import (it can fail).
    assert "google" in imported_roots(PACKAGE / "adapters" / "firestore_store.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_module_imports_no_cloud_sdk(path: Path) -> None:
    assert not imported_roots(path) & set(FORBIDDEN), (
        f"{path} imports a cloud SDK outside adapters/"
    )
