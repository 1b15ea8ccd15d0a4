"""Configuration, read from the environment in one place.

Every other module takes explicit arguments; only the function entry points and
the CLI call :func:`from_env`. The README's environment table and Terraform use
exactly these names.

>>> s = from_env({"BQGATE_PROJECT": "p1", "BQGATE_DEV_MODE": "1"})
>>> (s.project, s.warehouse_project, s.dev_mode, s.execute_topic)
('p1', 'p1', True, 'execute')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bqgate.chain import DEV_KEY_FILE
from bqgate.errors import BqgateError

#: The audience of the dev issuer's tokens (the demo policy's, and ``bqgate token``'s default).
DEV_AUDIENCE = "bqgate"
#: The dev issuer's OAuth client for the console, and where the dev stack keeps its secrets.
DEV_CONSOLE_CLIENT_ID = "bqgate"
DEV_CONSOLE_SECRET_FILE = "console-client-secret"
DEV_CONSOLE_SESSION_KEY_FILE = "console-session.key"

#: name -> (default, description). The README's environment table lists exactly these, in
#: this order (``tests/unit/test_settings.py`` checks it).
ENV_VARS: dict[str, tuple[str, str]] = {
    "BQGATE_PROJECT": ("demo-project", "Gateway project: Firestore and Pub/Sub live here."),
    "BQGATE_WAREHOUSE_PROJECT": (
        "",
        "BigQuery project the executor runs and bills jobs in (defaults to BQGATE_PROJECT).",
    ),
    "BQGATE_POLICY": (
        "policies/default.yaml",
        "Path of the policy file (policy.yaml in a bundle).",
    ),
    "BQGATE_EXECUTE_TOPIC": ("execute", "Pub/Sub topic of jobs ready to run."),
    "BQGATE_APPROVALS_TOPIC": ("approvals", "Pub/Sub topic of jobs that need approval."),
    "BQGATE_LOCATION": ("US", "BigQuery location of the jobs."),
    "BQGATE_FIRESTORE_DATABASE": ("(default)", "Firestore database id."),
    "BQGATE_EXECUTOR_URL": (
        "",
        "Executor HTTPS URL for the direct fast path of allowed queries "
        "(empty: allowed queries go through the execute topic).",
    ),
    "BQGATE_CATALOG_URL": (
        "",
        "Executor URL the ingress reads table metadata from (default: BQGATE_EXECUTOR_URL).",
    ),
    "BQGATE_BIGQUERY_ENDPOINT": ("", "BigQuery API endpoint override (dev: the local emulator)."),
    "BQGATE_DEV_MODE": ("", "1 trusts the local dev issuer. Never set in the cloud."),
    "BQGATE_DEV_ISSUER": ("", "URL of the local dev OIDC issuer (dev mode only)."),
    "BQGATE_DEV_DIR": (".bqgate-dev", "State folder of the local dev stack."),
    "BQGATE_SLACK_CHANNEL": ("#bqgate-approvals", "Slack channel for approval requests."),
    "BQGATE_SLACK_API_URL": ("", "Slack Web API base URL override (dev: the local stand-in)."),
    "BQGATE_SLACK_BOT_TOKEN": ("", "Slack bot token (secret)."),
    "BQGATE_SLACK_SIGNING_SECRET": ("", "Slack signing secret (secret)."),
    "BQGATE_HMAC_KEY": ("", "Masking HMAC key (secret); dev: read from the dev state folder."),
    "BQGATE_AUDIT_KEY": (
        "",
        "Session record chain key (secret, 32+ bytes, hex); dev: read from the dev state folder.",
    ),
    "BQGATE_ANCHOR_BUCKET": (
        "",
        "Cloud Storage bucket (retention policy) the session checkpoints are written to.",
    ),
    "BQGATE_ANCHOR_DIR": (
        "",
        "Folder the session checkpoints are written to (dev default: "
        "`anchors/` in the dev state folder).",
    ),
    "BQGATE_ANCHOR_FLUSH_MS": (
        "1000",
        "Longest a session checkpoint waits before it is "
        "written to the bucket/folder (0: at once, on the request path).",
    ),
    "BQGATE_ANCHOR_LOG": (
        "1",
        "1 also writes each checkpoint as a structured log line (Cloud Logging).",
    ),
    "BQGATE_MAX_WAIT_MS": ("10000", "Longest a getQueryResults/jobs.query call waits for a job."),
    "BQGATE_MCP_WAIT_MS": (
        "30000",
        "Longest an MCP execute_sql call waits for its job (an "
        "approval) before it answers with the pending request.",
    ),
    "BQGATE_CALL_TIMEOUT_MS": (
        "5000",
        "Deadline of each Firestore and Pub/Sub call, the client "
        "library's retries included (an outage answers 503 after it).",
    ),
    "BQGATE_JOB_TIMEOUT_MS": (
        "480000",
        "Longest the executor waits for one BigQuery job before "
        "cancelling it; keep it under the executor function's timeout.",
    ),
    "BQGATE_DISPATCH_TIMEOUT_MS": (
        "1500",
        "Longest a hand-off publish waits on a request path (an Approve click, jobs.insert) "
        "before the outbox's reconciler takes over.",
    ),
    "BQGATE_REDISPATCH_AFTER_MS": (
        "20000",
        "Outbox deadline: a hand-off not marked sent after this is re-published by the sweeper.",
    ),
    "BQGATE_RUNNING_DEADLINE_MS": (
        "1200000",
        "The sweeper fails a job still RUNNING this long after it started (its executor died).",
    ),
    "BQGATE_APPROVALS_URL": (
        "",
        "Dev only: the approvals function's URL, where the Slack stand-in "
        "sends signed interaction payloads.",
    ),
    "BQGATE_APPROVER_TOKEN": (
        "",
        "`bqgate approve/deny/approvals`: the approver's OIDC token "
        "(default in dev: minted by the dev issuer).",
    ),
    "BQGATE_CONSOLE_ISSUER": (
        "",
        "OIDC issuer the approver console signs people in with (e.g. "
        "https://accounts.google.com); dev: the dev issuer.",
    ),
    "BQGATE_CONSOLE_CLIENT_ID": (
        "",
        "The console's OAuth client id; it must be one of that issuer's audiences in the "
        "policy. Empty: the console is off (dev: bqgate).",
    ),
    "BQGATE_CONSOLE_CLIENT_SECRET": (
        "",
        "The console's OAuth client secret (secret); dev: read from the dev state folder.",
    ),
    "BQGATE_CONSOLE_SESSION_KEY": (
        "",
        "Key that signs the console's session cookie (secret); dev: read from the dev "
        "state folder.",
    ),
    "BQGATE_CACHE": (
        "~/.cache/bqgate",
        "Dev only: where the BigQuery emulator's venv is installed.",
    ),
    "FIRESTORE_EMULATOR_HOST": ("", "host:port of the Firestore emulator (dev and tests)."),
    "PUBSUB_EMULATOR_HOST": ("", "host:port of the Pub/Sub emulator (dev and tests)."),
}


@dataclass(frozen=True)
class Settings:
    project: str
    warehouse_project: str
    policy_path: Path
    execute_topic: str
    approvals_topic: str
    location: str
    firestore_database: str
    executor_url: str
    catalog_url: str
    bigquery_endpoint: str
    dev_mode: bool
    dev_issuer: str
    dev_dir: Path
    slack_channel: str
    slack_api_url: str
    slack_bot_token: str = field(repr=False)
    slack_signing_secret: str = field(repr=False)
    hmac_key: bytes = field(repr=False)
    max_wait_ms: int
    call_timeout_ms: int = 5000
    job_timeout_ms: int = 480_000
    audit_key: str = field(default="", repr=False)
    anchor_bucket: str = ""
    anchor_dir: Path | None = None
    anchor_flush_ms: int = 1000
    anchor_log: bool = True
    dispatch_timeout_ms: int = 1500
    redispatch_after_ms: int = 20000
    running_deadline_ms: int = 1_200_000
    console_issuer: str = ""
    console_client_id: str = ""
    console_client_secret: str = field(default="", repr=False)
    console_session_key: bytes = field(default=b"", repr=False)
    mcp_wait_ms: int = 30_000


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str:
        return env.get(name) or ENV_VARS[name][0]

    project = get("BQGATE_PROJECT")
    dev_dir = Path(get("BQGATE_DEV_DIR"))
    dev_mode = get("BQGATE_DEV_MODE").lower() in {"1", "true", "yes"}

    def secret(name: str, dev_file: str) -> bytes:
        """A secret from the environment; in dev mode, else from the dev state folder."""
        value = get(name).encode()
        if not value and dev_mode and (dev_dir / dev_file).exists():
            value = (dev_dir / dev_file).read_bytes().strip()
        return value

    hmac_key = secret("BQGATE_HMAC_KEY", "hmac.key")
    audit_key = get("BQGATE_AUDIT_KEY")
    anchor_dir = Path(get("BQGATE_ANCHOR_DIR")) if get("BQGATE_ANCHOR_DIR") else None
    if dev_mode:
        key_file = dev_dir / DEV_KEY_FILE
        if not audit_key and key_file.exists():
            audit_key = key_file.read_text().strip()
        anchor_dir = anchor_dir or dev_dir / "anchors"
    # Dev mode signs approvers in with the dev issuer, as its registered client.
    console_issuer = get("BQGATE_CONSOLE_ISSUER") or (get("BQGATE_DEV_ISSUER") if dev_mode else "")
    console_client_id = get("BQGATE_CONSOLE_CLIENT_ID") or (
        DEV_CONSOLE_CLIENT_ID if dev_mode else ""
    )

    def integer(name: str) -> int:
        try:
            value = int(get(name))
        except ValueError as exc:
            raise BqgateError(f"{name}: not an integer: {exc}") from None
        if value < 0:
            raise BqgateError(f"{name}: must not be negative")
        return value

    def milliseconds(name: str) -> int:
        value = integer(name)
        if value == 0:
            raise BqgateError(f"{name}: must be a positive number of milliseconds")
        return value

    max_wait_ms = integer("BQGATE_MAX_WAIT_MS")
    return Settings(
        project=project,
        warehouse_project=get("BQGATE_WAREHOUSE_PROJECT") or project,
        policy_path=Path(get("BQGATE_POLICY")),
        execute_topic=get("BQGATE_EXECUTE_TOPIC"),
        approvals_topic=get("BQGATE_APPROVALS_TOPIC"),
        location=get("BQGATE_LOCATION"),
        firestore_database=get("BQGATE_FIRESTORE_DATABASE"),
        executor_url=get("BQGATE_EXECUTOR_URL"),
        catalog_url=get("BQGATE_CATALOG_URL") or get("BQGATE_EXECUTOR_URL"),
        bigquery_endpoint=get("BQGATE_BIGQUERY_ENDPOINT"),
        dev_mode=dev_mode,
        dev_issuer=get("BQGATE_DEV_ISSUER"),
        dev_dir=dev_dir,
        slack_channel=get("BQGATE_SLACK_CHANNEL"),
        slack_api_url=get("BQGATE_SLACK_API_URL"),
        slack_bot_token=get("BQGATE_SLACK_BOT_TOKEN"),
        slack_signing_secret=get("BQGATE_SLACK_SIGNING_SECRET"),
        hmac_key=hmac_key,
        max_wait_ms=max_wait_ms,
        call_timeout_ms=milliseconds("BQGATE_CALL_TIMEOUT_MS"),
        job_timeout_ms=milliseconds("BQGATE_JOB_TIMEOUT_MS"),
        audit_key=audit_key,
        anchor_bucket=get("BQGATE_ANCHOR_BUCKET"),
        anchor_dir=anchor_dir,
        anchor_flush_ms=integer("BQGATE_ANCHOR_FLUSH_MS"),
        anchor_log=get("BQGATE_ANCHOR_LOG").lower() in {"1", "true", "yes"},
        dispatch_timeout_ms=milliseconds("BQGATE_DISPATCH_TIMEOUT_MS"),
        redispatch_after_ms=milliseconds("BQGATE_REDISPATCH_AFTER_MS"),
        running_deadline_ms=milliseconds("BQGATE_RUNNING_DEADLINE_MS"),
        console_issuer=console_issuer.rstrip("/"),
        console_client_id=console_client_id,
        console_client_secret=secret(
            "BQGATE_CONSOLE_CLIENT_SECRET", DEV_CONSOLE_SECRET_FILE
        ).decode(),
        console_session_key=secret("BQGATE_CONSOLE_SESSION_KEY", DEV_CONSOLE_SESSION_KEY_FILE),
        mcp_wait_ms=integer("BQGATE_MCP_WAIT_MS"),
    )
