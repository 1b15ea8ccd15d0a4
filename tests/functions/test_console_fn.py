"""The approver console, served by the approvals function (functions-framework, in-process),
against the local stack: sign-in through the dev issuer's real authorization-code flow,
the inbox, decisions, history, the session viewer, and the security edges (cookies,
CSRF, CSP, who may see what)."""

from __future__ import annotations

import html
import json
import re
import time
import urllib.parse
import uuid
from typing import Any

import flask
import functions_framework
import pytest
import requests
from bqgate.approvals import ApprovalRecord
from bqgate.dev.stack import Stack
from bqgate.jobs import DONE, PENDING_APPROVAL, Job
from bqgate.service.approvals import ApproverAct
from bqgate.slack_blocks import sign
from conftest import AGENT
from helpers import LEDGER_SQL, new_pending_job

pytestmark = pytest.mark.emulators

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def new_client(stack: Stack) -> Any:
    app = functions_framework.create_app(
        "approvals", str(stack.repo_root / "functions/approvals/main.py"), "http"
    )
    return app.test_client()


@pytest.fixture()
def console(wired: Stack) -> Any:
    return new_client(wired)


def stored(job_id: str) -> Job:
    from bqgate import bootstrap

    job: Job | None = bootstrap.job_store().get(job_id)
    assert job is not None
    return job


