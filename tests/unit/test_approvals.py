"""The approval state machine (bqgate.approvals) and the approvals service core, with fakes."""

from __future__ import annotations

import doctest
import json
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import bqgate.approvals as approvals_mod
import bqgate.service.approvals as service_mod
import pytest
from bqgate.approvals import (
    APPROVED,
    ApprovalRecord,
    binding,
    check_binding,
    decide,
    expire,
)
from bqgate.classification import Classification
from bqgate.errors import AccessDenied, InvalidRequest, Unauthenticated
from bqgate.identity import Principal
from bqgate.jobs import DONE, PENDING, PENDING_APPROVAL, Job
from bqgate.policy import Policy, parse_policy
from bqgate.service.approvals import ApprovalService
from bqgate.slack_blocks import APPROVE_ACTION, DENY_ACTION, DENY_CALLBACK, sign
from fakes import MemoryJobStore, MemoryQueue

POLICY_TEXT = """
version: 1
tiers: [t]
datasets: {p.d: t}
groups:
  agents: {members: [agent@x.io]}
  approvers: {members: [alice@x.io, bob@x.io, carol@x.io]}
rules: [{groups: [agents], tiers: [t], read: approve}]
approvals:
  approver_groups: [approvers]
  required: %d
  ttl: 15m
  owners: {agent@x.io: carol@x.io}
cost: {approve_above_bytes: 1GB}
"""

APPROVERS = frozenset({"approvers"})
T0 = 1_700_000_000_000


def policy(required: int = 1) -> Policy:
    return parse_policy(POLICY_TEXT % required)


def pending_job(job_id: str = "j1", **kw: Any) -> Job:
    base: dict[str, Any] = dict(
        job_id=job_id,
        project="p",
        location="US",
        sql="SELECT * FROM p.d.t",
        owner="agent@x.io",
        groups=["agents"],
        state=PENDING_APPROVAL,
        created_ms=T0,
        expire_at_ms=T0 + 900_000,
        default_dataset={"projectId": "p", "datasetId": "d"},
        bytes_estimate=2048,
        classification=Classification(
            "approve", reasons=("restricted read",), tables=("p.d.t",), statement_hash="h1"
        ),
    )
    base.update(kw)
    return Job(**base)


def apply(job: Job, decided: Job | None) -> Job:
    """The job as a decision left it (``None``: as it was)."""
    return job if decided is None else decided


def test_doctests_of_the_approval_modules() -> None:
    for mod in (approvals_mod, service_mod):
        result = doctest.testmod(mod)
        assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- decide


def test_one_approval_makes_the_job_runnable_and_bound() -> None:
    job = pending_job()
    d = decide(
        job,
        approver="Alice@x.io",
        approver_groups=APPROVERS,
        action="approve",
        reason=None,
        now_ms=T0 + 1,
        policy=policy(),
        via="slack",
    )
    assert d.outcome == "approved" and d.execute and d.changed
    job = apply(job, d.job)
    assert job.state == PENDING
    rec = ApprovalRecord.from_doc(job.approval)
    assert rec.status == APPROVED and rec.approvers == ("alice@x.io",)
    assert rec.votes[0].via == "slack" and rec.decided_at_ms == T0 + 1
    assert check_binding(job, "h1") is None


@pytest.mark.parametrize(
    "approver,groups,message",
    [
        ("mallory@x.io", frozenset({"agents"}), r"not a member of an approver group \(approvers\)"),
        ("agent@x.io", APPROVERS, "may not approve their own request"),
        ("carol@x.io", APPROVERS, "an identity they own"),
        ("", APPROVERS, "Cannot tell who you are"),
    ],
)
def test_who_may_not_approve(approver: str, groups: frozenset[str], message: str) -> None:
    with pytest.raises(AccessDenied, match=message):
        decide(
            pending_job(),
            approver=approver,
            approver_groups=groups,
            action="approve",
            reason=None,
            now_ms=T0,
            policy=policy(),
        )


def test_the_agent_owner_may_still_deny() -> None:
    d = decide(
        pending_job(),
        approver="carol@x.io",
        approver_groups=APPROVERS,
        action="deny",
        reason="not now",
        now_ms=T0,
        policy=policy(),
    )
    assert d.outcome == "denied"


