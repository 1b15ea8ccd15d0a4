"""The bounded fuzzer against the local stack: zero 5xx, every error BigQuery-shaped JSON
(Slack's shapes on ``/slack/interactions``). ``BQGATE_FUZZ_N`` and ``BQGATE_FUZZ_SEED``
change the request count (default 2,000) and the seed."""

from __future__ import annotations

import json
import os

import pytest
from bqgate.dev.stack import Stack
from conftest import AGENT, mint_token_for
from fuzz.fuzz_http import run_fuzz

pytestmark = pytest.mark.system


def test_two_thousand_fuzzed_requests_get_no_5xx_and_only_bigquery_shaped_errors(
    stack: Stack,
) -> None:
    n = int(os.environ.get("BQGATE_FUZZ_N", "2000"))
    seed = int(os.environ.get("BQGATE_FUZZ_SEED", "14"))
    result = run_fuzz(
        {"gateway": stack.url("gateway"), "approvals": stack.url("approvals")},
        {
            "agent": mint_token_for(stack, AGENT),
            "approver": mint_token_for(stack, "alice@example.com", ("data-approvers",)),
            "slack_signing_secret": stack.signing_secret(),
        },
        n=n,
        seed=seed,
    )
    print("\nfuzz:", json.dumps({k: v for k, v in result.items() if k != "failures"}))
    assert result["failures"] == [], json.dumps(result["failures"][:10], indent=1)
    assert sum(result["by_status"].values()) == n
    assert not any(int(status) >= 500 for status in result["by_status"])
    # The fuzzer reached both functions and got past authentication and parsing.
    assert result["by_target"]["gateway"] > n // 2 and result["by_target"]["approvals"] > n // 5
    assert result["by_status"].get("200", 0) > n // 20 and result["by_status"]["400"] > n // 5
