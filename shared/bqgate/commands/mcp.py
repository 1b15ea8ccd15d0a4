"""``bqgate mcp``: a stdio MCP server for agents that only launch local MCP servers.

It forwards every request to the gateway's MCP endpoint (Streamable HTTP) with a fresh
ID token, refreshed before it expires, and prints nothing but MCP on stdout. Locally (a
dev stack is running) the endpoint is ``mcp`` in ``.bqgate-dev/endpoints.json`` and the
token is minted by the dev issuer for ``--principal`` (default the demo agent); with
``--url`` outside dev it is a Google ID token for ``--audience`` from Application Default
Credentials. In an agent's MCP configuration::

    {"mcpServers": {"bigquery": {"command": "bqgate", "args": ["mcp"]}}}
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bqgate.dev import issuer


def register(subparsers: Any) -> None:
    """Add the ``mcp`` subcommand to the ``bqgate`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "mcp",
        help="run a stdio MCP server that forwards to the gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url", default=None, help="the gateway's MCP endpoint (default: the dev stack's)"
    )
    parser.add_argument("--principal", default=None, help="dev only: whom the token is for")
    parser.add_argument("--audience", default=issuer.DEFAULT_AUDIENCE, help="the token's aud")
    parser.add_argument("--dev-dir", type=Path, default=None, help="dev state folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until the agent closes stdin; exit 2 with one line on stderr if impossible."""
    from bqgate.adapters.mcp_stdio import run as serve
    from bqgate.client import gateway_credentials

    try:
        url, credentials = gateway_credentials(
            args.url,
            principal=args.principal,
            audience=args.audience,
            dev_dir=args.dev_dir,
            endpoint="mcp",
        )
    except issuer.DevStackNotFound as exc:
        print(f"bqgate: {exc} (or pass --url)", file=sys.stderr)
        return 2
    except Exception as exc:  # ADC missing or refusing: say so, briefly
        print(
            f"bqgate: no credentials for {args.url}: {type(exc).__name__}: {exc}", file=sys.stderr
        )
        return 2
    print(f"bqgate mcp: forwarding to {url}", file=sys.stderr, flush=True)
    serve(url, credentials)
    return 0
