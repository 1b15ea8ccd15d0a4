"""Plan-level facts about infra/terraform, read from the evaluated configuration.

``infra.tfeval`` evaluates the .tf files offline (variables, locals, for_each on
resources, modules and dynamic blocks), so every checker sees each resource
instance with its arguments, as a plan would. Each fact is a checker that returns
the problems it finds (empty means fine), so the real configuration is asserted
clean and every checker is also shown to catch a broken copy of it (the mutation
tests at the bottom).

The checkers fail closed: a grant whose role or member they cannot resolve to a
literal or to a service account resource is reported, not trusted, and so is a
for_each they cannot evaluate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bqgate.settings import ENV_VARS
from infra.tfeval import Config, Instance, Unknown, load, render, strings

REPO = Path(__file__).resolve().parents[2]
TF_DIR = REPO / "infra" / "terraform"
DEPLOYED = Path(__file__).parent / "fixtures" / "deployed_addresses.json"
#: Instances added on purpose since fixtures/deployed_addresses.json was taken: an upgrade
#: creates exactly these (and moves everything else).
ADDED_SINCE_DEPLOYED = frozenset(
    {
        # The MCP server runs the gateway core, which publishes closing messages.
        'google_pubsub_topic_iam_member.publisher["mcp/approvals"]',
    }
)

# The input variables the checks evaluate the configuration with: the public front
# (the default), and Cloud Run IAM in front of ingress and mcp.
BASE_VARS: dict[str, Any] = {
    "project_id": "acme-bqgate",
    "policy_file": "../../policies/default.yaml",
    "warehouse_datasets": {"analytics": "write", "sales": "read"},
    "audit_verifiers": ["group:security@example.com"],
}
AGENTS = ["group:ai-agents@acme.com", "serviceAccount:ci@acme-ci.iam.gserviceaccount.com"]
VARIANTS: dict[str, dict[str, Any]] = {
    "public": BASE_VARS,
    "cloud_run_iam": {**BASE_VARS, "require_cloud_run_iam": True, "ingress_invokers": AGENTS},
}

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
# Who may invoke each function (roles/run.invoker): service account references, or
# literal members ("agents" stands for allUsers, or var.ingress_invokers with Cloud
# Run IAM in front).
EXPECTED_INVOKERS = {
    "approvals": {"allUsers"},
    "executor": {"push[executor]", "function[ingress]", "function[mcp]"},
    "ingress": {"agents"},
    "mcp": {"agents"},
    "slack_notify": {"push[slack_notify]"},
    "sweeper": {"push[sweeper]", "scheduler"},
}

SA_REF = re.compile(r'google_service_account\.(\w+)(?:\[\s*"([^"]+)"\s*\])?')
TOPIC_REF = re.compile(r'google_pubsub_topic\.(\w+(?:\["[^"]+"\])?)')
SUB_REF = re.compile(r'google_pubsub_subscription\.(\w+(?:\["[^"]+"\])?)')
FUNCTION_REF = re.compile(
    r'module\.\w+\["(\w+)"\]\.google_cloudfunctions2_function\.function(?![\w\[])'
)
PUBSUB_AGENT = "gcp-sa-pubsub.iam.gserviceaccount.com"


# --------------------------------------------------------------------------- model


def literal(value: Any) -> str | None:
    """The string a value holds when it is known, else None."""
    return value if isinstance(value, str) else None


def first(body: dict[str, Any], key: str) -> dict[str, Any]:
    """The first nested block called `key` (empty when absent)."""
    blocks = body.get(key) or [{}]
    return blocks[0] if isinstance(blocks, list) and isinstance(blocks[0], dict) else {}


def sa_refs(value: Any) -> set[str]:
    return {f"{res}[{key}]" if key else res for res, key in SA_REF.findall(render(value))}


def local_id(instance: Instance, type_: str) -> str:
    """'work["execute"]' for google_pubsub_topic.work["execute"]."""
    return instance.address.removeprefix(instance.module).removeprefix(f"{type_}.")


def functions(cfg: Config) -> dict[str, Instance]:
    """Cloud Functions by entry point."""
    out = {}
    for fn in cfg.resources("google_cloudfunctions2_function"):
        entry = literal(first(fn.body, "build_config").get("entry_point"))
        out[entry or fn.address] = fn
    return out


# ------------------------------------------------------------------------ checkers


def unexpanded(cfg: Config) -> list[str]:
    """Every for_each evaluates offline (else nothing below sees its instances)."""
    return [f"{address}: for_each cannot be evaluated offline" for address in cfg.unexpanded]


def executor_identities(cfg: Config) -> set[str]:
    fn = functions(cfg).get("executor")
    if fn is None:
        return set()
    return sa_refs(first(fn.body, "service_config").get("service_account_email"))


def _roles(value: Any) -> tuple[set[str], bool]:
    """(role literals an expression can evaluate to, whether that set is complete)."""
    lit = literal(value)
    if lit is not None:
        return {lit}, True
    return set(re.findall(r"(roles/[\w.]+)", render(value))), False


def _members(res: Instance) -> list[Any]:
    members = res.body.get("members", res.body.get("member"))
    return members if isinstance(members, list) else [members]


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
                who = {k: v for k, v in grant.items() if k != "role"}
                refs = sa_refs(who)
                if not refs or not refs <= executor:
                    problems.append(f"{res.address}: dataset access for {who} is not the executor")
            continue
        if not re.search(r"_iam_(member|binding)$", res.type):
            continue
        roles, complete = _roles(res.body.get("role"))
        maybe_bigquery = any(r.startswith("roles/bigquery.") for r in roles) or not complete
        if not maybe_bigquery:
            continue
        for member in _members(res):
            refs = sa_refs(member)
            if not refs or not refs <= executor or literal(member) is not None:
                shown = sorted(roles) or [render(res.body.get("role"))]
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
        refs = sa_refs(email)
        if len(refs) != 1 or not isinstance(email, Unknown) or not email.ref:
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
    topics = {local_id(t, "google_pubsub_topic"): t for t in cfg.resources("google_pubsub_topic")}
    subs = {
        local_id(s, "google_pubsub_subscription"): s
        for s in cfg.resources("google_pubsub_subscription")
    }
    by_topic: dict[str, list[str]] = {}
    for name, s in subs.items():
        for topic in set(TOPIC_REF.findall(render(s.body.get("topic")))):
            by_topic.setdefault(topic, []).append(name)
    dlq_of = {
        name: set(TOPIC_REF.findall(render(s.body.get("dead_letter_policy"))))
        for name, s in subs.items()
    }
    dead_letter_topics = set().union(*dlq_of.values()) if dlq_of else set()
    agent_grants = [
        r
        for r in cfg.resources()
        if r.type in ("google_pubsub_topic_iam_member", "google_pubsub_subscription_iam_member")
        and PUBSUB_AGENT in render(r.body.get("member"))
    ]

    def agent_has(type_: str, ref: re.Pattern[str], name: str, role: str) -> bool:
        return any(
            r.type == type_
            and name in ref.findall(render(r.body.get(type_.split("_")[2])))
            and literal(r.body.get("role")) == role
            for r in agent_grants
        )

    for name in topics:
        if name in dead_letter_topics:
            if not by_topic.get(name):
                problems.append(f"dead-letter topic {name} has no subscription: messages are lost")
            if not agent_has(
                "google_pubsub_topic_iam_member", TOPIC_REF, name, "roles/pubsub.publisher"
            ):
                problems.append(f"Pub/Sub service agent cannot publish to dead-letter topic {name}")
            continue
        if not by_topic.get(name):
            problems.append(f"topic {name} has no subscription with a dead-letter policy")
        for sub in by_topic.get(name, []):
            targets = dlq_of[sub]
            if not targets:
                problems.append(f"subscription {sub} of {name} has no dead-letter policy")
            elif name in targets:
                problems.append(f"subscription {sub} dead-letters into its own topic {name}")
            elif not agent_has(
                "google_pubsub_subscription_iam_member", SUB_REF, sub, "roles/pubsub.subscriber"
            ):
                problems.append(f"Pub/Sub service agent cannot ack for dead-lettering on {sub}")
    for fn in cfg.resources("google_cloudfunctions2_function"):
        if fn.body.get("event_trigger"):
            problems.append(
                f"{fn.address}: event_trigger's Eventarc subscription has no dead-letter policy"
            )
    return problems


def forbidden_resources(cfg: Config) -> list[str]:
    """No service account keys, and no secret values in Terraform (or its state)."""
    return [
        f"{b.address} ({b.file}) is not allowed" for b in cfg.instances if b.type in FORBIDDEN_TYPES
    ]


def wrong_runtimes(cfg: Config) -> list[str]:
    return [
        f"{fn.address}: runtime {rt!r}, expected python312"
        for fn in cfg.resources("google_cloudfunctions2_function")
        if (rt := literal(first(fn.body, "build_config").get("runtime"))) != "python312"
    ]


def _mounts(fn: Instance) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(plain environment, secret_environment_variables blocks) of a function."""
    svc = first(fn.body, "service_config")
    env = svc.get("environment_variables", {})
    return env if isinstance(env, dict) else {"?": env}, svc.get("secret_environment_variables", [])


