"""``bqgate token``: print a short-lived dev ID token for a principal.

The token comes from the running dev stack's issuer (``oidc_issuer`` in
``<dev-dir>/endpoints.json``), which mints only for a caller showing its token secret;
this command reads the secret from ``<dev-dir>/oidc/token-secret``, so it works for
whoever can read the dev state folder and for nobody else. Only the token goes to
stdout::

    TOKEN=$(bqgate token --principal agent@demo-project.iam.gserviceaccount.com --ttl 15m)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bqgate.dev import issuer


def register(subparsers: Any) -> None:
    """Add the ``token`` subcommand to the ``bqgate`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "token",
        help="print a short-lived dev ID token",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--principal", required=True, help="the email the token speaks for")
    parser.add_argument(
        "--group", action="append", default=[], dest="groups", help="a groups claim (repeatable)"
    )
    parser.add_argument(
        "--claim",
        action="append",
        default=[],
        dest="claims",
        metavar="K=V",
        help="a custom claim, e.g. env=production (repeatable; policy rules can match it)",
    )
    parser.add_argument("--ttl", default="1h", help="lifetime: 90s, 15m, 1h ... (max 12h)")
    parser.add_argument("--audience", default=issuer.DEFAULT_AUDIENCE, help="the aud claim")
    parser.add_argument(
        "--dev-dir", type=Path, default=None, help="dev state folder (default .bqgate-dev)"
    )
    parser.set_defaults(func=run)


def _claims(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f'--claim expects K=V, got "{pair}"')
        out[key.strip()] = value.strip()
    return out


def run(args: argparse.Namespace) -> int:
    """Mint and print the token; exit 2 with one line on stderr if that is impossible."""
    try:
        ttl = issuer.parse_ttl(args.ttl)
        dev_dir = issuer.find_dev_dir(args.dev_dir)
        endpoints = issuer.read_endpoints(dev_dir)
        issuer_url = endpoints.get("oidc_issuer")
        if not issuer_url:
            raise issuer.DevStackNotFound(f"{dev_dir / issuer.ENDPOINTS_FILE} has no oidc_issuer")
        secret = issuer.load_secret(dev_dir / issuer.OIDC_SUBDIR)
        token = issuer.request_token(
            issuer_url,
            args.principal,
            args.groups,
            ttl,
            args.audience,
            secret=secret,
            claims=_claims(args.claims),
        )
    except FileNotFoundError:
        print(
            "bqgate: the dev issuer's token secret is missing; is the dev stack running?",
            file=sys.stderr,
        )
        return 2
    except PermissionError:
        print(
            "bqgate: cannot read the dev issuer's token secret (it belongs to whoever runs "
            "the dev stack)",
            file=sys.stderr,
        )
        return 2
    except (issuer.DevStackNotFound, ValueError) as exc:
        print(f"bqgate: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0