def test_denial_ends_the_job_with_the_reason() -> None:
    job = pending_job()
    d = decide(
        job,
        approver="bob@x.io",
        approver_groups=APPROVERS,
        action="deny",
        reason="  reads   payroll ",
        now_ms=T0 + 5,
        policy=policy(),
    )
    job = apply(job, d.job)
    assert job.state == DONE and job.ended_ms == T0 + 5
    assert job.error == {"reason": "accessDenied", "message": "Denied by bob@x.io: reads payroll"}
    assert ApprovalRecord.from_doc(job.approval).denied_by == "bob@x.io"
    assert "has not been approved" in (check_binding(job, "h1") or "")


@pytest.mark.parametrize(
    "reason,message",
    [(None, "reason is required"), ("   ", "reason is required"), ("x" * 501, "too long")],
)
def test_denial_needs_a_reason(reason: str | None, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decide(
            pending_job(),
            approver="bob@x.io",
            approver_groups=APPROVERS,
            action="deny",
            reason=reason,
            now_ms=T0,
            policy=policy(),
        )


def test_unknown_action_is_invalid() -> None:
    with pytest.raises(InvalidRequest, match="Unknown approval action"):
        decide(
            pending_job(),
            approver="bob@x.io",
            approver_groups=APPROVERS,
            action="maybe",  # type: ignore[arg-type]  # what no typed caller can send
            reason=None,
            now_ms=T0,
            policy=policy(),
        )


def test_second_click_after_the_decision_changes_nothing_and_says_why() -> None:
    job = pending_job()
    job = apply(
        job,
        decide(
            job,
            approver="alice@x.io",
            approver_groups=APPROVERS,
            action="approve",
            reason=None,
            now_ms=T0,
            policy=policy(),
        ).job,
    )
    again = decide(
        job,
        approver="alice@x.io",
        approver_groups=APPROVERS,
        action="approve",
        reason=None,
        now_ms=T0 + 1,
        policy=policy(),
    )
    assert again.outcome == "unchanged" and not again.changed and not again.execute
    assert again.message == "Already approved by alice@x.io; nothing changed"
    late_deny = decide(
        job,
        approver="bob@x.io",
        approver_groups=APPROVERS,
        action="deny",
        reason="too late",
        now_ms=T0 + 2,
        policy=policy(),
    )
    assert late_deny.job is None and "Already approved" in late_deny.message


def test_denied_request_cannot_be_approved_afterwards() -> None:
    job = pending_job()
    job = apply(
        job,
        decide(
            job,
            approver="bob@x.io",
            approver_groups=APPROVERS,
            action="deny",
            reason="no",
            now_ms=T0,
            policy=policy(),
        ).job,
    )
    d = decide(
        job,
        approver="alice@x.io",
        approver_groups=APPROVERS,
        action="approve",
        reason=None,
        now_ms=T0 + 1,
        policy=policy(),
    )
    assert d.job is None and d.message == "Already denied by bob@x.io; nothing changed"


def test_two_required_approvals_must_come_from_distinct_approvers() -> None:
    pol = policy(required=2)
    job = pending_job()
    first = decide(
        job,
        approver="alice@x.io",
        approver_groups=APPROVERS,
        action="approve",
        reason=None,
        now_ms=T0,
        policy=pol,
    )
    assert first.outcome == "recorded" and not first.execute
    assert first.message == "Approval 1 of 2 recorded by alice@x.io; waiting for 1 more"
    job = apply(job, first.job)
    assert job.state == PENDING_APPROVAL
    assert "1 of the 2" not in (check_binding(job, "h1") or "")  # still pending
    same = decide(
        job,
        approver="alice@x.io",
        approver_groups=APPROVERS,
        action="approve",
        reason=None,
        now_ms=T0 + 1,
        policy=pol,
    )
    assert same.outcome == "unchanged" and "still needs 1 more approval" in same.message
    second = decide(
        job,
        approver="bob@x.io",
        approver_groups=APPROVERS,
        action="approve",
        reason=None,
        now_ms=T0 + 2,
        policy=pol,
    )
    assert second.outcome == "approved"
    job = apply(job, second.job)
    assert ApprovalRecord.from_doc(job.approval).approvers == ("alice@x.io", "bob@x.io")
    assert check_binding(job, "h1") is None


def test_no_decision_after_expiry() -> None:
    job = pending_job()
    d = decide(
        job,
        approver="alice@x.io",
        approver_groups=APPROVERS,
        action="approve",
        reason=None,
        now_ms=T0 + 900_000,
        policy=policy(),
    )
    assert d.outcome == "expired" and not d.execute
    job = apply(job, d.job)
    assert job.state == DONE
    assert job.error == {
        "reason": "accessDenied",
        "message": "Approval request expired after 15 minutes",
    }


def test_expire_only_for_pending_approval_jobs() -> None:
    assert expire(pending_job(state=PENDING), T0 + 10**9) is None
    assert expire(pending_job(expire_at_ms=None), T0 + 10**9) is None
    expired = expire(pending_job(expire_at_ms=T0 + 3000), T0 + 3000)
    assert expired is not None and expired.error is not None
    assert expired.error["message"] == "Approval request expired after 3 seconds"


# --------------------------------------------------------------------------- binding


def approved(job: Job) -> Job:
    d = decide(
        job,
        approver="alice@x.io",
        approver_groups=APPROVERS,
        action="approve",
        reason=None,
        now_ms=T0,
        policy=policy(),
    )
    return apply(job, d.job)


@pytest.mark.parametrize(
    "change",
    [
        {"owner": "other@x.io"},
        {"default_dataset": {"projectId": "p", "datasetId": "other"}},
        {"bytes_estimate": 10**12},
    ],
)
def test_binding_refuses_a_job_changed_after_approval(change: dict[str, Any]) -> None:
    job = approved(pending_job())
    assert check_binding(job, "h1") is None
    changed = replace(job, **change)
    assert "changed after it was approved" in (check_binding(changed, "h1") or "")


def test_binding_refuses_a_different_statement() -> None:
    job = approved(pending_job())
    assert "changed after it was approved" in (check_binding(job, "h2") or "")


def test_binding_refuses_a_forged_approval_record() -> None:
    job = pending_job(
        state=PENDING,
        approval={
            "status": "approved",
            "required": 1,
            "approvals": [{"approver": "a@x.io", "at_ms": 1}],
            "binding": "0" * 64,
        },
    )
    assert "changed after it was approved" in (check_binding(job, "h1") or "")
    none = pending_job(
        state=PENDING,
        approval={"status": "approved", "required": 2, "approvals": [{"approver": "a@x.io"}]},
    )
    assert "1 of the 2 approvals" in (check_binding(none, "h1") or "")


def test_allowed_jobs_need_no_approval_but_requested_ones_do() -> None:
    allowed = pending_job(
        state=PENDING, classification=Classification("allow", statement_hash="h1")
    )
    assert check_binding(allowed, "h1") is None
    # Sent to approval by its cost: it has an approval record from then on.
    costly = replace(allowed, approval=ApprovalRecord().to_doc())
    assert "has not been approved" in (check_binding(costly, "h1") or "")


def test_binding_is_canonical_and_distinguishes_its_parts() -> None:
    base = binding("h", "a@x", "p.d", 1)
    assert base == binding("h", " A@X ", {"projectId": "p", "datasetId": "d"}, 1)
    others = {
        binding("h2", "a@x", "p.d", 1),
        binding("h", "b@x", "p.d", 1),
        binding("h", "a@x", "p.e", 1),
        binding("h", "a@x", "p.d", None),
        binding("h", "a@x", "", 1),
    }
    assert base not in others and len(others) == 5


# --------------------------------------------------------------------------- service


class FakeNotifier:
    def __init__(self) -> None:
        self.posted: list[dict[str, Any]] = []
        self.updated: list[dict[str, Any]] = []
        self.ephemerals: list[tuple[str, str, str]] = []
        self.modals: list[tuple[str, Mapping[str, Any]]] = []
        self.lookups = 0
        self.fail_post = False
        #: Slack posts the message but the answer never arrives (a timeout).
        self.lose_answer = False
        #: Slack does not answer at all (a hang): calls time out, and change nothing.
        self.down = False
        self.finds = 0
        self.deleted: list[tuple[str, str]] = []
        self.users = {
            "U_ALICE": "alice@x.io",
            "U_BOB": "bob@x.io",
            "U_CAROL": "carol@x.io",
            "U_MALLORY": "mallory@x.io",
        }

    def post_request(
        self,
        channel: str,
        text: str,
        blocks: Sequence[Mapping[str, Any]],
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[str, str]:
        if self.fail_post:
            raise RuntimeError("slack is down")
        if self.down:
            raise TimeoutError("slack hangs")
        self.posted.append(
            {
                "channel": channel,
                "text": text,
                "blocks": list(blocks),
                "metadata": dict(metadata or {}),
                "ts": f"1.{len(self.posted) + 1}",
            }
        )
        if self.lose_answer:
            raise TimeoutError("the answer never came")
        return "C1", f"1.{len(self.posted)}"

    def find_messages(
        self, channel: str, event_type: str, key: str, value: str, oldest_ms: int
    ) -> list[tuple[str, str]]:
        self.finds += 1
        if self.down:
            raise TimeoutError("slack hangs")
        return [
            ("C1", m["ts"])
            for m in self.posted
            if m["metadata"].get("event_type") == event_type
            and m["metadata"].get("event_payload", {}).get(key) == value
            and (m["channel"], m["ts"]) not in {("#approvals", d[1]) for d in self.deleted}
        ]

    def delete_message(self, channel: str, ts: str) -> None:
        self.deleted.append((channel, ts))

    def update_message(
        self, channel: str, ts: str, text: str, blocks: Sequence[Mapping[str, Any]]
    ) -> None:
        if self.down:
            raise TimeoutError("slack hangs")
        self.updated.append({"channel": channel, "ts": ts, "text": text, "blocks": list(blocks)})

    def post_ephemeral(self, channel: str, user: str, text: str) -> None:
        self.ephemerals.append((channel, user, text))

    def user_email(self, user_id: str) -> str | None:
        self.lookups += 1
        return self.users.get(user_id)

    def open_modal(self, trigger_id: str, view: Mapping[str, Any]) -> None:
        self.modals.append((trigger_id, view))


class FakeVerifier:
    def verify(self, token: str) -> Principal:
        email, _, groups = token.partition(":")
        if not email:
            raise Unauthenticated("bad token")
        return Principal(email=email, groups=frozenset(g for g in groups.split(",") if g))


class Clock:
    def __init__(self) -> None:
        self.now = T0 / 1000

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def record(self, job: Job, kind: str, data: Mapping[str, Any]) -> None:
        self.events.append((job.job_id, kind))


SECRET = "shh"


@pytest.fixture()
def env() -> dict[str, Any]:
    store, queue, notifier = MemoryJobStore(), MemoryQueue(), FakeNotifier()
    clock, recorder = Clock(), Recorder()
    service = ApprovalService(
        store=store,
        queue=queue,
        policy=policy(),
        notifier=lambda: notifier,
        verifier=FakeVerifier,
        signing_secret=SECRET,
        slack_channel="#approvals",
        recorder=recorder,
        clock=clock,
    )
    store.create(pending_job())
    return {
        "store": store,
        "queue": queue,
        "notifier": notifier,
        "clock": clock,
        "service": service,
        "recorder": recorder,
    }


def slack_post(
    env: dict[str, Any], payload: Mapping[str, Any], *, ts: int | None = None, secret: str = SECRET
) -> tuple[int, dict[str, Any]]:
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    stamp = str(ts if ts is not None else int(env["clock"].now))
    headers = {"x-slack-request-timestamp": stamp, "x-slack-signature": sign(secret, stamp, body)}
    resp = env["service"].handle("POST", "/slack/interactions", headers, body)
    return resp.status, resp.body


def click(user: str, action: str, job_id: str = "j1") -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": user},
        "trigger_id": "t1",
        "container": {"channel_id": "C1", "message_ts": "1.1"},
        "actions": [{"action_id": action, "value": job_id}],
    }


def test_notify_posts_once_and_remembers_the_message(env: dict[str, Any]) -> None:
    svc, notifier, store = env["service"], env["notifier"], env["store"]
    assert svc.notify("j1") == "posted"
    assert svc.notify("j1") == "already-posted"
    assert len(notifier.posted) == 1
    assert notifier.posted[0]["channel"] == "#approvals"
    rec = ApprovalRecord.from_doc(store.get("j1").approval)
    assert (rec.slack_channel, rec.slack_ts) == ("C1", "1.1")
    assert svc.notify("missing") == "unknown"


def test_notify_failure_releases_the_claim_for_the_redelivery(env: dict[str, Any]) -> None:
    svc, notifier = env["service"], env["notifier"]
    notifier.fail_post = True
    with pytest.raises(RuntimeError):
        svc.notify("j1")
    notifier.fail_post = False
    assert svc.notify("j1") == "posted"


def test_notify_expires_a_stale_request_instead_of_posting(env: dict[str, Any]) -> None:
    env["clock"].now = (T0 + 900_000) / 1000
    assert env["service"].notify("j1") == "expired"
    assert env["store"].get("j1").state == DONE and not env["notifier"].posted
    assert ("j1", "expired") in env["recorder"].events


def test_notify_shows_the_estimate(env: dict[str, Any]) -> None:
    env["store"].create(pending_job("big", bytes_estimate=5 * 1024**3))
    env["service"].notify("big")
    assert "5.0 GiB" in json.dumps(env["notifier"].posted[-1]["blocks"])


def test_no_approval_before_the_estimate(env: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest, match="still being estimated"):
        decide(
            pending_job(bytes_estimate=None),
            approver="alice@x.io",
            approver_groups=APPROVERS,
            action="approve",
            reason=None,
            now_ms=T0,
            policy=policy(),
        )
    env["store"].create(pending_job("fresh", bytes_estimate=None))
    status, body = api(env, "GET", "/v1/approvals", "alice@x.io:approvers")
    assert "fresh" not in [a["job_id"] for a in body["approvals"]]
    status, body = api(env, "POST", "/v1/approvals/fresh:approve", "alice@x.io:approvers")
    assert status == 400 and "still being estimated" in body["error"]["message"]


def test_needs_approval_follows_the_job_flag() -> None:
    flagged = pending_job(
        state=PENDING,
        needs_approval=True,
        classification=Classification("allow", statement_hash="h1"),
    )
    assert "has not been approved" in (check_binding(flagged, "h1") or "")


def test_slack_approve_click_runs_the_job_and_updates_the_message(env: dict[str, Any]) -> None:
    env["service"].notify("j1")
    status, body = slack_post(env, click("U_ALICE", APPROVE_ACTION))
    assert status == 200 and body["text"] == "Approved by alice@x.io"
    assert env["queue"].messages == [("execute", {"job_id": "j1"})]
    assert env["store"].get("j1").state == PENDING
    assert "Approved" in env["notifier"].updated[-1]["text"]
    assert ("j1", "approval_decided") in env["recorder"].events
    # A replay of the same signed payload changes nothing and publishes nothing more.
    status, body = slack_post(env, click("U_ALICE", APPROVE_ACTION))
    assert "nothing changed" in body["text"]
    assert len(env["queue"].messages) == 1
    assert env["notifier"].lookups == 1  # users.info is cached


@pytest.mark.parametrize(
    "user,expected",
    [
        ("U_MALLORY", "not a member of an approver group"),
        ("U_CAROL", "an identity they own"),
        ("U_NOBODY", "Cannot tell who you are"),
    ],
)
def test_slack_click_by_someone_who_may_not_approve(
    env: dict[str, Any], user: str, expected: str
) -> None:
    status, body = slack_post(env, click(user, APPROVE_ACTION))
    assert status == 200 and expected in body["text"]
    assert env["notifier"].ephemerals[-1][1] == user
    assert env["store"].get("j1").state == PENDING_APPROVAL and not env["queue"].messages


def test_slack_rejects_bad_signatures_and_stale_timestamps(env: dict[str, Any]) -> None:
    status, body = slack_post(env, click("U_ALICE", APPROVE_ACTION), secret="wrong")
    assert status == 401 and "bad Slack signature" in body["error"]["message"]
    status, body = slack_post(env, click("U_ALICE", APPROVE_ACTION), ts=int(env["clock"].now) - 301)
    assert status == 401 and "stale" in body["error"]["message"]
    resp = env["service"].handle("POST", "/slack/interactions", {}, b"payload=%7B%7D")
    assert resp.status == 401
    assert env["store"].get("j1").state == PENDING_APPROVAL


def test_slack_deny_opens_a_modal_whose_submission_denies(env: dict[str, Any]) -> None:
    svc, notifier = env["service"], env["notifier"]
    svc.notify("j1")
    status, body = slack_post(env, click("U_BOB", DENY_ACTION))
    assert status == 200 and body == {}
    trigger, view = notifier.modals[-1]
    assert trigger == "t1" and view["callback_id"] == DENY_CALLBACK
    submission: dict[str, Any] = {
        "type": "view_submission",
        "user": {"id": "U_BOB"},
        "view": {
            "callback_id": DENY_CALLBACK,
            "private_metadata": view["private_metadata"],
            "state": {"values": {"reason_block": {"reason": {"value": ""}}}},
        },
    }
    status, body = slack_post(env, submission)
    assert (
        body["response_action"] == "errors"
        and "reason is required" in body["errors"]["reason_block"]
    )
    submission["view"]["state"]["values"]["reason_block"]["reason"]["value"] = "touches payroll"
    status, body = slack_post(env, submission)
    assert body == {"response_action": "clear"}
    job = env["store"].get("j1")
    assert job.error["message"] == "Denied by bob@x.io: touches payroll"
    assert "Denied" in notifier.updated[-1]["text"]
    assert ("j1", "denied") in env["recorder"].events
    # Deny again: no modal, a note that it is decided.
    modals = len(notifier.modals)
    status, body = slack_post(env, click("U_BOB", DENY_ACTION))
    assert "Already denied" in body["text"] and len(notifier.modals) == modals


def test_slack_deny_by_a_non_approver_gets_a_note_not_a_modal(env: dict[str, Any]) -> None:
    _status, body = slack_post(env, click("U_MALLORY", DENY_ACTION))
    assert "not a member of an approver group" in body["text"] and not env["notifier"].modals


def api(
    env: dict[str, Any],
    method: str,
    path: str,
    token: str | None,
    body: Mapping[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = env["service"].handle(method, path, headers, json.dumps(body or {}).encode())
    return resp.status, resp.body


def test_api_lists_what_the_caller_may_approve(env: dict[str, Any]) -> None:
    env["store"].create(pending_job("own", owner="alice@x.io"))
    env["store"].create(pending_job("old", expire_at_ms=T0))
    status, body = api(env, "GET", "/v1/approvals", "alice@x.io:approvers")
    assert status == 200 and [a["job_id"] for a in body["approvals"]] == ["j1"]
    assert body["approvals"][0]["tables"] == ["p.d.t"]
    status, body = api(env, "GET", "/v1/approvals", "carol@x.io:approvers")
    assert [a["job_id"] for a in body["approvals"]] == ["own"]  # carol owns the agent
    status, body = api(env, "GET", "/v1/approvals", "mallory@x.io:")
    assert status == 403 and body["error"]["errors"][0]["reason"] == "accessDenied"
    status, body = api(env, "GET", "/v1/approvals", None)
    assert status == 401


def test_api_approve_and_deny(env: dict[str, Any]) -> None:
    status, body = api(env, "POST", "/v1/approvals/j1:approve", "agent@x.io:approvers")
    assert status == 403 and "their own request" in body["error"]["message"]
    status, body = api(env, "POST", "/v1/approvals/j1:approve", "alice@x.io:approvers")
    assert status == 200 and body["outcome"] == "approved" and body["state"] == PENDING
    status, body = api(env, "POST", "/v1/approvals/j1:approve", "alice@x.io:approvers")
    assert status == 200 and body["changed"] is False
    env["store"].create(pending_job("j2"))
    status, body = api(env, "POST", "/v1/approvals/j2:deny", "bob@x.io:approvers")
    assert status == 400 and body["error"]["errors"][0]["reason"] == "invalid"
    status, body = api(env, "POST", "/v1/approvals/j2:deny", "bob@x.io:approvers", {"reason": "no"})
    assert body["outcome"] == "denied"
    status, body = api(env, "POST", "/v1/approvals/nope:approve", "bob@x.io:approvers")
    assert status == 404
    status, body = api(env, "GET", "/v2/other", "bob@x.io:approvers")
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"


def test_health_check_builds_no_service() -> None:
    def broken() -> ApprovalService:
        raise RuntimeError("no credentials here")

    app = service_mod.ApprovalsApp(broken)
    assert app.handle("GET", "/", {}, b"").status == 200
    resp = app.handle("POST", "/v1/approvals/j1:approve", {}, b"")
    assert resp.status == 500 and "incident" in resp.body["error"]["message"]


# --------------------------------------------------------------------------- issue 20/21


def record_of_event(env: dict[str, Any], job_id: str, event: str) -> Any:
    from bqgate.outbox import OutboxRecord, record_id

    doc = env["store"].outbox.get(record_id(job_id, event))
    return OutboxRecord.from_doc(doc) if doc else None


def test_approve_while_publishing_fails_then_a_second_approve_hands_it_off(
    env: dict[str, Any],
) -> None:
    env["queue"].down = True
    status, body = api(env, "POST", "/v1/approvals/j1:approve", "alice@x.io:approvers")
    assert status == 200 and body["outcome"] == "approved"  # the decision stands
    rec = record_of_event(env, "j1", "approved")
    assert rec is not None and not rec.finished and rec.sent_ms is None
    env["queue"].down = False
    # Within the hand-off's grace window the first publish may still be in flight.
    status, body = api(env, "POST", "/v1/approvals/j1:approve", "bob@x.io:approvers")
    assert body["outcome"] == "unchanged" and "nothing changed" in body["message"]
    assert env["queue"].messages == []
    env["clock"].now += 6
    status, body = api(env, "POST", "/v1/approvals/j1:approve", "bob@x.io:approvers")
    assert body["outcome"] == "redispatched" and body["redispatched"] is True
    assert body["message"] == (
        "Already approved by alice@x.io; its hand-off to the executor "
        "had failed and was sent again now"
    )
    assert env["queue"].messages == [("execute", {"job_id": "j1"})]
    status, body = api(env, "POST", "/v1/approvals/j1:approve", "bob@x.io:approvers")
    assert "nothing changed" in body["message"] and len(env["queue"].messages) == 1


def test_a_post_whose_answer_never_came_is_found_not_reposted(env: dict[str, Any]) -> None:
    svc, notifier, store = env["service"], env["notifier"], env["store"]
    notifier.lose_answer = True
    with pytest.raises(TimeoutError):
        svc.notify("j1")
    notifier.lose_answer = False
    assert svc.notify("j1") == "found-existing"
    assert len(notifier.posted) == 1 and notifier.posted[0]["metadata"] == {
        "event_type": "bqgate_approval_request",
        "event_payload": {"job_id": "j1"},
    }
    rec = ApprovalRecord.from_doc(store.get("j1").approval)
    assert (rec.slack_channel, rec.slack_ts, rec.post_attempts) == ("C1", "1.1", 1)
    assert ("j1", "notified") in env["recorder"].events
    assert svc.notify("j1") == "already-posted" and len(notifier.posted) == 1


def test_while_slack_hangs_nothing_is_posted_twice(env: dict[str, Any]) -> None:
    svc, notifier = env["service"], env["notifier"]
    notifier.lose_answer = True  # the first post is carried out, its answer lost
    with pytest.raises(TimeoutError):
        svc.notify("j1")
    notifier.lose_answer, notifier.down = False, True
    for _ in range(5):  # every redelivery while Slack hangs
        with pytest.raises(TimeoutError):
            svc.notify("j1")
    assert len(notifier.posted) == 1 and notifier.finds == 5
    notifier.down = False
    assert svc.notify("j1") == "found-existing" and len(notifier.posted) == 1
    assert ApprovalRecord.from_doc(env["store"].get("j1").approval).post_attempts == 1


def test_duplicates_found_are_deleted_and_a_refused_post_is_not_counted(
    env: dict[str, Any],
) -> None:
    svc, notifier, store = env["service"], env["notifier"], env["store"]
    notifier.fail_post = True
    with pytest.raises(RuntimeError):
        svc.notify("j1")  # RuntimeError: outcome unknown, so the attempt stays counted
    notifier.fail_post = False
    # Two messages of j1 already exist (say, from an older bqgate): one is kept.
    for ts in ("9.1", "9.2"):
        notifier.posted.append(
            {
                "channel": "#approvals",
                "text": "",
                "blocks": [],
                "ts": ts,
                "metadata": {
                    "event_type": "bqgate_approval_request",
                    "event_payload": {"job_id": "j1"},
                },
            }
        )
    assert svc.notify("j1") == "found-existing"
    assert notifier.deleted == [("C1", "9.2")]
    assert ApprovalRecord.from_doc(store.get("j1").approval).slack_ts == "9.1"


def test_the_outcome_reaches_a_message_posted_while_the_request_was_decided(
    env: dict[str, Any],
) -> None:
    svc, notifier = env["service"], env["notifier"]
    notifier.lose_answer = True
    with pytest.raises(TimeoutError):
        svc.notify("j1")
    notifier.lose_answer = False
    status, body = api(
        env, "POST", "/v1/approvals/j1:deny", "bob@x.io:approvers", {"reason": "not today"}
    )
    assert status == 200 and body["outcome"] == "denied"
    assert not notifier.updated  # no message known yet
    assert not record_of_event(env, "j1", "close").finished
    assert svc.notify("j1") == "closed"  # the reconciler's redelivery of the close record
    assert notifier.updated[-1]["ts"] == "1.1" and "Denied" in notifier.updated[-1]["text"]
    assert record_of_event(env, "j1", "close").finished
    assert svc.notify("j1") == "already-closed" and len(notifier.updated) == 1


def test_expired_requests_get_their_message_closed(env: dict[str, Any]) -> None:
    svc, notifier = env["service"], env["notifier"]
    assert svc.notify("j1") == "posted"
    env["clock"].now = (T0 + 900_000) / 1000
    assert svc.notify("j1") == "expired"  # a redelivery after the TTL: expire and close
    assert "Expired" in notifier.updated[-1]["text"]
    assert not any(b["type"] == "actions" for b in notifier.updated[-1]["blocks"])


def flood(
    env: dict[str, Any],
    n: int,
    *,
    prefix: str,
    owner: str = "agent@x.io",
    start_ms: int = T0,
    same_sql: bool = False,
) -> list[str]:
    ids = []
    for i in range(n):
        job_id = f"{prefix}{i:04d}"
        env["store"].create(
            pending_job(
                job_id,
                owner=owner,
                created_ms=start_ms + i,
                classification=Classification(
                    "approve",
                    reasons=("r",),
                    tables=("p.d.t",),
                    statement_hash="same" if same_sql else f"h-{job_id}",
                ),
            )
        )
        ids.append(job_id)
    return ids


def walk(env: dict[str, Any], who: str, limit: int) -> list[dict[str, Any]]:
    items, cursor, pages = [], None, 0
    while True:
        path = "/v1/approvals"
        params = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
        resp = env["service"].handle("GET", path, {"Authorization": f"Bearer {who}"}, b"", params)
        assert resp.status == 200, resp.body
        items += resp.body["approvals"]
        cursor, pages = resp.body["next_cursor"], pages + 1
        assert pages < 100
        if cursor is None:
            return items


def test_the_list_is_newest_first_paged_and_leaves_expired_requests_out(
    env: dict[str, Any],
) -> None:
    ids = flood(env, 12, prefix="a", start_ms=T0 + 10)
    env["store"].create(pending_job("000-expired", created_ms=T0 + 100, expire_at_ms=T0 - 1))
    env["store"].create(
        pending_job(
            "zzz-newest",
            created_ms=T0 + 50,
            classification=Classification("approve", reasons=("r",), statement_hash="z"),
        )
    )
    items = walk(env, "alice@x.io:approvers", limit=5)
    listed = [i["job_id"] for i in items]
    assert listed == ["zzz-newest", *reversed(ids), "j1"]
    assert "000-expired" not in listed
    status, body = api(env, "GET", "/v1/approvals", "alice@x.io:approvers")
    assert status == 200 and body["next_cursor"] is None and len(body["approvals"]) == 14
    resp = env["service"].handle(
        "GET",
        "/v1/approvals",
        {"Authorization": "Bearer alice@x.io:approvers"},
        b"",
        {"cursor": "garbage"},
    )
    assert resp.status == 400 and "not a cursor of this list" in resp.body["error"]["message"]
    resp = env["service"].handle(
        "GET",
        "/v1/approvals",
        {"Authorization": "Bearer alice@x.io:approvers"},
        b"",
        {"limit": "0"},
    )
    assert resp.status == 400 and "limit" in resp.body["error"]["message"]


def test_near_identical_requests_are_one_item_decided_together(env: dict[str, Any]) -> None:
    ids = flood(env, 4, prefix="g", start_ms=T0 + 10, same_sql=True)
    flood(env, 1, prefix="other", owner="agent2@x.io", start_ms=T0 + 20, same_sql=True)
    items = walk(env, "alice@x.io:approvers", limit=2)
    groups = {i["job_id"]: i["group"] for i in items}
    assert list(groups) == ["other0000", "g0003", "j1"]
    assert groups["g0003"]["size"] == 4 and groups["g0003"]["job_ids"] == list(reversed(ids))
    assert groups["other0000"]["size"] == 1  # another requester is another group
    status, body = api(
        env, "POST", "/v1/approvals/g0001:approve", "alice@x.io:approvers", {"group": True}
    )
    assert status == 200 and body["decided"] == 4 and body["group_size"] == 4
    assert body["message"] == "Approved 4 of the 4 requests of the group"
    assert [m["job_id"] for _, m in env["queue"].messages] == list(reversed(ids))
    for job_id in ids:  # each bound to itself, each handed to the executor once
        job = env["store"].get(job_id)
        assert job.state == PENDING and check_binding(job, "same") is None
    assert env["store"].get("other0000").state == PENDING_APPROVAL
    status, body = api(
        env, "POST", "/v1/approvals/g0001:approve", "alice@x.io:approvers", {"group": True}
    )
    assert body["decided"] == 0 and len(env["queue"].messages) == 4
