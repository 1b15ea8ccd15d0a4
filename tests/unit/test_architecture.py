"""The shape of the code, checked: which layer may import which, where the SDKs and the ports
live, and that the README's Layout section names the tree as it is.

Layers, lowest first; a module imports only from its own layer or one below it:

0. **core**: every module of ``bqgate`` not named below (``policy``, ``jobs``, ``errors``,
   ``approvals``, ``audit``, ``masking``, ``ports`` ...) and the packages ``sql/`` (classify,
   lineage, rewrite), ``wire/`` (BigQuery REST shapes) and ``console/`` (the console's view
   models). Pure: stdlib, sqlglot, PyYAML; plain values in and out.
1. **service**: ``service/``, the use cases (gateway, executor, approvals, sweeper, HTTP
   routing) written against the ports of the core.
2. **adapters**: ``adapters/``, one module per outside service (Firestore, Pub/Sub, BigQuery,
   Slack, OIDC, the web frameworks); the only modules that import ``google.*``, ``slack_sdk``,
   ``flask`` or ``functions_framework``.
3. **entry**: what puts the layers together and starts them: ``functions/<name>/main.py``,
   ``commands/`` and ``cli.py`` (the ``bqgate`` command), ``client.py`` (the agent helper),
   ``dev/`` (the local stack) and the composition root ``bootstrap.py``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "shared" / "bqgate"
FORBIDDEN = ("google", "slack_sdk", "flask", "functions_framework", "cloudevents")
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "adapters" not in p.relative_to(PACKAGE).parts)

LAYERS = ("core", "service", "adapters", "entry")
_ENTRY_PACKAGES = ("commands", "dev")
_ENTRY_MODULES = ("cli", "client", "bootstrap")
SOURCES = sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "functions").glob("*/main.py"))


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def module_name(path: Path) -> str:
    """``bqgate.x.y`` for a file of the package; ``functions.<name>.main`` for an entry point."""
    if path.is_relative_to(PACKAGE):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    else:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The layer (an index of :data:`LAYERS`) a module belongs to.

    >>> [LAYERS[layer_of(m)] for m in ("bqgate.sql.classify", "bqgate.service.gateway",
    ...  "bqgate.adapters.slack", "bqgate.dev.stack", "functions.ingress.main")]
    ['core', 'service', 'adapters', 'entry', 'entry']
    """
    parts = module.split(".")
    if parts[0] == "functions":
        return LAYERS.index("entry")
    top = parts[1] if len(parts) > 1 else ""
    if top == "service":
        return LAYERS.index("service")
    if top == "adapters":
        return LAYERS.index("adapters")
    if top in _ENTRY_PACKAGES or top in _ENTRY_MODULES:
        return LAYERS.index("entry")
    return LAYERS.index("core")


def bqgate_imports(module: str, source: str, *, is_package: bool = False) -> set[str]:
    """Every ``bqgate`` module ``source`` imports (type-only and function-local imports too)."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "bqgate"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "bqgate":
                # ``from bqgate import policy`` imports the module bqgate.policy.
                found |= (
                    {f"{target}.{a.name}" for a in node.names} if target == "bqgate" else {target}
                )
    return found


def upward_imports(module: str, source: str, *, is_package: bool = False) -> list[str]:
    """The imports of ``module`` that reach a higher layer than its own."""
    mine = layer_of(module)
    return sorted(
        f"{module} ({LAYERS[mine]}) imports {target} ({LAYERS[layer_of(target)]})"
        for target in bqgate_imports(module, source, is_package=is_package)
        if layer_of(target) > mine
    )


def test_the_layer_check_can_fail() -> None:
    adapter = "from bqgate.dev import issuer\nfrom bqgate.service.http import route\n"
    assert upward_imports("bqgate.adapters.client", adapter) == [
        "bqgate.adapters.client (adapters) imports bqgate.dev (entry)"
    ]
    core = "def f():\n    from bqgate import bootstrap\n"
    assert upward_imports("bqgate.policy", core) == [
        "bqgate.policy (core) imports bqgate.bootstrap (entry)"
    ]
    assert upward_imports("bqgate.sql.classify", "from ..service import gateway\n") == [
        "bqgate.sql.classify (core) imports bqgate.service (service)"
    ]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_layers(path: Path) -> None:
    module = module_name(path)
    assert upward_imports(module, path.read_text(), is_package=path.name == "__init__.py") == []


def test_the_check_sees_adapter_imports() -> None:
    # The same check on an adapter finds its google import (it can fail).
    assert "google" in imported_roots(PACKAGE / "adapters" / "firestore_store.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_module_imports_no_cloud_sdk(path: Path) -> None:
    assert not imported_roots(path) & set(FORBIDDEN), (
        f"{path} imports a cloud SDK outside adapters/"
    )


def protocols_in(source: str) -> list[str]:
    """The classes ``source`` defines as ``typing.Protocol`` subclasses."""
    return [
        node.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ClassDef)
        and any(isinstance(b, ast.Name) and b.id == "Protocol" for b in node.bases)
    ]


def test_every_port_is_in_ports_py() -> None:
    assert protocols_in("class A(Protocol):\n    x: int\n") == ["A"]  # the check can fail
    elsewhere = {
        str(p.relative_to(PACKAGE)): found
        for p in SOURCES
        if p != PACKAGE / "ports.py" and (found := protocols_in(p.read_text()))
    }
    assert elsewhere == {}
    assert "JobStore" in protocols_in((PACKAGE / "ports.py").read_text())


def layout_block() -> str:
    """The code block of the README's "Layout" section."""
    section = (ROOT / "README.md").read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


#: Packages whose every module the layout names (the others are named as packages).
_LISTED_PACKAGES = ("", "adapters", "audit", "service", "sql", "wire")


def test_the_readme_layout_matches_the_tree() -> None:
    block = layout_block()
    names = set(re.findall(r"[\w.]+\.py|[\w]+/", block))
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        package = rel.parts[0] if len(rel.parts) > 1 else ""
        if path.name == "__init__.py" or "__pycache__" in rel.parts:
            continue
        wanted = path.name if package in _LISTED_PACKAGES else f"{package}/"
        if wanted not in names:
            missing.append(str(rel))
    assert missing == [], "modules the README's Layout section does not name"
    known = {p.name for p in ROOT.glob("**/*.py") if ".nox" not in p.parts}
    stale = sorted(n for n in names if n.endswith(".py") and n not in known)
    assert stale == [], "files the README's Layout section names that do not exist"


def applies_runtime(source: str) -> bool:
    """Does a function's module call ``runtime.tune_gc()`` at its top level?"""
    for node in ast.parse(source).body:
        call = node.value if isinstance(node, ast.Expr) else None
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "tune_gc"
            and isinstance(call.func.value, ast.Name)
            and call.func.value.id == "runtime"
        ):
            return True
    return False


def test_the_runtime_check_can_fail() -> None:
    assert applies_runtime("from bqgate import runtime\nruntime.tune_gc()\n")
    assert not applies_runtime("from bqgate import runtime\ndef f():\n    runtime.tune_gc()\n")


@pytest.mark.parametrize(
    "main", sorted((ROOT / "functions").glob("*/main.py")), ids=lambda p: p.parent.name
)
def test_every_function_applies_the_process_settings_when_loaded(main: Path) -> None:
    assert applies_runtime(main.read_text()), f"{main.parent.name} does not call runtime.tune_gc()"