def env_problems(cfg: Config) -> list[str]:
    """Environment variable names: from the settings table, and the right ones per function."""
    problems = []
    for entry, fn in sorted(functions(cfg).items()):
        env, secret_blocks = _mounts(fn)
        if "?" in env or any("__unknown__" in b for b in secret_blocks):
            problems.append(f"{fn.address}: environment variables cannot be evaluated")
        plain = set(env) - {"?"}
        secret = {literal(b.get("key")) or render(b.get("key")) for b in secret_blocks}
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


def secret_grant_problems(cfg: Config) -> list[str]:
    """A function's identity may read exactly the secrets the function mounts."""
    problems = []
    mounted: dict[str, set[str]] = {}  # function SA -> secret references it mounts
    for fn in functions(cfg).values():
        sa = sa_refs(first(fn.body, "service_config").get("service_account_email"))
        _, secret_blocks = _mounts(fn)
        for ref in sa:
            mounted.setdefault(ref, set()).update(render(b.get("secret")) for b in secret_blocks)
    granted: dict[str, set[str]] = {}
    for grant in cfg.resources("google_secret_manager_secret_iam_member"):
        for ref in sa_refs(grant.body.get("member")) & set(mounted):
            secret = render(grant.body.get("secret_id"))
            granted.setdefault(ref, set()).add(secret)
            if secret not in mounted[ref]:
                problems.append(
                    f"{grant.address}: {ref} may read {secret}, which it does not mount"
                )
    for ref, secrets in sorted(mounted.items()):
        for secret in sorted(secrets - granted.get(ref, set())):
            problems.append(f"{ref} mounts {secret} but may not read it")
    return problems


