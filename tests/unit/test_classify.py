"""The SQL classifier: fixture cases (tests/fixtures/classify/*.sql), API shape, fuzzing."""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlglot
from bqgate.classification import Classification
from bqgate.policy import Policy, load_policy, parse_policy
from bqgate.sql import classify as classify_module
from bqgate.sql.classify import CLASS_BY_KIND, KIND_BY_TYPE, classify, classify_uncached
from bqgate.vocabulary import STATEMENT_CLASSES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import always_true

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "classify"
BENCH = ROOT / "bench" / "bench_classify.py"
AGENT = "agent@demo-project.iam.gserviceaccount.com"
HEADERS = (
    "principal",
    "groups",
    "project",
    "dataset",
    "statements",
    "tables",
    "reason",
    "note",
    "measured",
    "second_opinion",
)
EXPECT = re.compile(r"^-- expect:\s*(\w+)\s*$")
HEADER = re.compile(r"^-- (\w+):\s*(.*?)\s*$")


@dataclass
class Case:
    """One fixture case: SQL, the expected decision and optional checks."""

    file: str
    line: int
    expect: str
    sql: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def load_cases(directory: Path = FIXTURES) -> list[Case]:
    """Parse every fixture file into cases (see tests/fixtures/classify/README.md)."""
    cases: list[Case] = []
    for path in sorted(directory.glob("*.sql")):
        current: Case | None = None
        in_headers = False
        body: list[str] = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            match = EXPECT.match(line)
            if match:
                if current is not None:
                    current.sql = "\n".join(body).strip()
                    cases.append(current)
                current, in_headers, body = Case(path.name, number, match.group(1)), True, []
                continue
            if current is None:
                continue
            header = HEADER.match(line) if in_headers else None
            if header and header.group(1) in HEADERS:
                current.headers[header.group(1)] = header.group(2)
                continue
            in_headers = False
            body.append(line)
        if current is not None:
            current.sql = "\n".join(body).strip()
            cases.append(current)
    return cases


CASES = load_cases()


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(ROOT / "policies" / "default.yaml")


