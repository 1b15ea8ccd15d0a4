"""Shared fixtures. ``stack`` brings up the same local stack as ``nox -s dev`` (emulators,
OIDC issuer, Slack stand-in, every function under functions-framework) on free ports, once
per test session, and stops every process it started at the end."""

from __future__ import annotations

import concurrent.futures
import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from bqgate.dev.stack import DEFAULT_PORTS, Stack, free_ports

if TYPE_CHECKING:
    from bqgate.adapters.firestore_store import FirestoreJobStore


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("bqgate-dev")
    ports = free_ports(DEFAULT_PORTS)
    # faults=True: Pub/Sub is reached through a FaultProxy that tests can make refuse.
    s = Stack(state_dir=state, ports=ports, faults=True)
    s.start()
    saved = dict(os.environ)
    # In-process code under test (function test clients, adapters) uses the same emulators.
    os.environ.update(s.function_env())
    try:
        yield s
    finally:
        os.environ.clear()
        os.environ.update(saved)
        s.stop()


AGENT = "agent@demo-project.iam.gserviceaccount.com"


@pytest.fixture()
def store(stack: Stack) -> FirestoreJobStore:
    """The job store on the stack's Firestore (what every function reads and writes)."""
    from bqgate.adapters.firestore_store import FirestoreJobStore
    from bqgate.dev.stack import PROJECT
    from google.cloud import firestore

    return FirestoreJobStore(firestore.Client(project=PROJECT))


@pytest.fixture()
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    """Threads for what waits meanwhile (an agent blocked on its query, as agents are)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as ex:
        yield ex


@pytest.fixture(autouse=True)
def _no_leftover_approval_requests(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test on the stack, expire the approval requests it left open: they would
    otherwise hold slots of approvals.max_pending_per_principal in later tests (the sweeper
    then ends them and closes their Slack messages)."""
    on_stack = "stack" in request.fixturenames and isinstance(
        request.getfixturevalue("stack"), Stack
    )  # (some modules have a `stack` fixture of their own)
    yield
    if not on_stack:
        return
    import time

    from bqgate.adapters.firestore_store import FirestoreJobStore
    from bqgate.dev.stack import PROJECT
    from bqgate.jobs import PENDING_APPROVAL
    from google.cloud import firestore

    store = FirestoreJobStore(firestore.Client(project=PROJECT))
    now = int(time.time() * 1000)
    for job in store.pending_approvals(now_ms=now, limit=1000):
        store.transition(
            job.job_id,
            lambda j: replace(j, expire_at_ms=now - 1) if j.state == PENDING_APPROVAL else None,
        )


def mint_token_for(
    stack: Stack, principal: str, groups: tuple[str, ...] = (), ttl_seconds: int = 3600
) -> str:
    """A dev-issuer token for ``principal``, as ``bqgate token`` would mint it."""
    from bqgate.dev.issuer import OIDC_SUBDIR, mint_token

    return mint_token(
        principal,
        list(groups),
        ttl_seconds,
        issuer_url=stack.url("oidc_issuer"),
        key_dir=stack.state_dir / OIDC_SUBDIR,
    )


@pytest.fixture()
def agent_token(stack: Stack) -> str:
    return mint_token_for(stack, AGENT)


@pytest.fixture()
def gateway_client(stack: Stack):  # type: ignore[no-untyped-def]
    """The standard google-cloud-bigquery client pointed at the gateway, as the agent."""
    from bqgate.client import gateway_client as make

    return make(stack.url("gateway"), dev_dir=stack.state_dir)
