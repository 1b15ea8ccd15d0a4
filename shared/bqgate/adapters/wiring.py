"""Lazy wiring: the services each function needs, built on first use and cached.

Nothing here runs at import, so cold starts stay fast and imports need no
credentials (python-docs-samples ``tips-lazy-globals``).
"""

from __future__ import annotations

import atexit
import functools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bqgate import settings as settings_mod
from bqgate.policy import Policy, load_policy
from bqgate.service.gateway import Gateway, GatewayConfig
from bqgate.settings import Settings

if TYPE_CHECKING:
    from bqgate.adapters.anchor_sinks import Checkpointer
    from bqgate.chain import ChainKey
    from bqgate.service.executor import Executor
    from bqgate.service.sweeper import Sweeper

log = logging.getLogger("bqgate")


@functools.cache
def settings() -> Settings:
    return settings_mod.from_env()


@functools.cache
def policy() -> Policy:
    return load_policy(settings().policy_path)


@functools.cache
def firestore_client() -> Any:
    from google.cloud import firestore

    s = settings()
    return firestore.Client(project=s.project, database=s.firestore_database)


@functools.cache
def publisher() -> Any:
    # google-cloud-pubsub ships no py.typed: mypy sees no pubsub_v1 in google.cloud.
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    return pubsub_v1.PublisherClient()


@functools.cache
def bigquery_client() -> Any:
    from google.api_core.client_options import ClientOptions
    from google.cloud import bigquery

    s = settings()
    if s.bigquery_endpoint:
        from google.auth.credentials import AnonymousCredentials

        # A local emulator: only ever used in dev mode, never with real credentials.
        creds = AnonymousCredentials() if s.dev_mode else None
        return bigquery.Client(
            project=s.warehouse_project,
            credentials=creds,
            location=s.location,
            client_options=ClientOptions(api_endpoint=s.bigquery_endpoint),
        )
    return bigquery.Client(project=s.warehouse_project, location=s.location)


@functools.cache
def job_store() -> Any:
    from bqgate.adapters.firestore_store import FirestoreJobStore

    return FirestoreJobStore(
        firestore_client(),
        retention_seconds=policy().sessions.retention_seconds,
        call_timeout_s=settings().call_timeout_ms / 1000,
    )


@functools.cache
def queue() -> Any:
    from bqgate.adapters.pubsub_queue import PubSubQueue

    s = settings()
    # Hand-offs are bounded: past the timeout the outbox record stays due, and is re-sent.
    return PubSubQueue(publisher(), s.project, timeout_s=s.dispatch_timeout_ms / 1000)


@functools.cache
def warehouse() -> Any:
    from bqgate.adapters.bigquery_warehouse import BigQueryWarehouse

    s = settings()
    return BigQueryWarehouse(
        bigquery_client(),
        project=s.warehouse_project,
        location=s.location,
        job_timeout_s=s.job_timeout_ms / 1000,
    )


@functools.cache
def verifier() -> Any:
    from bqgate.adapters.oidc import OidcVerifier

    s = settings()
    return OidcVerifier.from_policy(
        policy(), dev_mode=s.dev_mode, dev_issuer_url=s.dev_issuer or None
    )


@functools.cache
def chain_key() -> ChainKey:
    """The session record's chain key; without one nothing can be recorded (fail closed)."""
    from bqgate.chain import ChainKey
    from bqgate.errors import BqgateError

    s = settings()
    if not s.audit_key:
        raise BqgateError("BQGATE_AUDIT_KEY is not set: the session record cannot be sealed")
    return ChainKey.from_text(s.audit_key)


@functools.cache
def storage_client() -> Any:
    # google-cloud-storage ships no py.typed: mypy sees no storage in google.cloud.
    from google.cloud import storage  # type: ignore[attr-defined]

    return storage.Client(project=settings().project)


@functools.cache
def checkpointer() -> Checkpointer:
    """Session checkpoints: a log line at once, the bucket/folder in batches (flushed at exit)."""
    from bqgate.adapters.anchor_sinks import Checkpointer, FolderSink, GcsSink, LogSink
    from bqgate.ports import CheckpointSink

    s = settings()
    batched: list[CheckpointSink] = []
    if s.anchor_bucket:
        batched.append(GcsSink(storage_client(), s.anchor_bucket))
    if s.anchor_dir is not None:
        batched.append(FolderSink(s.anchor_dir))
    if not batched:
        log.warning(
            "no BQGATE_ANCHOR_BUCKET or BQGATE_ANCHOR_DIR: session checkpoints go to the log only"
        )
    cp = Checkpointer(
        chain_key(),
        immediate=[LogSink()] if s.anchor_log else [],
        batched=batched,
        interval_s=s.anchor_flush_ms / 1000,
    )
    atexit.register(cp.close)
    return cp


