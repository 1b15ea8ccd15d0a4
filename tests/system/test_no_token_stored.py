"""No bearer token is ever stored or logged: after an end-to-end run that exercises allowed,
blocked, invalid and unauthorised requests, grep every Firestore document and every log of the
stack for the tokens used (and for their signatures alone)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from bqgate.dev.stack import PROJECT, Stack
from conftest import AGENT, mint_token_for
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.cloud import bigquery, firestore
from google.oauth2.credentials import Credentials

pytestmark = pytest.mark.system


def all_documents(client: firestore.Client) -> Iterator[dict[str, Any]]:
    def walk(collection: Any) -> Iterator[dict[str, Any]]:
        for doc in collection.stream():
            yield {"path": doc.reference.path, **(doc.to_dict() or {})}
            for sub in doc.reference.collections():
                yield from walk(sub)

    for collection in client.collections():
        yield from walk(collection)


def test_tokens_never_reach_firestore_or_logs(stack: Stack) -> None:
    token = mint_token_for(stack, AGENT)
    other = mint_token_for(stack, "eve@example.com", ("ai-coding-agents",))
    client = bigquery.Client(
        project=PROJECT,
        credentials=Credentials(token),
        client_options=ClientOptions(api_endpoint=stack.url("gateway")),
    )
    job = client.query(
        "SELECT name FROM `demo-project.analytics.events` LIMIT 3",
        job_config=bigquery.QueryJobConfig(labels={"session_id": "no-token-test"}),
    )
    assert len(list(job.result(timeout=60))) == 3
    with pytest.raises(gexc.Forbidden):
        client.query_and_wait("DROP TABLE `demo-project.analytics.events`", wait_timeout=30)
    with pytest.raises((gexc.Forbidden, gexc.BadRequest)):
        client.query_and_wait("SELEC oops", wait_timeout=30)
    gw = stack.url("gateway") + f"/bigquery/v2/projects/{PROJECT}"
    # Someone else's token on this job, a tampered token, and a token in a bad header.
    assert (
        requests.get(
            f"{gw}/jobs/{job.job_id}", timeout=30, headers={"Authorization": f"Bearer {other}"}
        ).status_code
        == 404
    )
    assert (
        requests.get(
            f"{gw}/jobs/{job.job_id}",
            timeout=30,
            headers={"Authorization": f"Bearer {token[:-4]}AAAA"},
        ).status_code
        == 401
    )
    assert (
        requests.get(
            f"{gw}/jobs/{job.job_id}", timeout=30, headers={"Authorization": f"Token {token}"}
        ).status_code
        == 401
    )

    secrets = {token, other, token.rsplit(".", 1)[1], other.rsplit(".", 1)[1], token[:-4]}
    docs = list(all_documents(firestore.Client(project=PROJECT)))
    assert any(d["path"].startswith("jobs/") for d in docs)
    assert any(d["path"].startswith("sessions/") for d in docs)
    stored = json.dumps(docs, default=str)
    logs = "\n".join(
        p.read_text(errors="replace") for p in (stack.state_dir / "logs").glob("*.log")
    )
    assert logs  # the functions did log
    for secret in secrets:
        assert secret not in stored, "a token (or its signature) was stored in Firestore"
        assert secret not in logs, "a token (or its signature) appeared in a log"
