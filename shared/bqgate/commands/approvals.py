"""``bqgate approvals list``, ``bqgate approve JOB_ID``, ``bqgate deny JOB_ID --reason ...``.

Talk to the approver API of the approvals function as an approver. In dev, the token
is minted from the running dev stack's issuer for ``--principal`` (default
alice@example.com) and the URL is ``approvals`` in ``.bqgate-dev/endpoints.json``;
elsewhere pass ``--url`` and ``--token`` (or set ``BQGATE_APPROVER_TOKEN``)::

    bqgate approvals list                       # newest first, one page (--all: every page)
    bqgate approvals list --cursor C            # the next page
    bqgate approve 3f2a...
    bqgate approve 3f2a... --group              # and the near-identical requests with it
    bqgate deny 3f2a... --reason "reads payroll; ask the data owners"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import requests

from bqgate.dev import issuer

DEFAULT_PRINCIPAL = "alice@example.com"
TIMEOUT_S = 30


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--principal",
        default=DEFAULT_PRINCIPAL,
        help=f"approver to mint a dev token for (default {DEFAULT_PRINCIPAL})",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="an ID token to use instead (default: $BQGATE_APPROVER_TOKEN, else a dev token)",
    )
    parser.add_argument(
        "--url", default=None, help="approvals function URL (default: the dev stack's)"
    )
    parser.add_argument(
        "--dev-dir", type=Path, default=None, help="dev state folder (default .bqgate-dev)"
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")


def register(sub: Any) -> None:
    """Add the ``approvals``, ``approve`` and ``deny`` subcommands."""
    p = sub.add_parser(
        "approvals",
        help="list approval requests you may decide",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inner = p.add_subparsers(dest="approvals_command", metavar="ACTION")
    listing = inner.add_parser("list", help="pending requests you may approve, newest first")
    listing.add_argument("--limit", type=int, default=50, help="requests per page (1-200)")
    listing.add_argument("--cursor", default=None, help="continue after a previous page")
    listing.add_argument("--all", action="store_true", help="every page, not just one")
    _common(listing)
    listing.set_defaults(func=run_list)
    group_help = (
        "also decide the requester's other pending requests of the same statement "
        "(its group, shown by `bqgate approvals list`)"
    )
    approve = sub.add_parser("approve", help="approve a pending request")
    approve.add_argument("job_id")
    approve.add_argument("--group", action="store_true", help=group_help)
    _common(approve)
    approve.set_defaults(func=run_decide, action="approve")
    deny = sub.add_parser("deny", help="deny a pending request (the agent sees the reason)")
    deny.add_argument("job_id")
    deny.add_argument("--reason", required=True, help="why (shown to the agent)")
    deny.add_argument("--group", action="store_true", help=group_help)
    _common(deny)
    deny.set_defaults(func=run_decide, action="deny")


class CommandError(Exception):
    pass


def _target(args: argparse.Namespace) -> tuple[str, str]:
    """(approvals URL, bearer token) for this call."""
    token = args.token or os.environ.get("BQGATE_APPROVER_TOKEN")
    url = args.url
    if url and token:
        return url.rstrip("/"), token
    try:
        dev_dir = issuer.find_dev_dir(args.dev_dir)
        endpoints = issuer.read_endpoints(dev_dir)
        url = url or endpoints.get("approvals")
        if not url:
            raise CommandError(f"{dev_dir / issuer.ENDPOINTS_FILE} has no approvals URL")
        if not token:
            issuer_url = endpoints.get("oidc_issuer")
            if not issuer_url:
                raise CommandError(f"{dev_dir / issuer.ENDPOINTS_FILE} has no oidc_issuer")
            token = issuer.mint_token(
                args.principal, [], 900, issuer_url=issuer_url, key_dir=dev_dir / issuer.OIDC_SUBDIR
            )
    except issuer.DevStackNotFound as exc:
        raise CommandError(f"{exc} (or pass --url and --token)") from None
    except FileNotFoundError:
        raise CommandError("the dev issuer key is missing; is the dev stack running?") from None
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    return url.rstrip("/"), token


def _call(
    method: str,
    url: str,
    token: str,
    body: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> Any:
    try:
        resp = requests.request(
            method,
            url,
            json=body,
            timeout=TIMEOUT_S,
            params=params,
            headers={"Authorization": f"Bearer {token}"},
        )
    except requests.RequestException as exc:
        raise CommandError(f"cannot reach the approvals service at {url}: {exc}") from None
    try:
        data = resp.json()
    except ValueError:
        raise CommandError(f"{url} answered {resp.status_code} without JSON") from None
    if resp.status_code >= 400:
        message = (data.get("error") or {}).get("message") if isinstance(data, dict) else None
        raise CommandError(message or f"{url} answered {resp.status_code}")
    return data


def _fail(exc: CommandError) -> int:
    print(f"bqgate: {exc}", file=sys.stderr)
    return 2


def run_list(args: argparse.Namespace) -> int:
    pages: list[Any] = []
    try:
        url, token = _target(args)
        cursor = args.cursor
        while True:
            params = {"limit": args.limit, **({"cursor": cursor} if cursor else {})}
            data = _call("GET", f"{url}/v1/approvals", token, params=params)
            pages.append(data)
            cursor = data.get("next_cursor")
            if not args.all or not cursor:
                break
    except CommandError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(pages[0] if len(pages) == 1 else {"pages": pages}, indent=2))
        return 0
    items = [item for page in pages for item in page.get("approvals") or []]
    if not items:
        print("No pending requests you may approve.")
    for item in items:
        print_item(item)
    if cursor:
        print(f"More requests: bqgate approvals list --cursor {cursor}  (or --all)")
    return 0


def print_item(item: dict[str, Any]) -> None:
    sql = " ".join(str(item.get("sql", "")).split())
    print(
        f"{item['job_id']}  {item['owner']}  {len(item.get('approvals') or [])}/"
        f"{item.get('required', 1)} approvals"
    )
    print(f"    tables: {', '.join(item.get('tables') or []) or '-'}")
    print(f"    why:    {'; '.join(item.get('reasons') or []) or '-'}")
    print(f"    sql:    {sql[:200]}{'...' if len(sql) > 200 else ''}")
    group = item.get("group") or {}
    others = [j for j in group.get("job_ids") or [] if j != item["job_id"]]
    if others:
        print(
            f"    group:  {len(others)} more pending request(s) of this statement by this "
            f"requester (decide them all with --group): {', '.join(others)}"
        )


def run_decide(args: argparse.Namespace) -> int:
    try:
        url, token = _target(args)
        body: dict[str, Any] = {"reason": args.reason} if args.action == "deny" else {}
        if args.group:
            body["group"] = True
        data = _call("POST", f"{url}/v1/approvals/{args.job_id}:{args.action}", token, body)
    except CommandError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(data.get("message", data.get("outcome", "")))
    return 0