@functools.cache
def recorder() -> Any:
    from bqgate.adapters.firestore_audit import FirestoreRecorder

    sessions = policy().sessions
    return FirestoreRecorder(
        firestore_client(),
        key=chain_key(),
        checkpoint=checkpointer().note,
        retention_seconds=sessions.retention_seconds,
        record_rows=sessions.record_rows,
        rpc_timeout_s=settings().call_timeout_ms / 1000,
    )


class Lazy:
    """Stands in for an object built on first use (attribute access), so a request that
    does not need a client never pays for importing or connecting it."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._obj: Any = None

    def _get(self) -> Any:
        if self._obj is None:
            with self._lock:
                if self._obj is None:
                    self._obj = self._factory()
        return self._obj

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)


def _classifier() -> Any:
    pol = policy()

    def run(sql: str, **kwargs: Any) -> dict[str, Any]:
        from bqgate.sql.classify import classify  # imported by the first classification

        return classify(sql, policy=pol, **kwargs).to_dict()

    return run


@functools.cache
def gateway() -> Gateway:
    s = settings()
    pol = policy()
    return Gateway(
        store=job_store(),
        queue=Lazy(queue),  # with the fast path, only needed for fallbacks
        classify=_classifier(),
        config=GatewayConfig(
            execute_topic=s.execute_topic,
            approvals_topic=s.approvals_topic,
            location=s.location,
            max_wait_ms=s.max_wait_ms,
            approval_ttl_ms=pol.approvals.ttl_seconds * 1000,
            max_pending_per_principal=pol.approvals.max_pending_per_principal,
            redispatch_after_ms=s.redispatch_after_ms,
        ),
        recorder=recorder(),
        dispatch=direct_executor(),
    )


def direct_executor() -> Any:
    """The fast path to the executor when ``BQGATE_EXECUTOR_URL`` is set, else None."""
    s = settings()
    if not s.executor_url:
        return None
    from bqgate.adapters.executor_client import DirectExecutor, google_id_token

    token = (lambda: None) if s.dev_mode else google_id_token(s.executor_url)
    return DirectExecutor(
        s.executor_url,
        queue=Lazy(queue),
        topic=s.execute_topic,
        timeout_s=s.max_wait_ms / 1000 + 20,
        token=token,
    )


@functools.cache
def executor() -> Executor:
    from bqgate.service.executor import Executor, ExecutorConfig

    s = settings()
    return Executor(
        store=job_store(),
        warehouse=Lazy(warehouse),  # built by the first job that runs
        policy=policy(),
        hmac_key=s.hmac_key,
        queue=Lazy(queue),
        approvals_topic=s.approvals_topic,
        recorder=recorder(),
        config=ExecutorConfig(redispatch_after_ms=s.redispatch_after_ms),
        warehouse_project=s.warehouse_project,
    )


@functools.cache
def catalog() -> Any:
    """Ingress side: table metadata read by the executor, in a bounded cache."""
    from bqgate.service.catalog import CachedCatalog, CatalogClient

    s = settings()
    if not s.catalog_url:
        return CachedCatalog(CatalogClient(_no_catalog))
    from bqgate.adapters.executor_client import catalog_transport, google_id_token

    token = (lambda: None) if s.dev_mode else google_id_token(s.catalog_url)
    return CachedCatalog(CatalogClient(catalog_transport(s.catalog_url, token=token)))


def _no_catalog(request: Any) -> Any:
    from bqgate.errors import Unavailable

    raise Unavailable("Table metadata is not configured on this gateway (BQGATE_EXECUTOR_URL)")


@functools.cache
def metadata_api() -> Any:
    from bqgate.service.metadata import MetadataApi

    return MetadataApi(
        catalog=catalog(), policy=policy(), jobs=job_store(), owned_job=gateway()._owned
    )


@functools.cache
def tabledata_api() -> Any:
    from bqgate.service.tables import TableDataApi

    return TableDataApi(gateway=gateway(), catalog=catalog(), metadata=metadata_api())


@functools.cache
def ingress_app() -> Any:
    from bqgate.service.ingress import IngressApp

    return IngressApp(gateway, verifier, metadata_api, tabledata_api)


@functools.cache
def mcp_tools() -> Any:
    """The MCP tools (functions/mcp): the ingress's own gateway and metadata cores."""
    from bqgate.service.mcp import McpConfig, McpTools

    return McpTools(
        gateway=gateway(),
        metadata=metadata_api(),
        config=McpConfig(
            wait_ms=settings().mcp_wait_ms, required_approvals=policy().approvals.required
        ),
    )


