"""The policy loader and validator."""

from __future__ import annotations

from pathlib import Path

import pytest
from bqgate.errors import PolicyError
from bqgate.policy import (
    Policy,
    load_policy,
    parse_duration,
    parse_policy,
    parse_size,
)
from bqgate.vocabulary import MASK_STRATEGIES, STATEMENT_CLASSES

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "policies" / "default.yaml"
FIXTURES = ROOT / "tests" / "fixtures" / "policies"
AGENT = "agent@demo-project.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(DEFAULT)


def _problems(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.source == str(path)
    return info.value.problems


def test_default_policy_loads(policy: Policy) -> None:
    assert policy.version == 1
    assert policy.tiers == ("non-production", "production", "restricted")
    assert policy.tier_of("demo-project", "analytics") == "non-production"
    assert policy.tier_of("demo-project", "sales") == "production"
    assert policy.tier_of("demo-project", "finance") == "restricted"
    assert policy.tier_of("demo-project", "marketing") is None
    assert policy.tier_of("other-project", "analytics") is None
    assert policy.source == str(DEFAULT)
    assert len(policy.digest) == 64


def test_default_policy_groups_and_rules(policy: Policy) -> None:
    assert policy.groups_for(AGENT) == frozenset({"ai-coding-agents"})
    assert policy.groups_for("ALICE@example.com") == frozenset({"data-approvers"})
    assert policy.groups_for("x@y.com", ["claimed"]) == frozenset({"claimed"})
    agents = {"ai-coding-agents"}
    assert policy.action_for(agents, "non-production", "write") == "allow"
    assert policy.action_for(agents, "production", "read") == "allow"
    assert policy.action_for(agents, "production", "write") == "approve"
    assert policy.action_for(agents, "restricted", "read") == "approve"
    assert policy.action_for(agents, "non-production", "ddl") == "block"
    assert policy.action_for({"data-approvers"}, "production", "read") is None
    for rule in policy.rules:
        assert set(rule.actions) <= set(STATEMENT_CLASSES)


def test_default_policy_settings(policy: Policy) -> None:
    assert policy.approvals.approver_groups == ("data-approvers",)
    assert (policy.approvals.required, policy.approvals.ttl_seconds) == (1, 900)
    assert dict(policy.approvals.owners) == {}
    assert policy.approvals.max_pending_per_principal == 10
    assert policy.cost.max_bytes_billed == 10 * 10**9
    assert policy.cost.approve_above_bytes == 10**9
    assert policy.cost.block_above_bytes == 100 * 10**9
    assert policy.cost.max_result_rows == 100_000
    assert policy.identity.clock_skew_seconds == 60
    dev = policy.identity.issuers[1]
    assert (dev.issuer, dev.dev_only, dev.groups_claim) == ("dev", True, "groups")
    assert policy.identity.issuers[0].principal_claim == "email"
    assert policy.sessions.retention_seconds == 30 * 86400
    assert policy.sessions.record_rows == 100


def test_sensitive_columns_are_case_insensitive(policy: Policy) -> None:
    customers = policy.sensitive_for("demo-project.sales.customers")
    assert customers["email"] == "email" and customers["ssn"] == "last4"
    assert policy.sensitive_for("DEMO-PROJECT.sales.Customers") == customers
    assert dict(policy.sensitive_for("demo-project.sales.orders")) == {}
    assert set(policy.sensitive_for("demo-project.finance.pay*")) == {"name", "salary", "iban"}
    assert all(s in MASK_STRATEGIES for s in customers.values())
    upper = parse_policy(DEFAULT.read_text().replace("    ssn: last4", "    SSN: last4"))
    assert upper.sensitive_for("demo-project.sales.customers")["ssn"] == "last4"


def test_policy_is_immutable(policy: Policy) -> None:
    with pytest.raises(TypeError):
        policy.datasets["x.y"] = "production"  # type: ignore[index]
    with pytest.raises(AttributeError):
        policy.version = 2  # type: ignore[misc]


def test_digest_follows_the_text() -> None:
    text = DEFAULT.read_text()
    assert parse_policy(text).digest == parse_policy(text).digest
    assert parse_policy(text).digest != parse_policy(text + "\n# changed\n").digest


def test_a_typo_yields_one_problem_naming_the_path() -> None:
    path = FIXTURES / "typo.yaml"
    assert _problems(path) == ["rules[0].raed: unknown key"]
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(info.value) == f"{path}: rules[0].raed: unknown key"


def test_every_mistake_is_reported() -> None:
    problems = _problems(FIXTURES / "many_mistakes.yaml")
    expected = [
        "colour: unknown key",
        'datasets.demo-project.sales: unknown tier "prod"',
        'rules[1].write: expected allow, approve or block, got "maybe"',
        'rules[2].groups: unknown group "ghosts" (declare it under groups)',
        'rules[2].tiers: unknown tier "prod"',
        'sensitive_columns.demo-project.sales.customers.email: unknown strategy "mask"',
        'approvals.ttl: expected a duration like 15m, got "soon"',
        'cost.max_bytes_billed: expected a size like 10GB, got "ten"',
        "cost.max_result_rows: expected an integer >= 1, got -5",
        "identity.issuers[0].audiences: at least one audience is required",
        'identity.issuers[0].dev_only: expected true or false, got "yes"',
        'sessions.retention: expected a duration like 15m, got "30 days"',
    ]
    assert len(problems) == len(expected)
    for want, got in zip(expected, problems, strict=True):
        assert got.startswith(want), (want, got)


def test_yaml_syntax_error_is_reported_with_its_line() -> None:
    problems = _problems(FIXTURES / "bad_syntax.yaml")
    assert len(problems) == 1
    assert problems[0].startswith("line 3, column 9: YAML syntax error:")
    assert "Traceback" not in problems[0]


def test_duplicate_keys_are_errors() -> None:
    assert _problems(FIXTURES / "duplicate_key.yaml") == [
        'line 6, column 1: YAML syntax error: duplicate key "tiers"'
    ]


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    problems = _problems(tmp_path / "nope.yaml")
    assert problems == ["cannot read policy file: No such file or directory"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "version: missing required key"),
        ("- a\n- b\n", "expected a mapping, got a list"),
        (
            "version: 2\ntiers: [a]\ndatasets: {}\ngroups: {}\nrules: []",
            "version: unsupported version 2 (expected 1)",
        ),
        (
            "version: 1\ntiers: [a, a]\ndatasets: {}\ngroups: {}\nrules: []",
            'tiers: duplicate tier "a"',
        ),
        (
            "version: 1\ntiers: [a]\ndatasets: {nodot: a}\ngroups: {}\nrules: []",
            'datasets.nodot: expected a dataset name like "project.dataset"',
        ),
        (
            "version: 1\ntiers: [a]\ndatasets: {}\ngroups: {g: {members: [x], admins: [y]}}\n"
            "rules: []",
            "groups.g.admins: unknown key",
        ),
        (
            "version: 1\ntiers: [a]\ndatasets: {}\ngroups: {}\nrules: [{tiers: [a], read: allow}]",
            "rules[0].groups: at least one group is required",
        ),
        (
            "version: 1\ntiers: [a]\ndatasets: {}\ngroups: {}\nrules: {}",
            "rules: expected a list of rules, got a mapping",
        ),
        (
            "version: 1\ntiers: [a]\ndatasets: {}\ngroups: {}\nrules: []\n"
            "cost: {approve_above_bytes: 2GB, block_above_bytes: 1GB}",
            "cost.approve_above_bytes: must not exceed cost.block_above_bytes",
        ),
        (
            "version: 1\ntiers: [a]\ndatasets: {}\ngroups: {}\nrules: []\n"
            "approvals: {owners: {agent@x.com: 5}}",
            "approvals.owners.agent@x.com: expected an owner email, got 5",
        ),
        (
            "version: 1\ntiers: [a]\ndatasets: {}\ngroups: {}\nrules: []\n"
            "approvals: {max_pending_per_principal: 0}",
            "approvals.max_pending_per_principal: expected an integer >= 1, got 0",
        ),
        (
            "version: 1\ntiers: [a]\ndatasets: {}\ngroups: {}\nrules: []\n"
            "approvals: {max_pending_per_principal: ten}",
            'approvals.max_pending_per_principal: expected an integer >= 1, got "ten"',
        ),
        (
            "version: 1\ntiers: [a]\ndatasets: {}\ngroups: {}\nrules: []\n"
            "sensitive_columns: {p.d: {c: email}}",
            'sensitive_columns.p.d: expected a table name like "project.dataset.table"',
        ),
        (
            "version: 1\ntiers: [a]\ndatasets: {}\ngroups: {}\nrules: []\n"
            "sessions: {record_rows: x}",
            'sessions.record_rows: expected an integer >= 0, got "x"',
        ),
    ],
)
def test_individual_problems(text: str, problem: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems
    assert info.value.source == "<string>"


def test_optional_sections_default() -> None:
    p = parse_policy("version: 1\ntiers: [a]\ndatasets: {}\ngroups: {}\nrules: []")
    assert p.identity.issuers == () and p.identity.clock_skew_seconds == 60
    assert p.cost.max_bytes_billed is None and p.cost.max_result_rows == 100_000
    assert p.sessions.retention_seconds == 30 * 86400
    assert p.approvals.approver_groups == () and p.approvals.ttl_seconds == 900
    assert p.approvals.max_pending_per_principal == 10


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10GB", 10**10),
        ("1GiB", 2**30),
        ("500MB", 5 * 10**8),
        (123, 123),
        ("7", 7),
        ("2 tib", 2 * 2**40),
        ("1.5KB", 1500),
        ("0", 0),
    ],
)
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["ten", "10XB", -1, True, None, "1.2.3GB", [1]])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="expected a size like 10GB"):
        parse_size(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("15m", 900),
        ("30d", 2_592_000),
        ("60s", 60),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2w", 1_209_600),
        (45, 45),
    ],
)
def test_parse_duration(value: object, expected: int) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize("value", ["soon", "15", "m", -5, False, "1y"])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration like 15m"):
        parse_duration(value)