def invoker_problems(cfg: Config) -> list[str]:
    """Who may invoke each function is exactly EXPECTED_INVOKERS."""
    agents = (
        set(cfg.values.get("ingress_invokers") or [])
        if cfg.values.get("require_cloud_run_iam")
        else {"allUsers"}
    )
    found: dict[str, set[str]] = {}
    problems = []
    for grant in cfg.resources():
        if grant.type.endswith("_iam_member") and literal(grant.body.get("role")) in (
            "roles/run.invoker",
            "roles/cloudfunctions.invoker",
        ):
            targets = set(FUNCTION_REF.findall(render(grant.body.get("name"))))
            if len(targets) != 1:
                problems.append(f"{grant.address}: invoker grant on {targets or 'no function'}")
            member = grant.body.get("member")
            who = sa_refs(member) or {literal(member) or render(member)}
            for target in targets:
                found.setdefault(target, set()).update(who)
    for fn, expected in EXPECTED_INVOKERS.items():
        want = {m for e in expected for m in (agents if e == "agents" else {e})}
        if found.get(fn, set()) != want:
            problems.append(
                f"{fn} may be invoked by {sorted(found.get(fn, set()))}, not {sorted(want)}"
            )
    return problems


def audit_problems(cfg: Config) -> list[str]:
    """The checkpoint bucket keeps what it is given (a retention policy, writers that can
    only create objects, a log sink routing the checkpoint lines into it), and only the
    functions and var.audit_verifiers may read the chain key."""
    problems = []
    bucket = cfg.by_address("google_storage_bucket.audit_anchors")
    if bucket is None:
        return ["no google_storage_bucket.audit_anchors"]
    policy = first(bucket.body, "retention_policy")
    if not policy.get("retention_period"):
        problems.append("the checkpoint bucket has no retention policy")
    if bucket.body.get("force_destroy") not in (False, None):
        problems.append("the checkpoint bucket may be force-destroyed")
    for grant in cfg.resources("google_storage_bucket_iam_member"):
        if "audit_anchors" not in render(grant.body.get("bucket")):
            continue
        role = literal(grant.body.get("role"))
        if role not in ("roles/storage.objectCreator", "roles/storage.objectViewer"):
            problems.append(f"{grant.address}: {role} on the checkpoint bucket")
    sinks = [
        s
        for s in cfg.resources("google_logging_project_sink")
        if "audit_anchors" in render(s.body.get("destination"))
    ]
    if not any("storage.googleapis.com" in render(s.body.get("destination")) for s in sinks):
        problems.append("no log sink routes the checkpoint lines into the checkpoint bucket")
    if not all("bqgate_anchor" in render(s.body.get("filter")) for s in sinks):
        problems.append("a checkpoint log sink does not filter on jsonPayload.bqgate_anchor")
    function_sas = {
        ref
        for fn in functions(cfg).values()
        for ref in sa_refs(first(fn.body, "service_config").get("service_account_email"))
    }
    verifiers = set(cfg.values.get("audit_verifiers") or [])
    for grant in cfg.resources("google_secret_manager_secret_iam_member"):
        if "audit_chain_key" not in render(grant.body.get("secret_id")):
            continue
        member = grant.body.get("member")
        refs = sa_refs(member)
        if not ((refs and refs <= function_sas) or literal(member) in verifiers):
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
    "secret_grants": secret_grant_problems,
    "invokers": invoker_problems,
    "expanded": unexpanded,
}


