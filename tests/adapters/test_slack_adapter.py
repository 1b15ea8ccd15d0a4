"""The Slack adapter (slack-sdk) against the Slack stand-in: message metadata, the lookup
that replaces a second post, deletes, refusals, and a hanging Slack."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import requests
from bqgate.adapters.slack import SlackNotifier
from bqgate.dev.slack_standin import CHANNEL_ID
from bqgate.dev.stack import Stack
from bqgate.errors import Rejected
from bqgate.settings import from_env

pytestmark = pytest.mark.emulators

META = "bqgate_approval_request"


@pytest.fixture()
def slack(stack: Stack) -> SlackNotifier:
    return SlackNotifier.from_settings(from_env(stack.function_env()))


def meta(job_id: str) -> dict[str, Any]:
    return {"event_type": META, "event_payload": {"job_id": job_id}}


def hang(stack: Stack, seconds: float) -> dict[str, Any]:
    resp = requests.post(stack.url("slack") + "/_test/hang", json={"seconds": seconds}, timeout=5)
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


def hanging(stack: Stack) -> bool:
    resp = requests.get(stack.url("slack") + "/_test/hang", timeout=5)
    resp.raise_for_status()
    return bool(resp.json()["hanging"])


def test_posted_messages_are_found_by_their_metadata_and_deleted(slack: SlackNotifier) -> None:
    job_id = "adapter-" + uuid.uuid4().hex
    since = int(time.time() * 1000) - 1000
    channel, ts = slack.post_request("#bqgate-approvals", "hi", [], meta(job_id))
    assert channel == CHANNEL_ID
    slack.post_request("#bqgate-approvals", "other", [], meta("someone-else"))
    # By #name (resolved through conversations.list) or by id: the same one message.
    assert slack.find_messages("#bqgate-approvals", META, "job_id", job_id, since) == [
        (CHANNEL_ID, ts)
    ]
    assert slack.find_messages(CHANNEL_ID, META, "job_id", job_id, since) == [(CHANNEL_ID, ts)]
    assert (
        slack.find_messages(CHANNEL_ID, META, "job_id", job_id, int(float(ts) * 1000) + 1000) == []
    )
    slack.delete_message(channel, ts)
    assert slack.find_messages(CHANNEL_ID, META, "job_id", job_id, since) == []
    with pytest.raises(Rejected, match="message_not_found"):
        slack.delete_message(channel, ts)


def test_slack_saying_no_is_rejected_not_unknown(slack: SlackNotifier) -> None:
    with pytest.raises(Rejected, match="channel_not_found"):
        slack.post_request("", "hi", [], meta("x"))
    with pytest.raises(Rejected, match="invalid_metadata_format"):
        slack.post_request("#bqgate-approvals", "hi", [], {"event_type": 5})


def test_a_post_during_a_hang_times_out_and_is_carried_out_when_it_ends(
    stack: Stack, slack: SlackNotifier
) -> None:
    job_id = "hang-" + uuid.uuid4().hex
    since = int(time.time() * 1000) - 1000
    assert hang(stack, 10)["hanging"] is True
    t0 = time.monotonic()
    # slack-sdk's timeout (3 s), an OSError: unlike Rejected, the outcome is unknown.
    with pytest.raises(OSError):
        slack.post_request("#bqgate-approvals", "hi", [], meta(job_id))
    assert time.monotonic() - t0 < 8  # the caller got its timeout, it did not wait out Slack
    with pytest.raises(OSError):
        slack.find_messages(CHANNEL_ID, META, "job_id", job_id, since)
    deadline = time.monotonic() + 20
    while hanging(stack):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # The hung post was carried out after all, once: Slack did it, nobody heard back.
    found = slack.find_messages(CHANNEL_ID, META, "job_id", job_id, since)
    assert len(found) == 1
