"""The ``bqgate`` command.

Each subcommand lives in ``bqgate.commands.<name>`` and exposes
``register(subparsers) -> None``; the parser it adds sets ``func`` to a callable
taking the parsed args and returning the exit code. Exit 2 on a usage or policy error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from bqgate.errors import BqgateError

# Subcommand modules, in the order `bqgate --help` lists them.
COMMANDS = ("dev", "token", "explain", "approvals", "sessions", "bq")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bqgate", description="bqgate: a gateway between AI coding agents and BigQuery."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"bqgate.commands.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except BqgateError as exc:
        print(f"bqgate: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