# ----------------------------------------------------------- the real configuration


@pytest.fixture(scope="module", params=list(VARIANTS))
def cfg(request: pytest.FixtureRequest) -> Config:
    return load(TF_DIR, VARIANTS[request.param])


@pytest.mark.parametrize("name", CHECKERS)
def test_configuration_is_clean(cfg: Config, name: str) -> None:
    assert CHECKERS[name](cfg) == []


def test_the_six_functions_exist_with_their_entry_points(cfg: Config) -> None:
    assert set(functions(cfg)) == set(FUNCTIONS)


def test_terraform_sets_only_names_settings_reads() -> None:
    """ALLOWED_ENV (what the env checker accepts) is part of the settings table, and the
    dev-only names are not in it."""
    assert set(ENV_VARS) >= ALLOWED_ENV
    assert not {n for n in ALLOWED_ENV if n.startswith("BQGATE_DEV_")}


def test_each_function_in_the_table_has_what_it_reads(cfg: Config) -> None:
    """local.functions names every function, with the settings and secrets its code
    reads; the deployed function is what the table says."""
    table = cfg.locals["functions"]
    secret_env = cfg.locals["secrets"]
    assert set(table) == set(FUNCTIONS)
    for name, fn in table.items():
        extra, secrets = EXPECTED_ENV[name]
        executor_url = {"BQGATE_EXECUTOR_URL"} if fn["calls_executor"] else set()
        assert set(fn["env"]) | executor_url == extra, name
        assert {secret_env[s] for s in ["audit_chain_key", *fn["secrets"]]} == secrets, name
        deployed = functions(cfg)[name]
        env, mounted = _mounts(deployed)
        assert [b["key"] for b in mounted] == [
            secret_env[s] for s in ["audit_chain_key", *fn["secrets"]]
        ]
        assert set(env) == COMMON_ENV | extra, name
        svc = first(deployed.body, "service_config")
        assert (svc["available_memory"], svc["timeout_seconds"]) == (fn["memory"], fn["timeout"])


def test_only_the_executor_has_bigquery_roles_and_it_has_them(cfg: Config) -> None:
    executor = executor_identities(cfg)
    grants = [
        r
        for r in cfg.resources()
        if r.type in ("google_project_iam_member", "google_bigquery_dataset_iam_member")
        and any(x.startswith("roles/bigquery.") for x in _roles(r.body.get("role"))[0])
    ]
    assert {r.type for r in grants} == {
        "google_project_iam_member",
        "google_bigquery_dataset_iam_member",
    }
    assert all(sa_refs(r.body["member"]) == executor for r in grants)
    datasets = {
        r.key: r.body["role"] for r in grants if r.type == "google_bigquery_dataset_iam_member"
    }
    assert datasets == {
        "analytics": "roles/bigquery.dataEditor",
        "sales": "roles/bigquery.dataViewer",
    }
    project_roles = {
        literal(r.body["role"]) for r in grants if r.type == "google_project_iam_member"
    }
    assert project_roles == {"roles/bigquery.jobUser"}  # data roles only per dataset


