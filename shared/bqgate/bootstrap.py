"""The composition root: the services each function needs, built from the settings.

One idiom for everything: a ``functools.cache`` factory, called where its object is first
needed. Nothing is built at import, so cold starts stay fast and imports need no credentials
(python-docs-samples ``tips-lazy-globals``); a service built before it needs a client
(the gateway's queue, only for fallbacks of the fast path) gets the factory's call deferred.
Every factory says what it builds, so mypy checks each adapter against the port it is
handed to.
"""

from __future__ import annotations

import atexit
import functools
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bqgate import settings as settings_mod
from bqgate.policy import Policy, load_policy
from bqgate.settings import Settings

if TYPE_CHECKING:
    from bqgate.adapters.anchor_sinks import Checkpointer
    from bqgate.adapters.bigquery_warehouse import BigQueryWarehouse
    from bqgate.adapters.console_web import ConsoleApp
    from bqgate.adapters.executor_client import DirectExecutor
    from bqgate.adapters.firestore_audit import FirestoreRecorder
    from bqgate.adapters.firestore_store import FirestoreJobStore
    from bqgate.adapters.google_clients import BigQueryClient, FirestoreClient
    from bqgate.adapters.mcp_server import McpHttpApp
    from bqgate.adapters.oidc import OidcVerifier
    from bqgate.adapters.pubsub_queue import PubSubQueue
    from bqgate.adapters.slack import SlackNotifier
    from bqgate.anchors import AnchorIndex
    from bqgate.chain import ChainKey, Keyring
    from bqgate.classification import Classification
    from bqgate.ports import Classifier
    from bqgate.service.approvals import ApprovalsApp, ApprovalService
    from bqgate.service.catalog import CachedCatalog, CatalogApp
    from bqgate.service.executor import Executor
    from bqgate.service.gateway import Gateway
    from bqgate.service.ingress import IngressApp
    from bqgate.service.mcp import McpTools
    from bqgate.service.metadata import MetadataApi
    from bqgate.service.sweeper import Sweeper, SweeperApp
    from bqgate.service.tables import TableDataApi

log = logging.getLogger("bqgate")


@functools.cache
def settings() -> Settings:
    return settings_mod.from_env()


@functools.cache
def policy() -> Policy:
    return load_policy(settings().policy_path)


@functools.cache
def firestore_client() -> FirestoreClient:
    from bqgate.adapters import google_clients

    return google_clients.firestore_client(settings())


@functools.cache
def publisher() -> Any:  # google-cloud-pubsub ships no types
    from bqgate.adapters import google_clients

    return google_clients.publisher()


@functools.cache
def bigquery_client() -> BigQueryClient:
    from bqgate.adapters import google_clients

    return google_clients.bigquery_client(settings())


@functools.cache
def job_store() -> FirestoreJobStore:
    from bqgate.adapters.firestore_store import FirestoreJobStore

    return FirestoreJobStore(
        firestore_client(),
        retention_seconds=policy().sessions.retention_seconds,
        call_timeout_s=settings().call_timeout_ms / 1000,
    )


@functools.cache
def queue() -> PubSubQueue:
    from bqgate.adapters.pubsub_queue import PubSubQueue

    s = settings()
    # Hand-offs are bounded: past the timeout the outbox record stays due, and is re-sent.
    return PubSubQueue(publisher(), s.project, timeout_s=s.dispatch_timeout_ms / 1000)


@functools.cache
def warehouse() -> BigQueryWarehouse:
    from bqgate.adapters.bigquery_warehouse import BigQueryWarehouse

    s = settings()
    return BigQueryWarehouse(
        bigquery_client(),
        project=s.warehouse_project,
        location=s.location,
        job_timeout_s=s.job_timeout_ms / 1000,
    )


@functools.cache
def verifier() -> OidcVerifier:
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
def storage_client() -> Any:  # google-cloud-storage ships no types
    from bqgate.adapters import google_clients

    return google_clients.storage_client(settings())


@functools.cache
def checkpointer() -> Checkpointer:
    """Session checkpoints: a log line at once, the bucket/folder in batches (flushed at exit)."""
    from bqgate.adapters.anchor_sinks import Checkpointer, FolderSink, GcsSink, LogSink
    from bqgate.ports import CheckpointSink

    s = settings()
    batched: list[CheckpointSink] = []
    if s.anchor_bucket:
        batched.append(GcsSink.connecting(storage_client, s.anchor_bucket))
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
def recorder() -> FirestoreRecorder:
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