# -- issue: judge every name, measure every write; mask at the source ----------------------

NEW_KEYS = """
version: 1
tiers:
  dev: {writes: {max_rows: 10, max_fraction: 0.2, above: block}}
  prod: {}
datasets: {p.d: dev, p.e: prod}
groups:
  agents: {members: [a@x.com], agents: true}
  stewards: {members: [s@x.com]}
rules:
  - {groups: [agents], tiers: [dev], read: allow, write: allow}
  - {groups: [agents], tiers: [prod], read: allow, when: {claims: {env: [production, prod]}}}
connections: {p.us.vertex: prod}
sensitive_columns: {p.e.people: {email: email, ssn: last4}}
unmasked:
  - {groups: [stewards], tables: [p.e.people], columns: [email]}
"""


def test_tiers_writes_connections_claims_and_unmasked_grants_parse() -> None:
    p = parse_policy(NEW_KEYS)
    assert p.tiers == ("dev", "prod")
    assert p.write_limits("dev").describe() == (
        "at most 10 rows and at most 20% of the target table (above: block)"
    )
    assert p.write_limits("prod").max_fraction == 0.5  # the safe default
    assert p.connection_tier("p.us.vertex") == "prod"
    assert p.action_for({"agents"}, "prod", "read", {"env": "production"}) == "allow"
    assert p.action_for({"agents"}, "prod", "read", {"env": "dev"}) is None
    assert p.action_for({"agents"}, "prod", "read") is None
    assert p.unmasked_for("s@x.com", {"stewards"}, "p.e.people") == {"email"}
    assert p.unmasked_for("a@x.com", {"agents", "stewards"}, "p.e.people") == frozenset()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("max_fraction: 0.2", "max_fraction: 2"),
        ("above: block", "above: sometimes"),
        ("env: [production, prod]", "env: {x: 1}"),
        ("p.us.vertex: prod", "p.vertex: prod"),
        ("groups: [stewards], tables", "groups: [agents], tables"),
        ("columns: [email]", "columns: [phone]"),
    ],
)
def test_new_keys_are_validated(change: str, problem: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(NEW_KEYS.replace(change, problem))
    assert info.value.problems, info.value


def test_agents_never_get_unmasked_grants() -> None:
    with pytest.raises(PolicyError, match="agents never read unmasked"):
        parse_policy(NEW_KEYS.replace("groups: [stewards], tables", "groups: [agents], tables"))