def grants_to(cfg: Config, sa: str) -> set[tuple[str, str, str]]:
    """(resource type, role, instance address) of every IAM grant whose member is ``sa``
    (``function[sweeper]``, ``scheduler`` ...)."""
    out = set()
    for r in cfg.resources():
        if not re.search(r"_iam_(member|binding)$", r.type):
            continue
        if any(sa in sa_refs(m) for m in _members(r)):
            roles, _ = _roles(r.body.get("role"))
            out |= {(r.type, role, r.address) for role in roles}
    return out


def test_sweeper_and_scheduler_identities_have_only_their_roles(cfg: Config) -> None:
    """The sweeper reads and writes Firestore and publishes to the two work topics; the
    scheduler and the dead-letter push identity may only invoke the sweeper. No BigQuery."""
    sweeper = 'module.function["sweeper"]'
    assert grants_to(cfg, "function[sweeper]") == {
        (
            "google_project_iam_member",
            "roles/datastore.user",
            'google_project_iam_member.datastore_user["sweeper"]',
        ),
        *(
            (
                "google_pubsub_topic_iam_member",
                "roles/pubsub.publisher",
                f'google_pubsub_topic_iam_member.publisher["sweeper/{topic}"]',
            )
            for topic in ("approvals", "execute")
        ),
        # The session record, as every function: append checkpoints, read the chain key.
        (
            "google_storage_bucket_iam_member",
            "roles/storage.objectCreator",
            'google_storage_bucket_iam_member.audit_anchor_writer["sweeper"]',
        ),
        (
            "google_secret_manager_secret_iam_member",
            "roles/secretmanager.secretAccessor",
            f'{sweeper}.google_secret_manager_secret_iam_member.secret["BQGATE_AUDIT_KEY"]',
        ),
    }
    topics = {
        t
        for addr in ('publisher["sweeper/approvals"]', 'publisher["sweeper/execute"]')
        for t in TOPIC_REF.findall(
            render(cfg.by_address(f"google_pubsub_topic_iam_member.{addr}").body["topic"])  # type: ignore[union-attr]
        )
    }
    assert topics == {'work["execute"]', 'work["approvals"]'}
    invoker = ("google_cloud_run_v2_service_iam_member", "roles/run.invoker")
    run_iam = f"{sweeper}.google_cloud_run_v2_service_iam_member.invoker"
    assert grants_to(cfg, "scheduler") == {(*invoker, f'{run_iam}["scheduler"]')}
    assert grants_to(cfg, "push[sweeper]") == {(*invoker, f'{run_iam}["push"]')}
    for key in ("scheduler", "push"):
        grant = cfg.by_address(f'{run_iam}["{key}"]')
        assert grant is not None
        assert FUNCTION_REF.findall(render(grant.body["name"])) == ["sweeper"]
    job = cfg.by_address("google_cloud_scheduler_job.sweep")
    assert job is not None
    target = first(job.body, "http_target")
    assert literal(target["http_method"]) == "POST"
    assert FUNCTION_REF.findall(render(target["uri"])) == ["sweeper"]
    assert sa_refs(first(target, "oidc_token")["service_account_email"]) == {"scheduler"}
    assert not [g for g in grants_to(cfg, "function[sweeper]") if "bigquery" in g[1]]
    fn = functions(cfg)["sweeper"]
    secrets = first(fn.body, "service_config").get("secret_environment_variables") or []
    assert [literal(b.get("key")) for b in secrets] == ["BQGATE_AUDIT_KEY"]


def test_every_work_topic_is_pushed_with_an_oidc_token(cfg: Config) -> None:
    pushed = {}
    for s in cfg.resources("google_pubsub_subscription"):
        push = first(s.body, "push_config")
        if push:
            assert first(push, "oidc_token").get("service_account_email"), s.address
            pushed[TOPIC_REF.findall(render(s.body["topic"]))[0]] = s
    # The work topics, and the dead-letter topics (to the sweeper's dead-letter consumer).
    assert set(pushed) == {
        'work["execute"]',
        'work["approvals"]',
        'dead_letter["execute"]',
        'dead_letter["approvals"]',
    }


def test_cloud_run_iam_without_invokers_fails_the_plan() -> None:
    """require_cloud_run_iam with no ingress_invokers stops the plan at ingress and mcp
    (their precondition), and at nothing else."""
    cfg = load(TF_DIR, {**BASE_VARS, "require_cloud_run_iam": True, "ingress_invokers": []})
    failing = {
        name
        for name, fn in functions(cfg).items()
        for check in first(fn.body, "lifecycle").get("precondition", [])
        if check["condition"] is not True
    }
    assert failing == {"ingress", "mcp"}
    assert "ingress_invokers" in first(
        first(functions(cfg)["ingress"].body, "lifecycle"), "precondition"
    ).get("error_message", "")


