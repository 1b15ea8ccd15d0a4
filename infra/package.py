"""Build each Cloud Function's deployable bundle, with the layout Terraform uploads.

A bundle is one zip per function folder ``functions/<name>/``::

    main.py, requirements.txt, ...   the function's own files (no tests/)
    bqgate/...                        a copy of shared/bqgate (no bqgate/dev/)
    policy.yaml                       the policy file

Bytecode caches, hidden files and compiled files are never shipped. The rules are
the ones in ``infra/terraform/modules/bundle-files`` (tests/infra/test_bundles.py
checks both agree). Zips are reproducible: sorted entries, fixed timestamps.

Usage::

    python infra/package.py --out build/bundles [--policy policies/default.yaml] [NAME ...]

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR = REPO / "functions"
SHARED_DIR = REPO / "shared" / "bqgate"
DEFAULT_POLICY = REPO / "policies" / "default.yaml"

JUNK = re.compile(r"(^|/)(__pycache__|\.[^/]*)(/|$)|\.py[co]$")
REQUIRED = ("main.py", "requirements.txt")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _tree(root: Path, skip: re.Pattern[str]) -> dict[str, Path]:
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not JUNK.search(rel) and not skip.search(rel):
            files[rel] = path
    return files


def bundle_files(
    function_dir: Path, shared_dir: Path = SHARED_DIR, policy: Path = DEFAULT_POLICY
) -> dict[str, Path]:
    """Map each path inside the bundle to the file it is copied from."""
    files = _tree(function_dir, re.compile(r"^tests/"))
    files.update({f"bqgate/{rel}": p for rel, p in _tree(shared_dir, re.compile(r"^dev/")).items()})
    files["policy.yaml"] = policy
    return files


def build_bundle(
    function_dir: Path,
    out_zip: Path,
    shared_dir: Path = SHARED_DIR,
    policy: Path = DEFAULT_POLICY,
) -> list[str]:
    """Write ``out_zip`` for one function folder; return the names it holds."""
    missing = [f for f in REQUIRED if not (function_dir / f).is_file()]
    if missing:
        raise SystemExit(f"{function_dir}: not a function folder, missing {', '.join(missing)}")
    if not policy.is_file():
        raise SystemExit(f"{policy}: policy file not found")
    files = bundle_files(function_dir, shared_dir, policy)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out_zip, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[name].read_bytes())
    return sorted(files)


def function_names(functions_dir: Path = FUNCTIONS_DIR) -> list[str]:
    """Function folders that hold a main.py."""
    return sorted(p.parent.name for p in functions_dir.glob("*/main.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="functions to build (default: every one)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bundles")
    parser.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
    args = parser.parse_args(argv)
    names = args.names or function_names()
    if not names:
        print(f"no functions/<name>/main.py under {FUNCTIONS_DIR}", file=sys.stderr)
        return 1
    for name in names:
        out = args.out / f"{name}.zip"
        count = len(build_bundle(FUNCTIONS_DIR / name, out, policy=args.policy))
        print(f"{out}: {count} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
