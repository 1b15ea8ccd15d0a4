"""``bqgate explain``: how the policy judges a SQL text, without running it.

Prints the decision, the reasons, the statement kinds and the tables. ``--json``
prints one JSON object; ``--jsonl`` reads JSON lines (``{"sql": ..., optional
"principal", "groups", "project", "dataset"}``) on stdin and writes one result per
line (a bad line gets ``{"error": ...}`` and processing goes on). Exit 0 whatever
the decision; 2 on a usage or policy error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from bqgate.errors import InvalidRequest, PolicyError
from bqgate.policy import Policy, load_policy
from bqgate.sql.classify import Classification, classify

DEFAULT_POLICY = Path("policies") / "default.yaml"
DEFAULT_PRINCIPAL = "agent@demo-project.iam.gserviceaccount.com"
DEFAULT_PROJECT = "demo-project"


def register(subparsers: Any) -> None:
    """Add the ``explain`` subcommand to the ``bqgate`` parser."""
    parser = subparsers.add_parser(
        "explain",
        help="classify SQL against the policy (allow / approve / block) without running it",
        description="Classify SQL against the policy without running it. Exit 0 whatever "
        "the decision; 2 on a usage or policy error.",
    )
    parser.add_argument(
        "--policy",
        metavar="FILE",
        help=f"policy file (default: {DEFAULT_POLICY}, else the repository's copy)",
    )
    parser.add_argument(
        "--principal",
        default=DEFAULT_PRINCIPAL,
        metavar="EMAIL",
        help=f"who runs the SQL (default: {DEFAULT_PRINCIPAL})",
    )
    parser.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="G",
        dest="groups",
        help="a group claimed by the principal (repeatable)",
    )
    parser.add_argument(
        "--project",
        default=DEFAULT_PROJECT,
        metavar="P",
        help=f"default project (default: {DEFAULT_PROJECT})",
    )
    parser.add_argument("--dataset", metavar="D", help="default dataset (default: none)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON object")
    output.add_argument(
        "--jsonl",
        action="store_true",
        help='read JSON lines {"sql": ...} on stdin, write one JSON result per line',
    )
    parser.add_argument("sql", nargs="?", default="-", help="the SQL, or - to read stdin")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Execute ``bqgate explain`` with parsed ``args``; returns the exit code."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    policy = _load(args.policy)
    if args.jsonl:
        if args.sql != "-":
            raise InvalidRequest("--jsonl reads SQL from stdin; do not pass SQL as an argument")
        for line in stdin:
            if line.strip():
                stdout.write(json.dumps(_jsonl_line(line, policy, args)) + "\n")
                stdout.flush()
        return 0
    sql = stdin.read() if args.sql == "-" else args.sql
    result = _classify(sql, policy, args.principal, args.groups, args.project, args.dataset)
    if args.json:
        stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        stdout.write(format_text(result))
    return 0


def format_text(result: Classification) -> str:
    """Human-readable report.

    >>> from bqgate.sql.classify import StatementVerdict
    >>> r = Classification("block", ("statement 1 (DROP): DDL is blocked",), ("DROP",),
    ...                    ("p.d.t",), ("p.d.t",), "DROP TABLE p.d.t", "ab", ())
    >>> print(format_text(r), end="")
    decision:   block
    statements: DROP
    tables:     p.d.t
    reasons:
      - statement 1 (DROP): DDL is blocked
    """
    lines = [
        f"decision:   {result.decision}",
        f"statements: {', '.join(result.statements) or '-'}",
        f"tables:     {', '.join(result.tables) or '-'}",
        "reasons:",
        *(f"  - {reason}" for reason in result.reasons),
    ]
    return "\n".join(lines) + "\n"


def _jsonl_line(line: str, policy: Policy, args: argparse.Namespace) -> dict[str, Any]:
    """One JSON-lines request -> its result, or ``{"error": ...}``."""
    try:
        request = json.loads(line)
    except json.JSONDecodeError as exc:
        return {"error": f"invalid JSON: {exc.msg} at column {exc.colno}"}
    if not isinstance(request, dict):
        return {"error": "expected a JSON object"}
    sql = request.get("sql")
    if not isinstance(sql, str):
        return {"error": 'missing "sql" (a string)'}
    groups = request.get("groups", args.groups)
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        return {"error": '"groups" must be a list of strings'}
    fields = {
        k: request.get(k, d)
        for k, d in (
            ("principal", args.principal),
            ("project", args.project),
            ("dataset", args.dataset),
        )
    }
    for key, value in fields.items():
        if value is not None and not isinstance(value, str):
            return {"error": f'"{key}" must be a string'}
    if not fields["principal"] or not fields["project"]:
        return {"error": '"principal" and "project" must not be empty'}
    result = _classify(
        sql, policy, fields["principal"], groups, fields["project"], fields["dataset"]
    )
    return result.to_dict()


def _classify(
    sql: str,
    policy: Policy,
    principal: str,
    claimed: list[str],
    project: str,
    dataset: str | None,
) -> Classification:
    return classify(
        sql,
        policy=policy,
        principal=principal,
        groups=policy.groups_for(principal, claimed),
        default_project=project,
        default_dataset=dataset or None,
    )


def _load(path: str | None) -> Policy:
    """Load ``path``, else ``policies/default.yaml`` in cwd, else the repository's copy."""
    if path:
        return load_policy(path)
    for candidate in _default_candidates():
        if candidate.is_file():
            return load_policy(candidate)
    raise PolicyError(["no policy file found; pass --policy FILE"], source=str(DEFAULT_POLICY))


def _default_candidates() -> list[Path]:
    """``policies/default.yaml`` under cwd, then next to the installed package's repo."""
    package_root = Path(__file__).resolve().parents[3]  # shared/bqgate/commands -> repo
    return [Path.cwd() / DEFAULT_POLICY, package_root / DEFAULT_POLICY]
