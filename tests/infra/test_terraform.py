"""Plan-level facts about infra/terraform, read from the .tf files with python-hcl2.

Each fact is a checker that returns the problems it finds (empty means fine), so
the real configuration is asserted clean and every checker is also shown to
catch a broken copy of it (the mutation tests at the bottom).

The checkers fail closed: a grant whose role or member they cannot resolve to a
literal or to a service account resource is reported, not trusted.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2
import pytest

REPO = Path(__file__).resolve().parents[2]
TF_DIR = REPO / "infra" / "terraform"

FUNCTIONS = ("approvals", "executor", "ingress", "mcp", "slack_notify", "sweeper")

# Names the functions read (shared/bqgate/settings.py), as Terraform may set them.
ALLOWED_ENV = {
    "BQGATE_ANCHOR_BUCKET",
    "BQGATE_APPROVALS_TOPIC",
    "BQGATE_AUDIT_KEY",
    "BQGATE_CALL_TIMEOUT_MS",
    "BQGATE_CONSOLE_CLIENT_ID",
    "BQGATE_CONSOLE_CLIENT_SECRET",
    "BQGATE_CONSOLE_ISSUER",
    "BQGATE_CONSOLE_SESSION_KEY",
    "BQGATE_EXECUTE_TOPIC",
    "BQGATE_EXECUTOR_URL",
    "BQGATE_FIRESTORE_DATABASE",
    "BQGATE_HMAC_KEY",
    "BQGATE_JOB_TIMEOUT_MS",
    "BQGATE_LOCATION",
    "BQGATE_POLICY",
    "BQGATE_PROJECT",
    "BQGATE_SLACK_BOT_TOKEN",
    "BQGATE_SLACK_CHANNEL",
    "BQGATE_SLACK_SIGNING_SECRET",
    "BQGATE_WAREHOUSE_PROJECT",
}
COMMON_ENV = {
    "BQGATE_ANCHOR_BUCKET",
    "BQGATE_APPROVALS_TOPIC",
    "BQGATE_CALL_TIMEOUT_MS",
    "BQGATE_EXECUTE_TOPIC",
    "BQGATE_FIRESTORE_DATABASE",
    "BQGATE_LOCATION",
    "BQGATE_POLICY",
    "BQGATE_PROJECT",
    "BQGATE_WAREHOUSE_PROJECT",
}
# entry point -> (plain env beyond COMMON_ENV, env from Secret Manager)
# Every function appends to the session record, so every one holds the chain key.
EXPECTED_ENV = {
    "approvals": (
        {"BQGATE_CONSOLE_CLIENT_ID", "BQGATE_CONSOLE_ISSUER"},
        {
            "BQGATE_AUDIT_KEY",
            "BQGATE_CONSOLE_CLIENT_SECRET",
            "BQGATE_CONSOLE_SESSION_KEY",
            "BQGATE_SLACK_BOT_TOKEN",
            "BQGATE_SLACK_SIGNING_SECRET",
        },
    ),
    "executor": ({"BQGATE_JOB_TIMEOUT_MS"}, {"BQGATE_AUDIT_KEY", "BQGATE_HMAC_KEY"}),
    "ingress": ({"BQGATE_EXECUTOR_URL"}, {"BQGATE_AUDIT_KEY"}),
    "mcp": ({"BQGATE_EXECUTOR_URL"}, {"BQGATE_AUDIT_KEY"}),
    "slack_notify": ({"BQGATE_SLACK_CHANNEL"}, {"BQGATE_AUDIT_KEY", "BQGATE_SLACK_BOT_TOKEN"}),
    "sweeper": (set(), {"BQGATE_AUDIT_KEY"}),
}
FORBIDDEN_TYPES = {
    "google_service_account_key",
    "google_secret_manager_secret_version",
    "google_secret_manager_regional_secret_version",
}

SA_REF = re.compile(r'google_service_account\.(\w+)(?:\[\s*"([^"]+)"\s*\])?')
TOPIC_REF = re.compile(r"google_pubsub_topic\.(\w+)")
SUB_REF = re.compile(r"google_pubsub_subscription\.(\w+)")
LOCAL_REF = re.compile(r"\blocal\.(\w+)")
PUBSUB_AGENT = "gcp-sa-pubsub.iam.gserviceaccount.com"


# --------------------------------------------------------------------------- model


@dataclass
class Block:
    kind: str  # "resource" or "data"
    type: str
    name: str
    body: dict[str, Any]
    file: str

    @property
    def address(self) -> str:
        prefix = "data." if self.kind == "data" else ""
        return f"{prefix}{self.type}.{self.name}"


@dataclass
class Config:
    blocks: list[Block] = field(default_factory=list)
    locals: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, list[str]] = field(default_factory=dict)  # file -> names in order
    outputs: dict[str, list[str]] = field(default_factory=dict)
    variable_bodies: dict[str, dict[str, Any]] = field(default_factory=dict)

    def resources(self, type_: str | None = None) -> list[Block]:
        return [
            b for b in self.blocks if b.kind == "resource" and (type_ is None or b.type == type_)
        ]

    def resource(self, type_: str, name: str) -> Block | None:
        return next((b for b in self.resources(type_) if b.name == name), None)


def _unquote(s: str) -> str:
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] == '"' else s


def load(tf_dir: Path) -> Config:
    """Parse every .tf file of one folder (not its modules)."""
    cfg = Config()
    for path in sorted(tf_dir.glob("*.tf")):
        with path.open() as fh:
            doc = hcl2.load(fh)
        for kind in ("resource", "data"):
            for entry in doc.get(kind, []):
                for type_, instances in entry.items():
                    for name, body in instances.items():
                        if not name.startswith("__"):
                            cfg.blocks.append(
                                Block(kind, _unquote(type_), _unquote(name), body, path.name)
                            )
        for entry in doc.get("locals", []):
            cfg.locals.update({k: v for k, v in entry.items() if not k.startswith("__")})
        for entry in doc.get("variable", []):
            for name, body in entry.items():
                if not name.startswith("__"):
                    cfg.variables.setdefault(path.name, []).append(_unquote(name))
                    cfg.variable_bodies[_unquote(name)] = body
        for entry in doc.get("output", []):
            for name in entry:
                if not name.startswith("__"):
                    cfg.outputs.setdefault(path.name, []).append(_unquote(name))
    return cfg


def literal(value: Any) -> str | None:
    """The string a value holds when it is a plain literal, else None."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        return None if "${" in inner else inner
    return None


def text(value: Any, cfg: Config, depth: int = 0) -> str:
    """All of an expression as text, with `local.X` references expanded."""
    if isinstance(value, dict):
        raw = " ".join(f"{k} = {text(v, cfg, depth)}" for k, v in value.items())
    elif isinstance(value, list):
        raw = " ".join(text(v, cfg, depth) for v in value)
    else:
        raw = str(value)
    if depth < 5:
        for name in set(LOCAL_REF.findall(raw)):
            if name in cfg.locals:
                raw += " " + text(cfg.locals[name], cfg, depth + 1)
    return raw


def first(body: dict[str, Any], key: str) -> dict[str, Any]:
    """The first nested block called `key` (empty when absent)."""
    blocks = body.get(key) or [{}]
    return blocks[0] if isinstance(blocks, list) else {}


def sa_refs(value: Any, cfg: Config) -> set[str]:
    return {f"{res}[{key}]" if key else res for res, key in SA_REF.findall(text(value, cfg))}


def functions(cfg: Config) -> dict[str, Block]:
    """Cloud Functions by entry point."""
    out = {}
    for fn in cfg.resources("google_cloudfunctions2_function"):
        entry = literal(first(fn.body, "build_config").get("entry_point"))
        out[entry or fn.name] = fn
    return out


# ------------------------------------------------------------------------ checkers


def executor_identities(cfg: Config) -> set[str]:
    fn = functions(cfg).get("executor")
    if fn is None:
        return set()
    return sa_refs(first(fn.body, "service_config").get("service_account_email"), cfg)


def _roles(value: Any, cfg: Config) -> tuple[set[str], bool]:
    """(role literals an expression can evaluate to, whether that set is complete)."""
    lit = literal(value)
    if lit is not None:
        return {lit}, True
    found = set(re.findall(r'"(roles/[^"\\]+)', text(value, cfg)))
    return found, bool(found) and "each." not in str(value) and "var." not in str(value)


def bigquery_grants_outside_executor(cfg: Config) -> list[str]:
    """Every grant that could give a BigQuery role to anyone but the executor's SA."""
    executor = executor_identities(cfg)
    problems = [] if executor else ["cannot find the executor function's service account"]
    for res in cfg.resources():
        if res.type.endswith("_iam_policy") or res.type.endswith("_iam_audit_config"):
            problems.append(f"{res.address}: authoritative IAM policies are not allowed here")
            continue
        if res.type == "google_bigquery_dataset_access" or res.type == "google_bigquery_dataset":
            grants = [res.body] if res.type.endswith("_access") else res.body.get("access", [])
            for grant in grants:
                who = {k: v for k, v in grant.items() if not k.startswith("__") and k != "role"}
                refs = sa_refs(who, cfg)
                if not refs or not refs <= executor:
                    problems.append(f"{res.address}: dataset access for {who} is not the executor")
            continue
        if not re.search(r"_iam_(member|binding)$", res.type):
            continue
        roles, complete = _roles(res.body.get("role"), cfg)
        maybe_bigquery = any(r.startswith("roles/bigquery.") for r in roles) or not complete
        if not maybe_bigquery:
            continue
        members = res.body.get("members", res.body.get("member"))
        members = members if isinstance(members, list) else [members]
        for member in members:
            refs = sa_refs(member, cfg)
            if not refs or not refs <= executor or literal(member) is not None:
                shown = sorted(roles) or [str(res.body.get("role"))]
                problems.append(
                    f"{res.address} ({res.file}): {', '.join(shown)} granted to {member}, "
                    f"which is not the executor's service account {sorted(executor)}"
                )
    return problems


def shared_or_default_service_accounts(cfg: Config) -> list[str]:
    """Each function must run as its own google_service_account resource."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    fns = functions(cfg)
    missing = set(FUNCTIONS) - set(fns)
    problems += [f"no function with entry point {name}" for name in sorted(missing)]
    for fn in fns.values():
        email = first(fn.body, "service_config").get("service_account_email")
        refs = sa_refs(email, cfg)
        if len(refs) != 1 or "each." in str(email):
            problems.append(f"{fn.address}: service_account_email {email!r} is not one SA resource")
            continue
        (ref,) = refs
        if ref in seen:
            problems.append(f"{fn.address} and {seen[ref]} share the service account {ref}")
        seen[ref] = fn.address
    return problems


def topics_without_dead_letter(cfg: Config) -> list[str]:
    """Every work topic is drained only by subscriptions that dead-letter."""
    problems = []
    topics = cfg.resources("google_pubsub_topic")
    for t in topics:
        if "for_each" in t.body or "count" in t.body:
            problems.append(f"{t.address}: for_each/count topics cannot be checked")
    subs = cfg.resources("google_pubsub_subscription")
    by_topic: dict[str, list[Block]] = {}
    for s in subs:
        for name in set(TOPIC_REF.findall(text(s.body.get("topic"), cfg))):
            by_topic.setdefault(name, []).append(s)
    dlq_of = {
        s.name: set(TOPIC_REF.findall(text(first(s.body, "dead_letter_policy"), cfg))) for s in subs
    }
    dead_letter_topics = set().union(*dlq_of.values()) if dlq_of else set()
    agent_grants = [
        (r, text(r.body, cfg))
        for r in cfg.resources()
        if r.type in ("google_pubsub_topic_iam_member", "google_pubsub_subscription_iam_member")
    ]

    def agent_has(type_: str, ref: re.Pattern[str], name: str, role: str) -> bool:
        return any(
            r.type == type_
            and name in ref.findall(text(r.body.get(type_.split("_")[2]), cfg))
            and literal(r.body.get("role")) == role
            and PUBSUB_AGENT in body
            for r, body in agent_grants
        )

    for t in topics:
        if t.name in dead_letter_topics:
            if not by_topic.get(t.name):
                problems.append(
                    f"dead-letter topic {t.name} has no subscription: messages are lost"
                )
            if not agent_has(
                "google_pubsub_topic_iam_member", TOPIC_REF, t.name, "roles/pubsub.publisher"
            ):
                problems.append(
                    f"Pub/Sub service agent cannot publish to dead-letter topic {t.name}"
                )
            continue
        if not by_topic.get(t.name):
            problems.append(f"topic {t.name} has no subscription with a dead-letter policy")
        for s in by_topic.get(t.name, []):
            targets = dlq_of[s.name]
            if not targets:
                problems.append(f"subscription {s.name} of {t.name} has no dead-letter policy")
            elif t.name in targets:
                problems.append(f"subscription {s.name} dead-letters into its own topic {t.name}")
            elif not agent_has(
                "google_pubsub_subscription_iam_member", SUB_REF, s.name, "roles/pubsub.subscriber"
            ):
                problems.append(f"Pub/Sub service agent cannot ack for dead-lettering on {s.name}")
    for fn in cfg.resources("google_cloudfunctions2_function"):
        if fn.body.get("event_trigger"):
            problems.append(
                f"{fn.address}: event_trigger's Eventarc subscription has no dead-letter policy"
            )
    return problems


def forbidden_resources(cfg: Config) -> list[str]:
    """No service account keys, and no secret values in Terraform (or its state)."""
    return [
        f"{b.address} ({b.file}) is not allowed" for b in cfg.blocks if b.type in FORBIDDEN_TYPES
    ]


def wrong_runtimes(cfg: Config) -> list[str]:
    return [
        f"{fn.address}: runtime {rt!r}, expected python312"
        for fn in cfg.resources("google_cloudfunctions2_function")
        if (rt := literal(first(fn.body, "build_config").get("runtime"))) != "python312"
    ]


def _env_names(value: Any, cfg: Config) -> set[str]:
    if isinstance(value, dict):
        return {_unquote(k) for k in value if not k.startswith("__")}
    names = set()
    for name in set(LOCAL_REF.findall(str(value))):
        names |= _env_names(cfg.locals.get(name, {}), cfg)
    names |= set(re.findall(r'[{,\s]"?([A-Z][A-Z0-9_]*)"?\s*=', str(value)))
    return names


def env_problems(cfg: Config) -> list[str]:
    """Environment variable names: from the settings table, and the right ones per function."""
    problems = []
    for entry, fn in sorted(functions(cfg).items()):
        svc = first(fn.body, "service_config")
        plain = _env_names(svc.get("environment_variables", {}), cfg)
        secret_blocks = svc.get("secret_environment_variables", [])
        secret = {literal(b.get("key")) or str(b.get("key")) for b in secret_blocks}
        if svc.get("dynamic"):
            problems.append(f"{fn.address}: dynamic blocks in service_config cannot be checked")
        for name in sorted((plain | secret) - ALLOWED_ENV):
            problems.append(f"{fn.address}: environment variable {name} is not a bqgate setting")
        extra, want_secret = EXPECTED_ENV.get(entry, (set(), set()))
        for name in sorted((COMMON_ENV | extra) - plain):
            problems.append(f"{fn.address}: environment variable {name} is not set")
        if secret != want_secret:
            problems.append(
                f"{fn.address}: secrets {sorted(secret)}, expected {sorted(want_secret)}"
            )
        for name in sorted(plain & {n for _, s in EXPECTED_ENV.values() for n in s}):
            problems.append(f"{fn.address}: {name} is a secret but set as a plain variable")
    return problems


def audit_problems(cfg: Config) -> list[str]:
    """The checkpoint bucket keeps what it is given (a retention policy, writers that can
    only create objects, a log sink routing the checkpoint lines into it), and only the
    functions and var.audit_verifiers may read the chain key."""
    problems = []
    bucket = cfg.resource("google_storage_bucket", "audit_anchors")
    if bucket is None:
        return ["no google_storage_bucket.audit_anchors"]
    policy = first(bucket.body, "retention_policy")
    if not policy.get("retention_period"):
        problems.append("the checkpoint bucket has no retention policy")
    if bucket.body.get("force_destroy") not in (False, None):
        problems.append("the checkpoint bucket may be force-destroyed")
    for grant in cfg.resources("google_storage_bucket_iam_member"):
        if "audit_anchors" not in str(grant.body.get("bucket")):
            continue
        role = literal(grant.body.get("role"))
        if role not in ("roles/storage.objectCreator", "roles/storage.objectViewer"):
            problems.append(f"{grant.address}: {role} on the checkpoint bucket")
    sinks = [
        s
        for s in cfg.resources("google_logging_project_sink")
        if "audit_anchors" in text(s.body.get("destination"), cfg)
    ]
    if not any("storage.googleapis.com" in text(s.body.get("destination"), cfg) for s in sinks):
        problems.append("no log sink routes the checkpoint lines into the checkpoint bucket")
    if not all("bqgate_anchor" in text(s.body.get("filter"), cfg) for s in sinks):
        problems.append("a checkpoint log sink does not filter on jsonPayload.bqgate_anchor")
    for grant in cfg.resources("google_secret_manager_secret_iam_member"):
        if "audit_chain_key" not in str(grant.body.get("secret_id")):
            continue
        member = str(grant.body.get("member"))
        each = str(grant.body.get("for_each"))
        functions_sas = sa_refs(each, cfg) == {"function"} and "each.value.member" in member
        if not (functions_sas or "var.audit_verifiers" in each):
            problems.append(f"{grant.address}: the chain key for {member}")
    return problems


CHECKERS: dict[str, Callable[[Config], list[str]]] = {
    "audit": audit_problems,
    "bigquery": bigquery_grants_outside_executor,
    "service_accounts": shared_or_default_service_accounts,
    "dead_letter": topics_without_dead_letter,
    "forbidden": forbidden_resources,
    "runtime": wrong_runtimes,
    "env": env_problems,
}


# ----------------------------------------------------------- the real configuration


@pytest.fixture(scope="module")
def cfg() -> Config:
    return load(TF_DIR)


@pytest.mark.parametrize("name", CHECKERS)
def test_configuration_is_clean(cfg: Config, name: str) -> None:
    assert CHECKERS[name](cfg) == []


def test_the_five_functions_exist_with_their_entry_points(cfg: Config) -> None:
    assert set(functions(cfg)) == set(FUNCTIONS)


def test_only_the_executor_has_bigquery_roles_and_it_has_them(cfg: Config) -> None:
    executor = executor_identities(cfg)
    grants = [
        r
        for r in cfg.resources()
        if r.type in ("google_project_iam_member", "google_bigquery_dataset_iam_member")
        and any(x.startswith("roles/bigquery.") for x in _roles(r.body.get("role"), cfg)[0])
    ]
    assert {r.type for r in grants} == {
        "google_project_iam_member",
        "google_bigquery_dataset_iam_member",
    }
    assert all(sa_refs(r.body["member"], cfg) == executor for r in grants)
    dataset = next(r for r in grants if r.type == "google_bigquery_dataset_iam_member")
    assert "var.warehouse_datasets" in str(dataset.body["for_each"])
    project_roles = {
        literal(r.body["role"]) for r in grants if r.type == "google_project_iam_member"
    }
    assert project_roles == {"roles/bigquery.jobUser"}  # data roles only per dataset


def grants_to(cfg: Config, sa: str) -> set[tuple[str, str, str]]:
    """(resource type, role, resource name) of every IAM grant whose member is ``sa``
    (``function[sweeper]``, ``scheduler`` ...), for_each grants over every function SA
    included."""
    out = set()
    for r in cfg.resources():
        if not re.search(r"_iam_(member|binding)$", r.type):
            continue
        member = r.body.get("member", r.body.get("members"))
        over_functions = "google_service_account.function" in str(r.body.get("for_each", ""))
        every_function = over_functions and "each.value" in str(member)
        if sa in sa_refs(member, cfg) or (every_function and sa.startswith("function[")):
            roles, _ = _roles(r.body.get("role"), cfg)
            out |= {(r.type, role, r.name) for role in roles}
    return out


def test_sweeper_and_scheduler_identities_have_only_their_roles(cfg: Config) -> None:
    """The sweeper reads and writes Firestore and publishes to the two work topics; the
    scheduler and the dead-letter push identity may only invoke the sweeper. No BigQuery."""
    assert grants_to(cfg, "function[sweeper]") == {
        ("google_project_iam_member", "roles/datastore.user", "datastore_user"),
        ("google_pubsub_topic_iam_member", "roles/pubsub.publisher", "sweeper_publisher"),
        # The session record, as every function: append checkpoints, read the chain key.
        ("google_storage_bucket_iam_member", "roles/storage.objectCreator", "audit_anchor_writer"),
        (
            "google_secret_manager_secret_iam_member",
            "roles/secretmanager.secretAccessor",
            "audit_chain_key",
        ),
    }
    publisher = cfg.resource("google_pubsub_topic_iam_member", "sweeper_publisher")
    assert publisher is not None
    assert set(TOPIC_REF.findall(text(publisher.body["for_each"], cfg))) == {
        "execute",
        "approvals",
    }
    invoker = ("google_cloud_run_v2_service_iam_member", "roles/run.invoker")
    assert grants_to(cfg, "scheduler") == {(*invoker, "sweeper_scheduler")}
    assert grants_to(cfg, "push[sweeper]") == {(*invoker, "sweeper_push")}
    for name in ("sweeper_scheduler", "sweeper_push"):
        grant = cfg.resource(*invoker[:1], name)
        assert grant is not None
        assert "google_cloudfunctions2_function.sweeper.name" in str(grant.body["name"])
    job = cfg.resource("google_cloud_scheduler_job", "sweep")
    assert job is not None
    target = first(job.body, "http_target")
    assert literal(target["http_method"]) == "POST"
    assert "google_cloudfunctions2_function.sweeper" in str(target["uri"])
    assert sa_refs(first(target, "oidc_token")["service_account_email"], cfg) == {"scheduler"}
    assert not [g for g in grants_to(cfg, "function[sweeper]") if "bigquery" in g[1]]
    fn = functions(cfg)["sweeper"]
    secrets = first(fn.body, "service_config").get("secret_environment_variables") or []
    assert [literal(b.get("key")) for b in secrets] == ["BQGATE_AUDIT_KEY"]


def test_every_work_topic_is_pushed_with_an_oidc_token(cfg: Config) -> None:
    pushed = {}
    for s in cfg.resources("google_pubsub_subscription"):
        push = first(s.body, "push_config")
        if push:
            assert first(push, "oidc_token").get("service_account_email"), s.name
            pushed[TOPIC_REF.findall(text(s.body["topic"], cfg))[0]] = s
    # The work topics, and the dead-letter topics (to the sweeper's dead-letter consumer).
    assert set(pushed) == {"execute", "approvals", "execute_dead_letter", "approvals_dead_letter"}


def test_firestore_ttl_and_indexes(cfg: Config) -> None:
    ttl = cfg.resource("google_firestore_field", "expire_at")
    assert ttl is not None and literal(ttl.body["field"]) == "expire_at"
    assert "ttl_config" in ttl.body
    assert set(json.loads(json.dumps(cfg.locals["firestore_ttl_collections"]))) == {
        '"approval_quotas"',
        '"events"',
        '"jobs"',
        '"outbox"',
        '"pages"',
        '"sessions"',
    }
    indexes = {
        (
            literal(i.body["collection"]),
            tuple(
                (literal(f["field_path"]), literal(f.get("order") or f.get("array_config")))
                for f in i.body["fields"]
            ),
        )
        for i in cfg.resources("google_firestore_index")
    }
    decided = ("approval.decided_at_ms", "DESCENDING")
    assert indexes == {
        ("jobs", (("owner", "ASCENDING"), ("created_ms", "DESCENDING"))),  # jobs.list
        ("sessions", (("principal", "ASCENDING"), ("started_at", "DESCENDING"))),
        # The console's history (FirestoreJobStore.decided).
        ("jobs", (("owner", "ASCENDING"), decided)),
        ("jobs", (("approval.status", "ASCENDING"), decided)),
        ("jobs", (("classification.tables", "CONTAINS"), decided)),
        ("jobs", (("approval.deciders", "CONTAINS"), decided)),
        # The approvers' list (FirestoreJobStore.pending_approvals): state ==, expire_at_ms >,
        # ordered by created_ms desc then the inequality field and the document name.
        (
            "jobs",
            (
                ("state", "ASCENDING"),
                ("created_ms", "DESCENDING"),
                ("expire_at_ms", "DESCENDING"),
                ("__name__", "DESCENDING"),
            ),
        ),
        # A requester's group of near-identical pending requests.
        (
            "jobs",
            (
                ("owner", "ASCENDING"),
                ("classification.statement_hash", "ASCENDING"),
                ("state", "ASCENDING"),
                ("expire_at_ms", "ASCENDING"),
            ),
        ),
        # The sweeper: expired requests, orphaned RUNNING jobs.
        ("jobs", (("state", "ASCENDING"), ("expire_at_ms", "ASCENDING"))),
        ("jobs", (("state", "ASCENDING"), ("started_ms", "ASCENDING"))),
    }


def test_variables_and_outputs_are_alphabetical_and_described(cfg: Config) -> None:
    assert list(cfg.variables) == ["variables.tf"] and list(cfg.outputs) == ["outputs.tf"]
    for names in (cfg.variables["variables.tf"], cfg.outputs["outputs.tf"]):
        assert names == sorted(names)
    for name, body in cfg.variable_bodies.items():
        assert literal(body.get("description")), name
        assert body.get("type"), name
    for name in ("project_id", "region", "policy_file", "warehouse_datasets", "name_prefix"):
        assert cfg.variable_bodies[name].get("validation"), name


# --------------------------------------------------- each checker can fail (mutants)


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "tf"
    shutil.copytree(TF_DIR, dst, ignore=shutil.ignore_patterns("build", ".terraform*", "modules"))
    return dst


def _inject(tf: Path, hcl: str) -> None:
    (tf / "injected.tf").write_text(hcl)


def _edit(tf: Path, file: str, old: str, new: str, count: int = 1) -> None:
    """Replace the first ``count`` matches of `old`, with any run of blanks matching any
    other."""
    path = tf / file
    src = path.read_text()
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(word) for word in old.split())
    edited, n = re.subn(pattern, lambda _: new, src, count=count)
    assert n == count, f"mutation anchor not found {count} times in {file}: {old!r}"

    path.write_text(edited)


def _drop_block(tf: Path, file: str, resource_header: str, block: str) -> None:
    """Remove the first `block { ... }` (one level of nesting) after resource_header."""
    path = tf / file
    src = path.read_text()
    start = src.index(resource_header)
    m = re.compile(r"\n  " + block + r" \{\n(?:    .*\n|\n)*?  \}\n").search(src, start)
    assert m, f"{block} not found after {resource_header}"
    path.write_text(src[: m.start()] + "\n" + src[m.end() :])


INGRESS = 'google_service_account.function["ingress"]'
EXECUTOR = 'google_service_account.function["executor"]'

MUTANTS: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "ingress_project_bigquery_grant": (
        "bigquery",
        lambda tf: _inject(
            tf,
            'resource "google_project_iam_member" "oops" {\n'
            "  project = var.project_id\n"
            '  role    = "roles/bigquery.dataViewer"\n'
            f"  member  = {INGRESS}.member\n"
            "}\n",
        ),
        "google_project_iam_member.oops",
    ),
    "ingress_dataset_grant": (
        "bigquery",
        lambda tf: _inject(
            tf,
            'resource "google_bigquery_dataset_iam_member" "oops" {\n'
            '  dataset_id = "sales"\n'
            '  role       = "roles/bigquery.dataViewer"\n'
            f'  member     = "serviceAccount:${{{INGRESS}.email}}"\n'
            "}\n",
        ),
        "google_bigquery_dataset_iam_member.oops",
    ),
    "binding_with_executor_and_ingress": (
        "bigquery",
        lambda tf: _inject(
            tf,
            'resource "google_bigquery_dataset_iam_binding" "oops" {\n'
            '  dataset_id = "sales"\n'
            '  role       = "roles/bigquery.dataEditor"\n'
            f"  members    = [{EXECUTOR}.member, {INGRESS}.member]\n"
            "}\n",
        ),
        "google_bigquery_dataset_iam_binding.oops",
    ),
    "unresolvable_role_for_every_sa": (
        "bigquery",
        lambda tf: _inject(
            tf,
            'resource "google_project_iam_member" "oops" {\n'
            "  for_each = google_service_account.function\n"
            "  project  = var.project_id\n"
            "  role     = var.some_role\n"
            "  member   = each.value.member\n"
            "}\n",
        ),
        "google_project_iam_member.oops",
    ),
    "literal_member_email": (
        "bigquery",
        lambda tf: _inject(
            tf,
            'resource "google_project_iam_member" "oops" {\n'
            "  project = var.project_id\n"
            '  role    = "roles/bigquery.admin"\n'
            '  member  = "serviceAccount:someone@p.iam.gserviceaccount.com"\n'
            "}\n",
        ),
        "google_project_iam_member.oops",
    ),
    "executor_role_moved_to_ingress": (
        "bigquery",
        lambda tf: _edit(
            tf,
            "iam.tf",
            f'role    = "roles/bigquery.jobUser"\n  member  = {EXECUTOR}.member',
            f'role    = "roles/bigquery.jobUser"\n  member  = {INGRESS}.member',
        ),
        "executor_bigquery_job_user",
    ),
    "two_functions_share_an_sa": (
        "service_accounts",
        lambda tf: _edit(tf, "functions.tf", f"{INGRESS}.email", f"{EXECUTOR}.email"),
        "share the service account",
    ),
    "function_on_default_compute_sa": (
        "service_accounts",
        lambda tf: _edit(
            tf,
            "functions.tf",
            'service_account_email = google_service_account.function["slack_notify"].email',
            'service_account_email = "123-compute@developer.gserviceaccount.com"',
        ),
        "is not one SA resource",
    ),
    "subscription_without_dead_letter": (
        "dead_letter",
        lambda tf: _drop_block(
            tf, "pubsub.tf", 'resource "google_pubsub_subscription" "execute"', "dead_letter_policy"
        ),
        "no dead-letter policy",
    ),
    "topic_without_subscription": (
        "dead_letter",
        lambda tf: _inject(tf, 'resource "google_pubsub_topic" "audit" {\n  name = "audit"\n}\n'),
        "topic audit has no subscription",
    ),
    "dead_letter_topic_not_drained": (
        "dead_letter",
        lambda tf: _edit(  # both of its subscriptions (the pull one and the sweeper's) moved
            tf,
            "pubsub.tf",
            "topic                      = google_pubsub_topic.approvals_dead_letter.id",
            "topic                      = google_pubsub_topic.execute_dead_letter.id",
            count=2,
        ),
        "approvals_dead_letter has no subscription",
    ),
    "sweeper_given_bigquery": (
        "bigquery",
        lambda tf: _inject(
            tf,
            'resource "google_project_iam_member" "oops" {\n'
            "  project = var.project_id\n"
            '  role    = "roles/bigquery.jobUser"\n'
            '  member  = google_service_account.function["sweeper"].member\n'
            "}\n",
        ),
        "google_project_iam_member.oops",
    ),
    "pubsub_agent_cannot_publish_dead_letters": (
        "dead_letter",
        lambda tf: _edit(
            tf,
            "iam.tf",
            "topic   = google_pubsub_topic.execute_dead_letter.name",
            "topic   = google_pubsub_topic.execute.name",
        ),
        "cannot publish to dead-letter topic execute_dead_letter",
    ),
    "event_trigger_instead_of_push": (
        "dead_letter",
        lambda tf: _edit(
            tf,
            "functions.tf",
            "  service_config {\n    service_account_email          = "
            'google_service_account.function["slack_notify"].email',
            "  event_trigger {\n"
            '    event_type   = "google.cloud.pubsub.topic.v1.messagePublished"\n'
            "    pubsub_topic = google_pubsub_topic.approvals.id\n"
            '    retry_policy = "RETRY_POLICY_RETRY"\n'
            "  }\n\n"
            "  service_config {\n    service_account_email          = "
            'google_service_account.function["slack_notify"].email',
        ),
        "event_trigger",
    ),
    "service_account_key": (
        "forbidden",
        lambda tf: _inject(
            tf,
            'resource "google_service_account_key" "k" {\n'
            f"  service_account_id = {INGRESS}.name\n"
            "}\n",
        ),
        "google_service_account_key.k",
    ),
    "secret_version_in_terraform": (
        "forbidden",
        lambda tf: _inject(
            tf,
            'resource "google_secret_manager_secret_version" "v" {\n'
            "  secret      = google_secret_manager_secret.slack_bot_token.id\n"
            '  secret_data = "xoxb-oops"\n'
            "}\n",
        ),
        "google_secret_manager_secret_version.v",
    ),
    "old_runtime": (
        "runtime",
        lambda tf: _edit(
            tf, "functions.tf", 'runtime         = "python312"', 'runtime         = "python311"'
        ),
        "python311",
    ),
    "dev_mode_in_the_cloud": (
        "env",
        lambda tf: _edit(
            tf, "locals.tf", 'BQGATE_POLICY             = "policy.yaml"', 'BQGATE_DEV_MODE = "1"'
        ),
        "BQGATE_DEV_MODE is not a bqgate setting",
    ),
    "misspelt_env_var": (
        "env",
        lambda tf: _edit(tf, "functions.tf", "BQGATE_EXECUTOR_URL =", "BQGATE_EXECUTOR_URI ="),
        "BQGATE_EXECUTOR_URI",
    ),
    "secret_on_the_wrong_function": (
        "env",
        lambda tf: _edit(
            tf,
            "functions.tf",
            'key        = "BQGATE_HMAC_KEY"',
            'key        = "BQGATE_SLACK_BOT_TOKEN"',
        ),
        "expected ['BQGATE_AUDIT_KEY', 'BQGATE_HMAC_KEY']",
    ),
    "anchor_bucket_without_retention": (
        "audit",
        lambda tf: _drop_block(
            tf, "audit.tf", 'resource "google_storage_bucket" "audit_anchors"', "retention_policy"
        ),
        "no retention policy",
    ),
    "anchor_writer_may_delete": (
        "audit",
        lambda tf: _edit(
            tf,
            "audit.tf",
            'role     = "roles/storage.objectCreator"\n  member   = each.value.member',
            'role     = "roles/storage.objectAdmin"\n  member   = each.value.member',
        ),
        "roles/storage.objectAdmin",
    ),
    "chain_key_for_everyone": (
        "audit",
        lambda tf: _inject(
            tf,
            'resource "google_secret_manager_secret_iam_member" "oops" {\n'
            "  secret_id = google_secret_manager_secret.audit_chain_key.secret_id\n"
            '  role      = "roles/secretmanager.secretAccessor"\n'
            '  member    = "user:someone@example.com"\n'
            "}\n",
        ),
        "google_secret_manager_secret_iam_member.oops",
    ),
}


@pytest.mark.parametrize("mutant", MUTANTS)
def test_checker_reports_mutant(tmp_path: Path, mutant: str) -> None:
    checker, mutate, expected = MUTANTS[mutant]
    tf = _copy(tmp_path)
    assert CHECKERS[checker](load(tf)) == []
    mutate(tf)
    problems = CHECKERS[checker](load(tf))
    assert any(expected in p for p in problems), problems


def test_every_checker_has_a_mutant() -> None:
    assert {checker for checker, _, _ in MUTANTS.values()} == set(CHECKERS)


def _iter_strings(v: Any) -> Iterator[str]:
    if isinstance(v, dict):
        for k, x in v.items():
            yield k
            yield from _iter_strings(x)
    elif isinstance(v, list):
        for x in v:
            yield from _iter_strings(x)
    elif isinstance(v, str):
        yield v


def test_no_bigquery_role_text_outside_executor_grants(cfg: Config) -> None:
    """Belt and braces: the string roles/bigquery appears only in executor grants."""
    for b in cfg.blocks:
        if any("roles/bigquery" in s for s in _iter_strings(b.body)):
            assert sa_refs(b.body.get("member"), cfg) == executor_identities(cfg), b.address