def _address(address: str) -> tuple[str, str, str | None]:
    """('module.function["x"].', 'google_x.y', key or None) of an instance address."""
    m = re.fullmatch(
        r'((?:module\.\w+\["[^"]+"\]\.)*)((?:data\.)?\w+\.\w+)(?:\["([^"]+)"\])?', address
    )
    assert m, address
    return m.group(1), m.group(2), m.group(3)


def _stand_in(address: str) -> str:
    """The terraform_data address standing in for a resource address (any depth)."""
    return re.sub(
        r'(?<![\w"])(google_\w+|archive_\w+)\.(\w+)',
        lambda m: f"terraform_data.{m.group(1)}__{m.group(2)}",
        address,
    )


def _stand_in_config(addresses: list[str], root: Path) -> None:
    """A configuration of terraform_data resources (Terraform's own, no provider to
    fetch) at these resource instance addresses, modules included."""
    tree: dict[str, dict[str, set[str | None]]] = {}  # module call -> resource -> keys
    for address in addresses:
        prefix, resource, key = _address(address)
        if resource.startswith("data."):
            continue
        tree.setdefault(prefix, {}).setdefault(resource, set()).add(key)

    def resource_block(resource: str, keys: set[str | None], per_instance: bool) -> str:
        name = _stand_in(resource).split(".", 1)[1]
        if keys == {None}:
            return f'resource "terraform_data" "{name}" {{\n}}\n'
        each = f'lookup(var.keys, "{name}", [])' if per_instance else json.dumps(sorted(keys))
        return f'resource "terraform_data" "{name}" {{\n  for_each = toset({each})\n}}\n'

    root.mkdir(parents=True)
    (root / "main.tf").write_text(
        "".join(resource_block(r, k, False) for r, k in sorted(tree.pop("", {}).items()))
    )
    calls: dict[str, dict[str, dict[str, list[str]]]] = {}  # call -> instance -> keys
    for prefix, resources in tree.items():
        m = re.fullmatch(r'module\.(\w+)\["([^"]+)"\]\.', prefix)
        assert m, f"nested modules are not stood in for: {prefix}"
        call, instance = m.groups()
        calls.setdefault(call, {})[instance] = {
            _stand_in(r).split(".", 1)[1]: sorted(k for k in keys if k is not None)
            for r, keys in resources.items()
        }
        folder = root / call
        folder.mkdir(exist_ok=True)
        (folder / "main.tf").write_text(
            'variable "keys" {\n  type = map(list(string))\n}\n'
            + "".join(resource_block(r, k, True) for r, k in sorted(resources.items()))
        )
    for call, instances in sorted(calls.items()):
        (root / f"{call}.tf").write_text(
            f'module "{call}" {{\n  source   = "./{call}"\n'
            f"  for_each = {json.dumps(instances)}\n  keys     = each.value\n}}\n"
        )