def test_fixture_corpus_is_large_and_well_formed() -> None:
    assert len(CASES) >= 150
    assert {c.expect for c in CASES} == {"allow", "approve", "block"}
    assert all(c.sql or c.headers.get("note", "").startswith("empty") for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fixture_case(case: Case, policy: Policy) -> None:
    h = case.headers
    result = classify_uncached(
        case.sql,
        policy=policy,
        principal=h.get("principal", AGENT),
        groups=_split(h.get("groups", "")),
        default_project=h.get("project", "demo-project"),
        default_dataset=h.get("dataset") or None,
    )
    detail = "\n".join(result.reasons)
    assert result.decision == case.expect, f"{case.id}: {result.decision}\n{detail}"
    if "statements" in h:
        assert list(result.statements) == _split(h["statements"]), detail
    if "tables" in h:
        assert list(result.tables) == sorted(_split(h["tables"])), detail
    if "reason" in h:
        assert any(h["reason"] in r for r in result.reasons), detail
    if "measured" in h:
        assert bool(result.writes) == (h["measured"] == "yes"), detail
    if "second_opinion" in h:
        assert result.second_opinion == (h["second_opinion"] == "yes"), detail
    assert result.reasons, "every decision carries a reason"
    for reason in result.reasons:
        assert re.match(r"^statement \d+ \([A-Z_:A-Za-z]+\): ", reason), reason


# --------------------------------------------------------------------------- API shape


def _run(sql: str, policy: Policy, **kw: object) -> Classification:
    args: dict[str, object] = {"principal": AGENT, "groups": (), "default_project": "demo-project"}
    args.update(kw)
    return classify(sql, policy=policy, **args)  # type: ignore[arg-type]


def test_to_dict_is_json_and_has_the_documented_keys(policy: Policy) -> None:
    result = _run("SELECT 1; DROP TABLE analytics.events", policy)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["decision"] == "block"
    assert data["statements"] == ["SELECT", "DROP"]
    assert data["tables"] == ["demo-project.analytics.events"]
    assert data["reasons"] == [
        "statement 2 (DROP): DDL on demo-project.analytics.events (non-production) "
        "is blocked by policy"
    ]
    assert len(data["per_statement"]) == 2
    assert data["per_statement"][0]["decision"] == "allow"


def test_written_tables_lists_only_targets(policy: Policy) -> None:
    result = _run(
        "INSERT INTO analytics.daily_revenue SELECT DATE(ts), 1 FROM analytics.events", policy
    )
    assert result.written_tables == ("demo-project.analytics.daily_revenue",)
    assert result.tables == (
        "demo-project.analytics.daily_revenue",
        "demo-project.analytics.events",
    )


def test_normalized_sql_ignores_comments_whitespace_and_case(policy: Policy) -> None:
    a = _run("select name from analytics.events -- why\n where event_id = 1", policy)
    b = _run("SELECT  name\nFROM analytics.events /* note */ WHERE event_id = 1", policy)
    c = _run("SELECT name FROM analytics.events WHERE event_id = 2", policy)
    assert a.normalized_sql == b.normalized_sql
    assert a.statement_hash == b.statement_hash != c.statement_hash
    assert len(a.statement_hash) == 64 and "--" not in a.normalized_sql


def test_cache_returns_the_same_object_and_keys_on_principal(policy: Policy) -> None:
    classify_module.clear_cache()
    first = _run("SELECT * FROM analytics.events", policy)
    assert _run("SELECT * FROM analytics.events", policy) is first
    other = _run("SELECT * FROM analytics.events", policy, principal="nobody@example.com")
    assert (first.decision, other.decision) == ("allow", "block")


def test_groups_come_from_the_policy_and_the_claims(policy: Policy) -> None:
    stranger = "someone@example.com"
    assert _run("SELECT * FROM analytics.events", policy, principal=stranger).decision == "block"
    claimed = _run(
        "SELECT * FROM analytics.events", policy, principal=stranger, groups=["ai-coding-agents"]
    )
    assert claimed.decision == "allow"


def test_every_statement_kind_has_a_class() -> None:
    from bqgate.sql.classify import statement_class, statement_kind

    for node_type in KIND_BY_TYPE:
        kind = statement_kind(node_type())
        assert statement_class(kind) in CLASS_BY_KIND.values(), kind


def test_custom_policy_can_allow_ddl_on_a_tier() -> None:
    text = (ROOT / "policies" / "default.yaml").read_text()
    text = text.replace(
        "    read: allow\n    write: allow\n",
        "    read: allow\n    write: allow\n    ddl: approve\n",
        1,
    )
    custom = parse_policy(text)
    result = _run("CREATE TABLE analytics.scratch (x INT64)", custom)
    assert result.decision == "approve"
    assert result.statements == ("CREATE_TABLE",)


def test_default_dataset_may_be_project_qualified(policy: Policy) -> None:
    result = _run("SELECT * FROM ledger", policy, default_dataset="demo-project.finance")
    assert (result.decision, result.tables) == ("approve", ("demo-project.finance.ledger",))


def test_large_generated_query_is_handled(policy: Policy) -> None:
    spec = importlib.util.spec_from_file_location("bench_classify", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    sql = bench.big_query(100_000)
    assert len(sql) >= 100_000
    result = classify_uncached(
        sql, policy=policy, principal=AGENT, groups=(), default_project="demo-project"
    )
    assert result.decision == "allow", result.reasons


# --------------------------------------------------------------------------- fuzzing

TOKENS = [
    "SELECT",
    "FROM",
    "WHERE",
    "DROP",
    "TABLE",
    "DELETE",
    "UPDATE",
    "SET",
    "INSERT",
    "INTO",
    "MERGE",
    "USING",
    "ON",
    "WHEN",
    "MATCHED",
    "THEN",
    "GRANT",
    "EXECUTE",
    "IMMEDIATE",
    "CALL",
    "BEGIN",
    "END",
    "IF",
    "WITH",
    "AS",
    "UNION",
    "ALL",
    "TRUE",
    "FALSE",
    "NULL",
    "AND",
    "OR",
    "NOT",
    "CREATE",
    "EXPORT",
    "DATA",
    "LOAD",
    "EXTERNAL_QUERY",
    "UNNEST",
    "*",
    "(",
    ")",
    ",",
    ";",
    ".",
    "=",
    "1",
    "'x'",
    '"y"',
    "`",
    "`demo-project.analytics.events`",
    "analytics.events",
    "sales.customers",
    "email",
    "x",
    "t",
    "--",
    "/*",
    "*/",
    "#",
    "\n",
    "'",
    "\\",
    "@p",
    "?",
    "[",
    "]",
    "{",
    "}",
    "<",
    ">",
    "r'",
    "b'",
    "'''",
    "INFORMATION_SCHEMA",
    "region-us",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), min_size=0, max_size=25), st.booleans())
def test_token_soup_never_raises_and_never_allows_unparseable(
    tokens: list[str], spaced: bool
) -> None:
    sql = (" " if spaced else "").join(tokens)
    result = classify_uncached(
        sql, policy=_fuzz_policy(), principal=AGENT, groups=(), default_project="demo-project"
    )
    assert result.decision in ("allow", "approve", "block")
    try:
        parsed = [s for s in sqlglot.parse(sql, read="bigquery") if s is not None]
        parses = bool(parsed) and not any(
            isinstance(n, sqlglot.exp.Command) for s in parsed for n in s.walk()
        )
    except Exception:
        parses = False
    if not parses:
        assert result.decision == "block", (sql, result.reasons)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_never_raises(text: str) -> None:
    result = classify_uncached(
        text, policy=_fuzz_policy(), principal=AGENT, groups=(), default_project="demo-project"
    )
    assert result.decision in ("allow", "approve", "block")
    assert len(result.statement_hash) == 64


_POLICY_CACHE: list[Policy] = []


def _fuzz_policy() -> Policy:
    if not _POLICY_CACHE:
        _POLICY_CACHE.append(load_policy(ROOT / "policies" / "default.yaml"))
    return _POLICY_CACHE[0]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(predicate=always_true(), verb=st.sampled_from(["DELETE", "UPDATE", "MERGE"]))
