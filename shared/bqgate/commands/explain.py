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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from bqgate.classification import Classification, StatementVerdict
from bqgate.errors import InvalidQuery, InvalidRequest, PolicyError
from bqgate.policy import Policy, load_policy
from bqgate.sql.classify import classify

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
    parser.add_argument(
        "--dataset", metavar="D", help="default dataset, D or PROJECT.D (default: none)"
    )
    parser.add_argument(
        "--claims",
        action="append",
        default=[],
        metavar="K=V[,K=V]",
        help="token claims of the principal, e.g. env=production (repeatable)",
    )
    parser.add_argument(
        "--rewrite",
        action="store_true",
        help="also print the statement that will run (every read of a protected table "
        "rewritten so it sees masked values only)",
    )
    parser.add_argument(
        "--schemas",
        metavar="FILE",
        help="JSON {table: [REST schema fields]} for --rewrite (default: the dev stack's "
        "BigQuery emulator when it runs, else STRING is assumed for sensitive columns)",
    )
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
    claims = parse_claims(args.claims)
    result = _classify(sql, policy, args.principal, args.groups, args.project, args.dataset, claims)
    rewritten: dict[str, Any] | None = None
    if args.rewrite:
        rewritten = explain_rewrite(sql, policy, args)
    if args.json:
        body = result.to_dict()
        if rewritten is not None:
            body["rewrite"] = rewritten
        stdout.write(json.dumps(body, indent=2) + "\n")
    else:
        stdout.write(format_text(result))
        if rewritten is not None:
            stdout.write(format_rewrite(rewritten))
    return 0


def parse_claims(values: list[str]) -> dict[str, str]:
    """``["env=production", "a=1,b=2"]`` -> ``{"env": "production", "a": "1", "b": "2"}``.

    >>> parse_claims(["env=production", "team=data,tier=gold"])
    {'env': 'production', 'team': 'data', 'tier': 'gold'}
    >>> parse_claims(["oops"])
    Traceback (most recent call last):
    ...
    bqgate.errors.InvalidRequest: --claims expects K=V pairs, got "oops"
    """
    out: dict[str, str] = {}
    for value in values:
        for pair in value.split(","):
            key, sep, text = pair.partition("=")
            if not sep or not key.strip():
                raise InvalidRequest(f'--claims expects K=V pairs, got "{pair}"')
            out[key.strip()] = text.strip()
    return out


def explain_rewrite(sql: str, policy: Policy, args: argparse.Namespace) -> dict[str, Any]:
    """The statement that will run, as the executor would rewrite it."""
    from bqgate.sql.names import Defaults
    from bqgate.sql.rewrite import RewriteError, rewrite

    schema_for, note = _schema_source(args.schemas, policy)
    dataset = args.dataset
    if dataset and "." not in dataset:
        dataset = f"{args.project}.{dataset}"
    groups = policy.groups_for(args.principal, args.groups)
    try:
        out = rewrite(
            sql,
            defaults=Defaults(args.project, dataset),
            sensitive_for=policy.sensitive_for,
            schema_for=schema_for,
            hmac_key=b"explain: the real key reaches BigQuery only as query parameters",
            unmasked_for=lambda fqn: policy.unmasked_for(args.principal, groups, fqn),
        )
    except RewriteError as exc:
        return {"error": str(exc), "schemas": note}
    return {
        "sql": out.sql,
        "changed": out.changed,
        "masked": [{"table": t, "column": c, "strategy": s} for t, c, s in out.masked],
        "key_parameters": sorted(
            {
                str(p.get("name"))
                for p in out.parameters
                if str(p.get("name", "")).startswith("bqgate_")
            }
        ),
        "schemas": note,
    }


def _schema_source(path: str | None, policy: Policy) -> tuple[Any, str]:
    if path:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if not isinstance(data, dict):
            raise InvalidRequest("--schemas: expected a JSON object {table: [fields]}")
        return (lambda fqn: data[fqn]), f"column types from {path}"
    try:
        from bqgate.dev.issuer import find_dev_dir, read_endpoints

        endpoints = read_endpoints(find_dev_dir())
        url = endpoints.get("bigquery")
    except Exception:  # no dev stack: fall back below
        url = None

    def assumed(fqn: str) -> list[dict[str, str]]:
        columns = policy.sensitive_for(fqn)
        if not columns:
            raise KeyError(fqn)
        return [{"name": c, "type": "STRING"} for c in columns]

    if url:
        from bqgate.adapters.emulators import emulator_table_schema

        try:  # is the dev stack there? (its endpoints.json may be left from an earlier run)
            emulator_table_schema(str(url), "bqgate-probe.bqgate_probe.bqgate_probe")
        except KeyError:
            return (
                lambda fqn: emulator_table_schema(str(url), fqn),
                f"column types from the dev stack's BigQuery emulator ({url})",
            )
        except Exception:
            return assumed, (
                f"column types unknown (the dev stack's BigQuery emulator at {url} does not "
                "answer; no --schemas): STRING assumed"
            )

    return assumed, "column types unknown (no --schemas, no dev stack): STRING assumed"


def format_rewrite(rewritten: Mapping[str, Any]) -> str:
    """The rewrite part of the human-readable report."""
    if "error" in rewritten:
        return f"rewrite:    cannot rewrite: {rewritten['error']}\n"
    if not rewritten.get("changed"):
        return "rewrite:    unchanged (reads no protected table)\n"
    masked = ", ".join(
        f"{m['table']}.{m['column']} ({m['strategy']})" for m in rewritten.get("masked", [])
    )
    lines = [
        f"masked:     {masked}",
        f"schemas:    {rewritten.get('schemas')}",
        "will run:",
        f"  {rewritten['sql']}",
    ]
    if rewritten.get("key_parameters"):
        lines.append(
            "  (the hmac key is passed as the query parameters "
            + ", ".join("@" + k for k in rewritten["key_parameters"])
            + "; it never appears in SQL text)"
        )
    return "\n".join(lines) + "\n"


def format_text(result: Classification) -> str:
    """Human-readable report.

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
    others = sorted({(k, n) for v in result.per_statement for k, n, _ in v.refs})
    if others:
        lines.append("objects:    " + ", ".join(f"{k} {n}" for k, n in others))
    if result.writes:
        lines.append("writes:")
        lines.extend(f"  - {w.describe()}" for w in result.writes)
    if result.notes:
        lines.append("notes:")
        lines.extend(f"  - {n}" for n in result.notes)
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
    claims = request.get("claims", parse_claims(args.claims))
    if not isinstance(claims, dict):
        return {"error": '"claims" must be an object'}
    result = _classify(
        sql, policy, fields["principal"], groups, fields["project"], fields["dataset"], claims
    )
    return result.to_dict()


def _classify(
    sql: str,
    policy: Policy,
    principal: str,
    claimed: list[str],
    project: str,
    dataset: str | None,
    claims: Mapping[str, Any] | None = None,
) -> Classification:
    if dataset and "." not in dataset:
        dataset = f"{project}.{dataset}"
    try:
        return classify(
            sql,
            policy=policy,
            principal=principal,
            groups=policy.groups_for(principal, claimed),
            default_project=project,
            default_dataset=dataset or None,
            claims=claims,
        )
    except InvalidQuery as exc:
        return _refused(sql, exc.message)


def _refused(sql: str, message: str) -> Classification:
    """A statement refused before classification (over the size or nesting limits)."""
    verdict = StatementVerdict("INVALID", "block", (f"invalidQuery: {message}",), ())
    return Classification("block", verdict.reasons, ("INVALID",), (), (), sql[:200], "", (verdict,))


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