def _terraform(folder: Path, *argv: str) -> str:
    done = subprocess.run(
        ["terraform", *argv, "-input=false", "-no-color"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "TF_IN_AUTOMATION": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_deployed_instance_is_moved_not_replaced(tmp_path: Path, variant: str) -> None:
    """Deployments hold the instances in fixtures/deployed_addresses.json (the
    configuration before each kind of thing was written once). Terraform itself, on
    terraform_data stand-ins at those addresses, applies them, then plans the current
    configuration's addresses with moved.tf.json: every instance moves and nothing is
    created or destroyed."""
    assert shutil.which("terraform"), "the terraform binary is part of this machine kind"
    cfg = load(TF_DIR, VARIANTS[variant])
    assert cfg.moved == [], "moved blocks live in moved.tf.json (tf-check reads *.tf)"
    moved = json.loads((TF_DIR / "moved.tf.json").read_text())["moved"]
    deployed = json.loads(DEPLOYED.read_text())[variant]
    work = tmp_path / "deployed"
    _stand_in_config(deployed, work)
    _terraform(work, "init", "-backend=false")
    _terraform(work, "apply", "-auto-approve")

    current = tmp_path / "current"
    _stand_in_config([i.address for i in cfg.instances], current)
    stand_in_moves = [{"from": _stand_in(m["from"]), "to": _stand_in(m["to"])} for m in moved]
    (current / "moved.tf.json").write_text(json.dumps({"moved": stand_in_moves}))
    shutil.copy(work / "terraform.tfstate", current / "terraform.tfstate")
    _terraform(current, "init", "-backend=false")
    plan = _terraform(current, "plan")
    added = len(ADDED_SINCE_DEPLOYED)
    assert f"{added} to add, 0 to change, 0 to destroy" in plan, plan
    created = set(re.findall(r"^  # (\S+) will be created$", plan, flags=re.M))
    assert created == {_stand_in(a) for a in ADDED_SINCE_DEPLOYED}, plan
    moves = re.findall(r"^  # (\S+) has moved to (\S+)$", plan, flags=re.M)
    kept = {_stand_in(a) for a in deployed if not a.startswith("data.")} & {
        _stand_in(i.address) for i in cfg.instances if i.address not in ADDED_SINCE_DEPLOYED
    }
    assert len(moves) + len(kept) == len([a for a in deployed if not a.startswith("data.")])


def test_firestore_ttl_and_indexes(cfg: Config) -> None:
    ttl = [f for f in cfg.resources("google_firestore_field")]
    assert {literal(f.body["field"]) for f in ttl} == {"expire_at"}
    assert all("ttl_config" in f.body for f in ttl)
    assert {f.body["collection"] for f in ttl} == {
        "approval_quotas",
        "events",
        "jobs",
        "outbox",
        "pages",
        "sessions",
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
    files = {
        kind: [f for f, ds in cfg.declared_in.items() for k, _ in ds if k == kind]
        for kind in ("variable", "output")
    }
    assert set(files["variable"]) == {"variables.tf"} and set(files["output"]) == {"outputs.tf"}
    for file in ("variables.tf", "outputs.tf"):
        names = [name for _, name in cfg.declared_in[file]]
        assert names == sorted(names)
    for name, body in cfg.variables.items():
        assert literal(body.get("description")), name
        assert body.get("type"), name
    for name in ("project_id", "region", "policy_file", "warehouse_datasets", "name_prefix"):
        assert cfg.variables[name]["validation"], name


def test_no_bigquery_role_text_outside_executor_grants(cfg: Config) -> None:
    """Belt and braces: the string roles/bigquery appears only in executor grants."""
    for b in cfg.instances:
        if any("roles/bigquery" in s for s in strings(b.body)):
            assert sa_refs(b.body.get("member")) == executor_identities(cfg), b.address


# --------------------------------------------------- each checker can fail (mutants)


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "tf"
    shutil.copytree(TF_DIR, dst, ignore=shutil.ignore_patterns("build", ".terraform*"))
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


def _drain_approvals_dead_letters_elsewhere(tf: Path) -> None:
    """Both subscriptions of approvals' dead-letter topic (the pull one and the
    sweeper's) read execute's instead."""
    _edit(
        tf,
        "pubsub.tf",
        "topic                = google_pubsub_topic.dead_letter[t]",
        'topic                = google_pubsub_topic.dead_letter["execute"]',
    )
    _edit(
        tf,
        "pubsub.tf",
        "topic                      = google_pubsub_topic.dead_letter[each.key].id",
        'topic                      = google_pubsub_topic.dead_letter["execute"].id',
    )


INGRESS = 'google_service_account.function["ingress"]'
EXECUTOR = 'google_service_account.function["executor"]'
SA_OF_EACH = "service_account_email = google_service_account.function[k].email"
FUNCTION_MODULE = "modules/function/main.tf"

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
        lambda tf: _edit(
            tf,
            "functions.tf",
            SA_OF_EACH,
            'service_account_email = google_service_account.function[k == "ingress" ? '
            '"executor" : k].email',
        ),
        "share the service account",
    ),
    "function_on_default_compute_sa": (
        "service_accounts",
        lambda tf: _edit(
            tf,
            "functions.tf",
            SA_OF_EACH,
            'service_account_email = k == "slack_notify" ? '
            '"123-compute@developer.gserviceaccount.com" : '
            "google_service_account.function[k].email",
        ),
        "is not one SA resource",
    ),
    "subscription_without_dead_letter": (
        "dead_letter",
        lambda tf: _edit(
            tf,
            "pubsub.tf",
            "dead_letter_topics   = [google_pubsub_topic.dead_letter[t].id]",
            'dead_letter_topics   = t == "execute" ? [] : [google_pubsub_topic.dead_letter[t].id]',
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
        _drain_approvals_dead_letters_elsewhere,
        'dead-letter topic dead_letter["approvals"] has no subscription',
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
            "for_each = google_pubsub_topic.dead_letter\n  project  = var.project_id\n"
            "  topic    = each.value.name",
            "for_each = google_pubsub_topic.dead_letter\n  project  = var.project_id\n"
            "  topic    = google_pubsub_topic.work[each.key].name",
        ),
        'cannot publish to dead-letter topic dead_letter["execute"]',
    ),
    "event_trigger_instead_of_push": (
        "dead_letter",
        lambda tf: _edit(
            tf,
            FUNCTION_MODULE,
            "  service_config {",
            "  event_trigger {\n"
            '    event_type   = "google.cloud.pubsub.topic.v1.messagePublished"\n'
            '    retry_policy = "RETRY_POLICY_RETRY"\n'
            "  }\n\n"
            "  service_config {",
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
            '  secret      = google_secret_manager_secret.secret["slack_bot_token"].id\n'
            '  secret_data = "xoxb-oops"\n'
            "}\n",
        ),
        "google_secret_manager_secret_version.v",
    ),
    "old_runtime": (
        "runtime",
        lambda tf: _edit(
            tf, FUNCTION_MODULE, 'runtime         = "python312"', 'runtime         = "python311"'
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
            "locals.tf",
            'secrets        = ["masking_hmac_key"]',
            'secrets        = ["slack_bot_token"]',
        ),
        "expected ['BQGATE_AUDIT_KEY', 'BQGATE_HMAC_KEY']",
    ),
    "secret_readable_but_not_mounted": (
        "secret_grants",
        lambda tf: _inject(
            tf,
            'resource "google_secret_manager_secret_iam_member" "oops" {\n'
            '  secret_id = google_secret_manager_secret.secret["slack_bot_token"].secret_id\n'
            '  role      = "roles/secretmanager.secretAccessor"\n'
            '  member    = google_service_account.function["sweeper"].member\n'
            "}\n",
        ),
        "google_secret_manager_secret_iam_member.oops",
    ),
    "secret_mounted_but_not_readable": (
        "secret_grants",
        lambda tf: _edit(
            tf,
            FUNCTION_MODULE,
            "for_each  = { for s in var.function.secrets : s.env => s.secret_id }",
            "for_each  = { for s in var.function.secrets : s.env => s.secret_id "
            'if s.env != "BQGATE_HMAC_KEY" }',
        ),
        'mounts google_secret_manager_secret.secret["masking_hmac_key"].secret_id '
        "but may not read it",
    ),
    "executor_invokable_by_all": (
        "invokers",
        lambda tf: _edit(
            tf,
            "iam.tf",
            '{ push = google_service_account.push["executor"].member }',
            '{ push = google_service_account.push["executor"].member, all = "allUsers" }',
        ),
        "executor may be invoked by",
    ),
    "for_each_known_only_after_apply": (
        "expanded",
        lambda tf: _inject(
            tf,
            'resource "google_project_iam_member" "oops" {\n'
            f"  for_each = toset([{INGRESS}.email])\n"
            "  project  = var.project_id\n"
            '  role     = "roles/datastore.user"\n'
            "  member   = each.value\n"
            "}\n",
        ),
        "google_project_iam_member.oops: for_each cannot be evaluated",
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
            '  secret_id = google_secret_manager_secret.secret["audit_chain_key"].secret_id\n'
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
    assert CHECKERS[checker](load(tf, BASE_VARS)) == []
    mutate(tf)
    problems = CHECKERS[checker](load(tf, BASE_VARS))
    assert any(expected in p for p in problems), problems


def test_every_checker_has_a_mutant() -> None:
    assert {checker for checker, _, _ in MUTANTS.values()} == set(CHECKERS)


def test_functions_running_the_gateway_core_may_publish_to_both_work_topics(cfg: Config) -> None:
    """The ingress and the MCP server run the same gateway core (bqgate.bootstrap.gateway):
    it hands jobs to the execute topic when the direct call fails, and publishes the close
    of a cancelled or expired approval's Slack message to the approvals topic."""
    for name in ("ingress", "mcp"):
        for topic in ("approvals", "execute"):
            grant = cfg.by_address(f'google_pubsub_topic_iam_member.publisher["{name}/{topic}"]')
            assert grant is not None, f"{name} cannot publish to {topic}"
            assert TOPIC_REF.findall(render(grant.body["topic"])) == [f'work["{topic}"]']