@functools.cache
def mcp_app() -> Any:
    from bqgate.adapters.mcp_server import McpHttpApp

    return McpHttpApp(mcp_tools, verifier)


@functools.cache
def catalog_app() -> Any:
    """Executor side: the catalog endpoint the ingress calls (BigQuery metadata)."""
    from bqgate.service.catalog import CatalogApp, CatalogService

    def service() -> CatalogService:
        from bqgate.adapters.bigquery_catalog import BigQueryCatalog

        return CatalogService(BigQueryCatalog(bigquery_client()), policy())

    return CatalogApp(functools.cache(service))


# --- approvals (Slack interactions, approver API, slack_notify) ---------------------------


@functools.cache
def notifier() -> Any:
    from bqgate.adapters.slack import SlackNotifier

    return SlackNotifier.from_settings(settings())


@functools.cache
def approval_service() -> Any:
    from bqgate.service.approvals import ApprovalService

    s = settings()
    return ApprovalService(
        store=job_store(),
        queue=queue(),
        policy=policy(),
        notifier=notifier,
        verifier=verifier,
        signing_secret=s.slack_signing_secret,
        slack_channel=s.slack_channel,
        execute_topic=s.execute_topic,
        approvals_topic=s.approvals_topic,
        recorder=recorder(),
        redispatch_after_ms=s.redispatch_after_ms,
        # A hand-off younger than its publish timeout may still be in flight.
        dispatch_grace_ms=s.dispatch_timeout_ms + 1000,
    )


@functools.cache
def approvals_app() -> Any:
    from bqgate.service.approvals import ApprovalsApp

    return ApprovalsApp(approval_service)


# --- sweeper (Cloud Scheduler, dead-letter topics) ---------------------------------------


@functools.cache
def sweeper() -> Sweeper:
    from bqgate.service.sweeper import Sweeper, SweeperConfig

    s = settings()
    return Sweeper(
        store=job_store(),
        queue=queue(),
        config=SweeperConfig(
            execute_topic=s.execute_topic,
            approvals_topic=s.approvals_topic,
            running_deadline_ms=s.running_deadline_ms,
            redispatch_after_ms=s.redispatch_after_ms,
        ),
        recorder=recorder(),
    )


@functools.cache
def sweeper_app() -> Any:
    from bqgate.service.sweeper import SweeperApp

    return SweeperApp(sweeper)


# --- the approver console (served by the approvals function under /console) ---------------


@functools.cache
def job_history() -> Any:
    return job_store()  # FirestoreJobStore.decided answers the console's history


def console_evidence() -> tuple[Any, Any]:
    """The chain keys and every checkpoint, for the console's session viewer (read each
    time: checkpoints keep arriving). No chain key: ``(None, empty index)``."""
    from bqgate.adapters.anchor_sinks import FolderSink, GcsSink
    from bqgate.anchors import AnchorIndex
    from bqgate.chain import ChainKeyError, Keyring
    from bqgate.errors import BqgateError

    s = settings()
    try:
        keys = Keyring([chain_key()])
    except (BqgateError, ChainKeyError):
        return None, AnchorIndex()
    if s.anchor_bucket:
        sources: Any = GcsSink(storage_client(), s.anchor_bucket).read()
    elif s.anchor_dir is not None:
        sources = FolderSink(s.anchor_dir).read()
    else:
        sources = ()
    return keys, AnchorIndex.read(sources, keys)


@functools.cache
def console_app() -> Any:
    from bqgate.adapters.console_web import ConsoleApp, ConsoleConfig, ConsoleDeps

    s = settings()
    config = ConsoleConfig(
        issuer=s.console_issuer,
        client_id=s.console_client_id,
        client_secret=s.console_client_secret,
        session_key=s.console_session_key,
        dev_mode=s.dev_mode,
    )
    deps = ConsoleDeps(
        service=approval_service,
        verifier=verifier,
        policy=policy(),
        history=job_history,
        sessions=recorder,
        evidence=console_evidence,
    )
    return ConsoleApp(config, deps)