def wait_job(job_id: str, pred: Any, timeout: float = 60) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        job = stored(job_id)
        if pred(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not get there: {job}")
        time.sleep(0.2)


def key_of(stack: Stack) -> str:
    """The dev issuer's sign-in key (what the developer types once per browser)."""
    from bqgate.dev.stack import sign_in_key

    return sign_in_key(stack.endpoints())


def sign_in(client: Any, stack: Stack, principal: str) -> None:
    """The authorization-code flow, as a browser does it: console -> issuer page -> pick
    who you are -> back to the console's callback."""
    start = client.get("/console/auth/login")
    assert start.status_code == 302
    authorize = start.headers["Location"]
    assert authorize.startswith(stack.url("oidc_issuer") + "/authorize?")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    assert query["nonce"][0] and query["state"][0] and query["client_id"] == ["bqgate"]
    page = requests.get(authorize, timeout=10)
    assert page.status_code == 200 and principal in page.text
    request_id = field_of(page.text, "request_id")
    picked = requests.post(
        stack.url("oidc_issuer") + "/authorize",
        data={"request_id": request_id, "principal": principal, "sign_in_key": key_of(stack)},
        allow_redirects=False,
        timeout=10,
    )
    assert picked.status_code == 303
    callback = urllib.parse.urlsplit(picked.headers["Location"])
    assert callback.path == "/console/auth/callback"
    done = client.get(f"{callback.path}?{callback.query}")
    assert done.status_code == 303, done.get_data(as_text=True)
    assert done.headers["Location"].endswith("/console/")


def field_of(page: str, name: str) -> str:
    """The value of the form field ``name`` on ``page`` (the test fails without one)."""
    found = re.search(rf'name="{name}" value="([^"]+)"', page)
    assert found, f"no {name} field on the page"
    return found.group(1)


def csrf_of(page: str) -> str:
    return field_of(page, "csrf_token")


def text_of(resp: Any) -> str:
    return html.unescape(resp.get_data(as_text=True))


def session_cookie(client: Any) -> dict[str, Any]:
    """The console's session cookie, decoded with the dev stack's signing key."""
    from bqgate import bootstrap

    cookie = client.get_cookie("bqgate-console")
    assert cookie is not None
    app = flask.Flask("probe")
    app.secret_key = bootstrap.settings().console_session_key
    serializer = flask.sessions.SecureCookieSessionInterface().get_signing_serializer(app)
    assert serializer is not None
    return dict(serializer.loads(cookie.value))


def forge_cookie(payload: dict[str, Any], key: bytes) -> str:
    app = flask.Flask("probe")
    app.secret_key = key
    serializer = flask.sessions.SecureCookieSessionInterface().get_signing_serializer(app)
    assert serializer is not None
    return str(serializer.dumps(payload))


# --------------------------------------------------------------------------- sign-in


def test_signed_out_visitor_sees_the_sign_in_page(console: Any) -> None:
    resp = console.get("/console/")
    assert resp.status_code == 200
    body = text_of(resp)
    assert "Sign in to decide agents' requests" in body and 'href="/console/auth/login"' in body
    assert resp.headers["Content-Security-Policy"] == CSP
    assert console.get("/console/inbox/items").status_code == 401
    assert console.get("/console").status_code == 308  # to /console/


def test_sign_in_sets_a_short_signed_httponly_lax_cookie_holding_no_token(
    wired: Stack, console: Any
) -> None:
    sign_in(console, wired, "alice@example.com")
    inbox = console.get("/console/")
    assert inbox.status_code == 200 and "Signed in as" in text_of(inbox)
    cookie = console.get_cookie("bqgate-console")
    assert cookie.http_only and cookie.same_site == "Lax" and cookie.path == "/"
    assert not cookie.secure  # dev runs over http on loopback; the cloud sets Secure + __Host-
    lifetime = cookie.expires.timestamp() - time.time()
    assert 25 * 60 < lifetime <= 30 * 60 + 5
    session = session_cookie(console)
    assert session["who"]["email"] == "alice@example.com"
    assert session["who"]["groups"] == ["data-approvers"]
    assert session["who"]["exp"] <= time.time() + 30 * 60 + 1
    dumped = json.dumps(session)
    assert not JWT.search(dumped) and "token" not in json.dumps(session["who"])
    assert not any(k.startswith("_state_") for k in session)  # the sign-in state is spent
    assert not JWT.search(inbox.get_data(as_text=True))
    for name in ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy"):
        assert inbox.headers[name] in ("nosniff", "DENY", "same-origin")
    assert inbox.headers["Cache-Control"] == "no-store"


def test_a_replayed_or_forged_callback_is_refused(wired: Stack, console: Any) -> None:
    resp = console.get("/console/auth/callback?code=abc&state=nope")
    assert resp.status_code == 400
    assert "The sign-in could not be completed" in text_of(resp)
    assert console.get("/console/inbox/items").status_code == 401


def test_tampered_or_expired_cookies_sign_you_out(wired: Stack, console: Any) -> None:
    from bqgate import bootstrap

    key = bootstrap.settings().console_session_key
    who = {
        "email": "alice@example.com",
        "groups": ["data-approvers"],
        "issuer": "x",
        "subject": "alice@example.com",
    }
    console.set_cookie("bqgate-console", forge_cookie({"who": {**who, "exp": 1}}, key))
    assert "Sign in to decide" in text_of(console.get("/console/"))
    console.set_cookie(
        "bqgate-console", forge_cookie({"who": {**who, "exp": int(time.time()) + 600}}, b"x" * 32)
    )  # not our key
    assert "Sign in to decide" in text_of(console.get("/console/"))
    valid = forge_cookie({"who": {**who, "exp": int(time.time()) + 600}}, key)
    console.set_cookie("bqgate-console", valid)
    assert "Signed in as" in text_of(console.get("/console/"))


def test_sign_out_needs_the_csrf_token_and_ends_the_session(wired: Stack, console: Any) -> None:
    sign_in(console, wired, "bob@example.com")
    page = text_of(console.get("/console/"))
    assert console.post("/console/auth/logout").status_code == 400
    assert "Signed in as" in text_of(console.get("/console/"))
    out = console.post("/console/auth/logout", data={"csrf_token": csrf_of(page)})
    assert out.status_code == 303
    assert "Sign in to decide" in text_of(console.get("/console/"))


def test_after_sign_in_you_land_where_you_were_going(wired: Stack, console: Any) -> None:
    console.get("/console/history?decision=denied")
    start = console.get("/console/auth/login")
    authorize = start.headers["Location"]
    page = requests.get(authorize, timeout=10)
    request_id = field_of(page.text, "request_id")
    picked = requests.post(
        wired.url("oidc_issuer") + "/authorize",
        data={
            "request_id": request_id,
            "principal": "alice@example.com",
            "sign_in_key": key_of(wired),
        },
        allow_redirects=False,
        timeout=10,
    )
    callback = urllib.parse.urlsplit(picked.headers["Location"])
    done = console.get(f"{callback.path}?{callback.query}")
    assert done.headers["Location"].endswith("/console/history?decision=denied")


# --------------------------------------------------------------------------- who may


def test_the_agent_identity_gets_403_pages_and_cannot_decide(wired: Stack, console: Any) -> None:
    job = new_pending_job()
    sign_in(console, wired, AGENT)
    inbox = console.get("/console/")
    assert inbox.status_code == 403
    body = text_of(inbox)
    assert "You may not use the approver console" in body
    assert f"{AGENT} is not a member of an approver group (data-approvers)" in body
    assert job.job_id not in body
    for path in ("/console/history", "/console/sessions", f"/console/sessions/job-{job.job_id}"):
        assert console.get(path).status_code == 403, path
    assert console.get("/console/inbox/items").status_code == 403
    token = csrf_of(body)  # the sign-out form's: a valid token for this session
    resp = console.post(f"/console/requests/{job.job_id}/approve", data={"csrf_token": token})
    assert resp.status_code == 403 and "may not approve" in text_of(resp)
    assert stored(job.job_id).state == PENDING_APPROVAL


# --------------------------------------------------------------------------- inbox, decide


def test_inbox_shows_what_the_approver_must_see(wired: Stack, console: Any) -> None:
    # Another statement (the same one would be folded into the newer request's group).
    older = new_pending_job(sql=LEDGER_SQL.replace("LIMIT 3", "LIMIT 2"))
    rewritten = "SELECT entry_id, amount FROM (SELECT * FROM `demo-project.finance.ledger`) AS l"
    blast = [
        {
            "statement": 1,
            "target": "demo-project.finance.ledger",
            "touched": 1200,
            "total": 2000,
            "limits": "at most 100 rows (above: approve)",
            "over": "over the limit of 100 rows",
        }
    ]
    job = new_pending_job(
        session_id="sess-console-inbox", rewritten_sql=rewritten, blast_radius=blast
    )
    sign_in(console, wired, "alice@example.com")
    body = text_of(console.get("/console/"))
    item = body[body.index(f'id="req-{job.job_id}"') :]
    item = item[: item.index("</article>")]
    assert body.index(f'id="req-{job.job_id}"') < body.index(f'id="req-{older.job_id}"')
    words = re.sub(r"<[^>]+>", "", item)
    assert AGENT in words and "ai-coding-agents" in words
    assert "sess-console-inbox" in item and 'href="/console/sessions/sess-console-inbox"' in item
    assert "demo-project.finance.ledger" in item and "restricted" in item
    for reason in job.classification.reasons:
        assert reason in item
    assert "4.0 KiB (4,096 bytes)" in item
    assert re.search(r"1[45] min \d+ s left", item)
    assert "0 of 1 required" in item
    assert '<span class="sql-k">SELECT</span>' in item.replace("&quot;", '"')
    assert "Exact text the agent sent" in item and LEDGER_SQL in words
    assert "Statement that will run" in words
    assert "FROM ( SELECT * FROM `demo-project.finance.ledger` ) AS l" in " ".join(words.split())
    assert (
        "touches 1,200 of 2,000 rows of demo-project.finance.ledger (60%): over the limit "
        "of 100 rows"
    ) in words
    assert (
        "Statement that will run"
        not in text_of(console.get("/console/"))
        .split(f'id="req-{older.job_id}"')[1]
        .split("</article>")[0]
    )
    fragment = text_of(console.get("/console/inbox/items"))
    assert f'data-job-id="{job.job_id}"' in fragment and "<html" not in fragment


def test_approve_in_the_console_runs_the_job_and_updates_slack(wired: Stack, console: Any) -> None:
    from bqgate import bootstrap

    job = new_pending_job()
    assert bootstrap.approval_service().notify(job.job_id) == "posted"
    sign_in(console, wired, "alice@example.com")
    token = csrf_of(text_of(console.get("/console/")))
    resp = console.post(f"/console/requests/{job.job_id}/approve", data={"csrf_token": token})
    assert resp.status_code == 303
    assert "Approved by alice@example.com" in text_of(console.get("/console/"))
    done = wait_job(job.job_id, lambda j: j.state == DONE)
    assert done.error is None and done.total_rows == 3 and done.executions == 1
    rec = ApprovalRecord.from_doc(done.approval)
    assert rec.votes[0].approver == "alice@example.com" and rec.votes[0].via == "console"
    messages = requests.get(wired.url("slack") + "/_test/messages", timeout=10).json()["messages"]
    (msg,) = [m for m in messages if m["ts"] == rec.slack_ts]
    outcome = msg["blocks"][-1]["text"]["text"]
    assert outcome.startswith(
        ":white_check_mark: Approved by alice@example.com in the bqgate console at "
    )
    assert all(b["type"] != "actions" for b in msg["blocks"])  # no more buttons in Slack
    again = console.post(f"/console/requests/{job.job_id}/approve", data={"csrf_token": token})
    assert again.status_code == 303
    assert "Already approved by alice@example.com; nothing changed" in text_of(
        console.get("/console/")
    )


def test_near_identical_requests_are_one_card_decided_together(wired: Stack, console: Any) -> None:
    first, second, newest = new_pending_job(), new_pending_job(), new_pending_job()
    sign_in(console, wired, "alice@example.com")
    body = text_of(console.get("/console/"))
    assert f'id="req-{newest.job_id}"' in body  # one card: the newest of the group
    assert f'id="req-{first.job_id}"' not in body and f'id="req-{second.job_id}"' not in body
    group = body[body.index(f'id="group-{newest.job_id}"') :].split("</p>")[0]
    assert "2 more requests" in group and first.job_id in group and second.job_id in group
    token = csrf_of(body)
    resp = console.post(
        f"/console/requests/{newest.job_id}/approve", data={"csrf_token": token, "group": "1"}
    )
    assert resp.status_code == 303
    assert "Approved 3 of the 3 requests of the group" in text_of(console.get("/console/"))
    for job in (first, second, newest):  # each approved on its own binding, each run once
        done = wait_job(job.job_id, lambda j: j.state == DONE)
        assert done.error is None and done.executions == 1
        assert ApprovalRecord.from_doc(done.approval).votes[0].via == "console"


def test_deny_needs_a_reason_and_the_agent_sees_it(wired: Stack, console: Any) -> None:
    job = new_pending_job()
    sign_in(console, wired, "bob@example.com")
    token = csrf_of(text_of(console.get("/console/")))
    blank = console.post(
        f"/console/requests/{job.job_id}/deny", data={"csrf_token": token, "reason": "   "}
    )
    assert blank.status_code == 303
    assert "A reason is required to deny a request" in text_of(console.get("/console/"))
    assert stored(job.job_id).state == PENDING_APPROVAL
    resp = console.post(
        f"/console/requests/{job.job_id}/deny",
        data={"csrf_token": token, "reason": "use finance.monthly_totals"},
    )
    assert resp.status_code == 303
    job = stored(job.job_id)
    assert job.state == DONE
    assert job.error == {
        "reason": "accessDenied",
        "message": "Denied by bob@example.com: use finance.monthly_totals",
    }
    assert ApprovalRecord.from_doc(job.approval).denied_via == "console"


def test_forged_posts_without_a_valid_csrf_token_are_refused(wired: Stack, console: Any) -> None:
    job = new_pending_job()
    sign_in(console, wired, "alice@example.com")
    missing = console.post(f"/console/requests/{job.job_id}/approve")
    assert missing.status_code == 400
    assert "the CSRF check failed" in text_of(missing)
    other = new_client(wired)
    sign_in(other, wired, "bob@example.com")
    bobs = csrf_of(text_of(other.get("/console/")))
    stolen = console.post(f"/console/requests/{job.job_id}/approve", data={"csrf_token": bobs})
    assert stolen.status_code == 400
    junk = console.post(f"/console/requests/{job.job_id}/approve", data={"csrf_token": "x.y.z"})
    assert junk.status_code == 400
    assert stored(job.job_id).state == PENDING_APPROVAL


def test_bad_paths_and_bodies_get_pages_not_errors(wired: Stack, console: Any) -> None:
    sign_in(console, wired, "alice@example.com")
    token = csrf_of(text_of(console.get("/console/")))
    for path in (
        "/console/requests/__x__/approve",
        "/console/requests/j/launch",
        "/console/requests/..%2F../approve",
    ):
        resp = console.post(path, data={"csrf_token": token})
        assert resp.status_code == 404 and resp.mimetype == "text/html", path
    unknown = console.post("/console/requests/no-such-job/approve", data={"csrf_token": token})
    assert unknown.status_code == 303
    assert "Not found: Job no-such-job" in text_of(console.get("/console/"))
    big = console.post(
        "/console/requests/x/deny", data={"csrf_token": token, "reason": "r" * 70_000}
    )
    assert big.status_code == 413 and big.mimetype == "text/html"
    assert console.get("/console/nope").status_code == 404
    assert console.get("/console/sessions/__x__").status_code == 404
    assert console.get("/console/sessions/no-such-session").status_code == 404
    assert console.get("/console/static/console.css").status_code == 200


# --------------------------------------------------------------------------- history


def test_a_slack_decision_shows_in_the_console_history(wired: Stack, console: Any) -> None:
    job = new_pending_job()
    payload = {
        "type": "block_actions",
        "user": {"id": "U_BOB"},
        "trigger_id": "t",
        "container": {"channel_id": "C_APPROVALS", "message_ts": "0"},
        "actions": [{"action_id": "bqgate_approve", "value": job.job_id}],
    }
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    stamp = str(int(time.time()))
    resp = console.post(
        "/slack/interactions",
        data=body,
        content_type="application/x-www-form-urlencoded",
        headers={
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": sign(wired.signing_secret(), stamp, body),
        },
    )
    assert resp.get_json()["text"] == "Approved by bob@example.com"
    sign_in(console, wired, "alice@example.com")
    assert f'data-job-id="{job.job_id}"' not in text_of(console.get("/console/inbox/items"))
    history = text_of(console.get("/console/history?principal=bob@example.com"))
    row = history[history.index(f'id="hist-{job.job_id}"') :]
    row = row[: row.index("</tr>")]
    assert "approved" in row and "bob@example.com" in row and "Slack" in row


def test_history_search_by_principal_table_decision_and_time(wired: Stack, console: Any) -> None:
    from bqgate import bootstrap

    service = bootstrap.approval_service()
    approved, denied = new_pending_job(), new_pending_job()
    approvers = frozenset({"data-approvers"})
    service.decide(
        approved.job_id, ApproverAct("alice@example.com", approvers, "approve", None, "api")
    )
    service.decide(
        denied.job_id,
        ApproverAct("bob@example.com", approvers, "deny", "not this quarter", "console"),
    )
    sign_in(console, wired, "alice@example.com")

    def ids(query: str) -> set[str]:
        resp = console.get("/console/history?" + query)
        assert resp.status_code == 200, text_of(resp)
        return set(re.findall(r'id="hist-([^"]+)"', resp.get_data(as_text=True)))

    mine = {approved.job_id, denied.job_id}
    assert ids("principal=alice@example.com") & mine == {approved.job_id}
    assert ids("principal=BOB@example.com&decision=denied") & mine == {denied.job_id}
    assert ids(f"principal={urllib.parse.quote(AGENT)}&since=10m") & mine == mine
    assert ids("table=demo-project.finance.ledger&decision=approved") & mine == {approved.job_id}
    assert ids("table=demo-project.sales.orders") & mine == set()
    assert ids("until=2000-01-01") & mine == set()
    page = text_of(console.get("/console/history?principal=bob@example.com&decision=denied"))
    row = page[page.index(f'id="hist-{denied.job_id}"') :]
    assert "not this quarter" in row[: row.index("</tr>")]
    bad = console.get("/console/history?since=yesterday&decision=maybe")
    assert bad.status_code == 400
    assert "Since: expected a duration" in text_of(bad) and "Decision: expected one of" in text_of(
        bad
    )


# --------------------------------------------------------------------------- sessions


def test_session_viewer_replays_the_approved_job_and_exports_it(wired: Stack, console: Any) -> None:
    from bqgate import bootstrap
    from bqgate.chain import Keyring
    from bqgate.commands.sessions import events_from_jsonl
    from bqgate.verification import verify_session

    session = "sess-" + uuid.uuid4().hex[:12]
    job = new_pending_job(session_id=session)
    sign_in(console, wired, "alice@example.com")
    token = csrf_of(text_of(console.get("/console/")))
    console.post(f"/console/requests/{job.job_id}/approve", data={"csrf_token": token})
    wait_job(job.job_id, lambda j: j.state == DONE)
    deadline = time.monotonic() + 30
    while "result" not in [e.kind for e in bootstrap.recorder().events(session)]:
        assert time.monotonic() < deadline, "the executor did not record the result"
        time.sleep(0.2)
    page = console.get(f"/console/sessions/{session}")
    assert page.status_code == 200
    body = text_of(page)
    assert "chain verified" in body
    assert 'id="chain-status"' in body and "chain-ok" in body
    kinds = re.findall(r'data-kind="([a-z_]+)"', body)
    assert kinds[0] == "approval_decided" and kinds[-1] == "result"
    assert {"execution_started", "execution_finished"} <= set(kinds)
    assert "approval approved by alice@example.com via console" in body
    assert '<th scope="col">entry_id</th>' in body and "3 of 3 rows recorded" in body
    listing = text_of(console.get("/console/sessions?principal=" + urllib.parse.quote(AGENT)))
    assert f'href="/console/sessions/{session}"' in listing
    export = console.get(f"/console/sessions/{session}/export.jsonl")
    assert export.status_code == 200 and export.mimetype == "application/jsonl"
    assert f'filename="session-{session}.jsonl"' in export.headers["Content-Disposition"]
    events = events_from_jsonl(export.get_data(as_text=True))
    assert [e.kind for e in events] == kinds
    report = verify_session(
        session, None, events, keys=Keyring([bootstrap.chain_key()]), now_ms=int(time.time() * 1000)
    )
    assert report.ok, report.findings


def test_an_unconfigured_console_says_so(wired: Stack) -> None:
    from bqgate import bootstrap
    from bqgate.adapters.console_web import ConsoleApp, ConsoleConfig, ConsoleDeps

    deps = ConsoleDeps(
        service=bootstrap.approval_service,
        verifier=bootstrap.verifier,
        policy=bootstrap.policy(),
        history=bootstrap.job_history,
        sessions=bootstrap.recorder,
    )
    app = ConsoleApp(
        ConsoleConfig(
            issuer="https://accounts.google.com", client_id="", client_secret="", session_key=b""
        ),
        deps,
    ).app
    resp = app.test_client().get("/console/")
    assert resp.status_code == 503
    assert (
        "not configured: set BQGATE_CONSOLE_CLIENT_ID, BQGATE_CONSOLE_CLIENT_SECRET"
        in html.unescape(resp.get_data(as_text=True))
    )


def test_an_unreachable_identity_provider_gets_a_page(wired: Stack) -> None:
    from bqgate import bootstrap
    from bqgate.adapters.console_web import ConsoleApp, ConsoleConfig, ConsoleDeps
    from bqgate.dev.stack import free_port

    deps = ConsoleDeps(
        service=bootstrap.approval_service,
        verifier=bootstrap.verifier,
        policy=bootstrap.policy(),
        history=bootstrap.job_history,
        sessions=bootstrap.recorder,
    )
    config = ConsoleConfig(
        issuer=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        client_id="bqgate",
        client_secret="s",
        session_key=b"k" * 32,
        dev_mode=True,
    )
    resp = ConsoleApp(config, deps).app.test_client().get("/console/auth/login")
    assert resp.status_code == 503
    assert "cannot be reached right now" in html.unescape(resp.get_data(as_text=True))