def test_always_true_predicates_are_blocked_or_measured(predicate: str, verb: str) -> None:
    """Whatever folding makes of it, a whole-table write is never judged safe: it is blocked
    or carries a blast-radius check the executor runs before it commits."""
    policy = load_policy(ROOT / "policies" / "default.yaml")
    table = "analytics.events"
    sql = {
        "DELETE": f"DELETE FROM {table} WHERE {predicate}",
        "UPDATE": f"UPDATE {table} SET name = 'x' WHERE {predicate}",
        "MERGE": f"MERGE {table} T USING {table} S ON T.event_id = S.event_id AND ({predicate})"
        " WHEN MATCHED THEN DELETE",
    }[verb]
    result = classify_uncached(
        sql, policy=policy, principal=AGENT, groups=(), default_project="demo-project"
    )
    assert result.decision == "block" or (
        result.writes and result.writes[0].target == "demo-project.analytics.events"
    ), result.reasons


CLAIMS_POLICY = """
version: 1
tiers: [non-production, production]
datasets: {demo-project.analytics: non-production, demo-project.sales: production}
groups: {ai-coding-agents: {members: [agent@demo-project.iam.gserviceaccount.com]}}
rules:
  - {groups: [ai-coding-agents], tiers: [non-production], read: allow}
  - groups: [ai-coding-agents]
    tiers: [production]
    read: allow
    when: {claims: {env: production}}
"""


def test_rules_can_require_token_claims() -> None:
    policy = parse_policy(CLAIMS_POLICY)
    sql = "SELECT order_id FROM sales.orders"
    prod = classify_uncached(
        sql,
        policy=policy,
        principal=AGENT,
        groups=(),
        default_project="demo-project",
        claims={"env": "production"},
    )
    dev = classify_uncached(
        sql,
        policy=policy,
        principal=AGENT,
        groups=(),
        default_project="demo-project",
        claims={"env": "development"},
    )
    none = classify_uncached(
        sql, policy=policy, principal=AGENT, groups=(), default_project="demo-project"
    )
    assert prod.decision == "allow"
    assert dev.decision == none.decision == "block"
    assert "no policy rule" in dev.reasons[0]


def test_explain_shows_the_effect_of_claims(tmp_path: Path) -> None:
    import subprocess
    import sys

    policy = tmp_path / "p.yaml"
    policy.write_text(CLAIMS_POLICY)

    def explain(*extra: str) -> str:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "bqgate.cli",
                "explain",
                "--policy",
                str(policy),
                *extra,
                "SELECT order_id FROM sales.orders",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    assert "decision:   allow" in explain("--claims", "env=production")
    assert "decision:   block" in explain()


def test_limits_are_a_400_before_any_parsing() -> None:
    from bqgate.errors import InvalidQuery

    policy = load_policy(ROOT / "policies" / "default.yaml")
    for sql, why in [
        ("SELECT 1 -- " + "x" * (2 * 1024 * 1024), "limit is 1,048,576 bytes"),
        ("SELECT " + "(" * 1000 + "1" + ")" * 1000, "nests brackets 1000 deep"),
    ]:
        with pytest.raises(InvalidQuery, match=why):
            classify_uncached(
                sql, policy=policy, principal=AGENT, groups=(), default_project="demo-project"
            )


def test_every_statement_class_has_a_label_and_every_kind_a_class() -> None:
    # The vocabulary is the policy's: a class the classifier names, the policy can name.
    assert set(classify_module.CLASS_LABELS) == set(STATEMENT_CLASSES)
    assert set(classify_module.CLASS_BY_KIND.values()) <= set(STATEMENT_CLASSES)


def test_a_classification_over_its_time_budget_is_a_400() -> None:
    from bqgate.errors import InvalidQuery

    policy = load_policy(ROOT / "policies" / "default.yaml")
    script = ";\n".join(
        f"SELECT COUNT(*) FROM analytics.events WHERE event_id = {i}" for i in range(200)
    )
    args: dict[str, Any] = {
        "policy": policy,
        "principal": AGENT,
        "groups": (),
        "default_project": "demo-project",
    }
    with pytest.raises(InvalidQuery, match=r"longer than the gateway's 1e-06 s budget"):
        classify_uncached(script, budget_s=1e-6, **args)
    # The same script within the default budget is judged as usual.
    assert classify_uncached(script, **args).decision in ("allow", "approve")


def test_explain_rewrite_with_a_dev_stack_that_is_gone_answers_at_once(tmp_path: Path) -> None:
    """A stale endpoints.json (the stack was stopped) must not keep explain waiting."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dev = tmp_path / ".bqgate-dev"
    dev.mkdir()
    (dev / "endpoints.json").write_text(json.dumps({"bigquery": f"http://127.0.0.1:{port}"}))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bqgate.cli",
            "explain",
            "--rewrite",
            "SELECT ssn FROM sales.customers",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BQGATE_DEV_DIR": str(dev)},
        check=True,
    ).stdout
    assert "does not answer" in out and "STRING assumed" in out
    assert "REPLACE" in out  # still rewritten