class _QueueOnFirstPublish:
    """The Pub/Sub queue, built by the first publish: with the fast path to the executor,
    the ingress publishes only to fall back, and a request that does not never pays for
    connecting to Pub/Sub."""

    def publish(self, topic: str, message: Mapping[str, Any]) -> None:
        queue().publish(topic, message)


def _classifier() -> Classifier:
    pol = policy()

    def run(sql: str, **kwargs: Any) -> Classification:
        from bqgate.sql.classify import classify  # imported by the first classification

        return classify(sql, policy=pol, **kwargs)

    return run


@functools.cache
def gateway() -> Gateway:
    from bqgate.service.gateway import Gateway, GatewayConfig

    s = settings()
    pol = policy()
    direct = direct_executor()
    return Gateway(
        store=job_store(),
        queue=_QueueOnFirstPublish(),  # with the fast path, only needed for fallbacks
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
        dispatch=direct,
        accept=direct.accept if direct is not None else None,
    )


def direct_executor() -> DirectExecutor | None:
    """The fast path to the executor when ``BQGATE_EXECUTOR_URL`` is set, else None."""
    s = settings()
    if not s.executor_url:
        return None
    from bqgate.adapters.executor_client import DirectExecutor, google_id_token

    token = (lambda: None) if s.dev_mode else google_id_token(s.executor_url)
    return DirectExecutor(
        s.executor_url,
        queue=_QueueOnFirstPublish(),
        topic=s.execute_topic,
        timeout_s=s.max_wait_ms / 1000 + 20,
        token=token,
        hints=session_hints(),
    )


@functools.cache
def session_hints() -> Any:
    """The session heads the direct call's two ends hand each other (executor_client)."""
    from bqgate.adapters.executor_client import SessionHints

    return SessionHints(job_store(), recorder())


@functools.cache
def executor() -> Executor:
    from bqgate.service.executor import Executor, ExecutorConfig

    s = settings()
    return Executor(
        store=job_store(),
        warehouse=warehouse(),  # the executor is built by the first job it runs
        policy=policy(),
        hmac_key=s.hmac_key,
        queue=_QueueOnFirstPublish(),  # only approval requests publish
        approvals_topic=s.approvals_topic,
        recorder=recorder(),
        config=ExecutorConfig(
            redispatch_after_ms=s.redispatch_after_ms,
            inline_result_bytes=policy().execution.inline_result_bytes,
        ),
        warehouse_project=s.warehouse_project,
    )


@functools.cache
def catalog() -> CachedCatalog:
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
def metadata_api() -> MetadataApi:
    from bqgate.service.metadata import MetadataApi

    return MetadataApi(
        catalog=catalog(), policy=policy(), jobs=job_store(), owned_job=gateway()._owned
    )


@functools.cache
def tabledata_api() -> TableDataApi:
    from bqgate.service.tables import TableDataApi

    return TableDataApi(gateway=gateway(), catalog=catalog(), metadata=metadata_api())


@functools.cache
def ingress_app() -> IngressApp:
    from bqgate.service.ingress import IngressApp

    return IngressApp(gateway, verifier, metadata_api, tabledata_api)


@functools.cache
def mcp_tools() -> McpTools:
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
def mcp_app() -> McpHttpApp:
    from bqgate.adapters.mcp_server import McpHttpApp

    return McpHttpApp(mcp_tools, verifier)


@functools.cache
def catalog_app() -> CatalogApp:
    """Executor side: the catalog endpoint the ingress calls (BigQuery metadata)."""
    from bqgate.service.catalog import CatalogApp, CatalogService

    def service() -> CatalogService:
        from bqgate.adapters.bigquery_catalog import BigQueryCatalog

        return CatalogService(BigQueryCatalog(bigquery_client()), policy())

    return CatalogApp(functools.cache(service))


# --- approvals (Slack interactions, approver API, slack_notify) ---------------------------


@functools.cache
def notifier() -> SlackNotifier:
    from bqgate.adapters.slack import SlackNotifier

    return SlackNotifier.from_settings(settings())


@functools.cache
def approval_service() -> ApprovalService:
    from bqgate.service.approvals import ApprovalService

    s = settings()
    return ApprovalService(
        store=job_store(),
        queue=_QueueOnFirstPublish(),  # a notification or a denial publishes nothing
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
def approvals_app() -> ApprovalsApp:
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
def sweeper_app() -> SweeperApp:
    from bqgate.service.sweeper import SweeperApp

    return SweeperApp(sweeper)


# --- the approver console (served by the approvals function under /console) ---------------


@functools.cache
def job_history() -> FirestoreJobStore:
    return job_store()  # FirestoreJobStore.decided answers the console's history


def console_evidence() -> tuple[Keyring | None, AnchorIndex]:
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
def console_app() -> ConsoleApp:
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
