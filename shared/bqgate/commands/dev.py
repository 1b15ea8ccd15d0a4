"""``bqgate dev``: run the whole gateway locally (what ``nox -s dev`` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bqgate.errors import BqgateError


def _port(text: str) -> tuple[str, int]:
    from bqgate.dev.stack import DEFAULT_PORTS

    name, sep, value = text.partition("=")
    if not sep or name not in DEFAULT_PORTS or not value.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected NAME=PORT with NAME one of {', '.join(DEFAULT_PORTS)}; got {text!r}"
        )
    return name, int(value)


def register(sub: Any) -> None:
    p = sub.add_parser("dev", help="run the whole gateway locally on emulators (Ctrl-C stops it)")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".bqgate-dev"),
        help="folder for state, logs and endpoints.json (default .bqgate-dev)",
    )
    p.add_argument(
        "--port",
        type=_port,
        action="append",
        default=[],
        metavar="NAME=PORT",
        help="override one port, e.g. --port gateway=9180 (repeatable)",
    )
    p.add_argument(
        "--policy", type=Path, default=None, help="policy file (default policies/default.yaml)"
    )
    p.add_argument("--reseed", action="store_true", help="reload the demo warehouse")
    p.add_argument(
        "--sweep-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between sweeper calls (outbox reconciler, expiry, orphaned jobs; "
        "Cloud Scheduler calls it every minute in the cloud; default 5)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bqgate.dev.stack import DEFAULT_PORTS, Stack, run_foreground

    ports = dict(DEFAULT_PORTS)
    ports.update(dict(args.port))
    if args.reseed:
        for marker in (args.state_dir / "bigquery").glob("seeded-v*"):
            marker.unlink()
    if args.sweep_interval <= 0:
        raise BqgateError("--sweep-interval must be positive")
    if args.policy is not None and not args.policy.exists():
        raise BqgateError(f"policy file not found: {args.policy}")
    stack = Stack(
        state_dir=args.state_dir,
        ports=ports,
        policy_path=args.policy.resolve() if args.policy else None,
        sweep_interval_s=args.sweep_interval,
    )
    return run_foreground(stack)
