"""The approver console on Flask: pages, OpenID Connect sign-in (Authlib), cookies, CSRF.

``functions/approvals`` hands every ``/console`` request to :meth:`ConsoleApp.respond`;
the rest of that function (Slack interactions, the approver API) never builds any of this.

Who is signed in is decided exactly as for the approver API: the ID token from the code
exchange is checked by the same :class:`~bqgate.identity.TokenVerifier` (same issuers,
audiences, groups), and every decision goes through the same
:class:`~bqgate.service.approvals.ApprovalService` with ``via="console"``.

* Sign-in: authorization code + PKCE (S256) + nonce + state with the configured issuer
  (``BQGATE_CONSOLE_ISSUER``; the dev issuer locally). No token is kept: the session
  cookie holds the verified email, groups and an absolute expiry (at most
  :data:`SESSION_SECONDS`, never past the ID token's own ``exp``).
* The session cookie is signed (``BQGATE_CONSOLE_SESSION_KEY``), HttpOnly, SameSite=Lax
  (Strict would drop it on the identity provider's redirect back) and, outside dev,
  Secure with the ``__Host-`` prefix.
* Every form carries a CSRF token (Flask-WTF); responses carry a strict
  Content-Security-Policy (no inline script or style), no-store caching, no framing.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import flask
import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.flask_client import OAuth
from flask_wtf.csrf import CSRFError, CSRFProtect
from joserfc.errors import JoseError
from markupsafe import Markup
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

from bqgate import approvals as core
from bqgate.anchors import AnchorIndex
from bqgate.audit.chain import SessionHead, session_doc_id
from bqgate.chain import Keyring
from bqgate.console import PREFIX, STATIC, TEMPLATES, sql_html, views
from bqgate.errors import AccessDenied, BqgateError, InvalidRequest, NotFound, Unauthenticated
from bqgate.identity import Principal
from bqgate.policy import Policy
from bqgate.ports import DecisionHistory, SessionReader, TokenVerifier
from bqgate.service.approvals import ApprovalService, ApproverAct, group_body

log = logging.getLogger("bqgate.console")

#: Longest a console session lasts (it also ends when the ID token it came from expires).
SESSION_SECONDS = 30 * 60
#: How often the inbox asks for changes.
POLL_MS = 5000
#: Rows per history page; sessions per list.
HISTORY_LIMIT = 50
SESSIONS_LIMIT = 50
#: A job id the console will look up (the approver API's characters; no reserved names).
_JOB_ID = re.compile(r"^(?!\.{1,2}$)(?!__.*__$)[A-Za-z0-9_.\-]{1,1024}$")
_SESSION_DOC_ID = re.compile(r"^(?!\.{1,2}$)(?!__.*__$)[A-Za-z0-9_.@:+=-]{1,200}$")

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)


@dataclass(frozen=True)
class ConsoleConfig:
    """How the console signs people in (from :class:`bqgate.settings.Settings`)."""

    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    session_key: bytes = field(repr=False)
    dev_mode: bool = False
    session_seconds: int = SESSION_SECONDS

    def problem(self) -> str | None:
        """Why the console cannot run (None: it can)."""
        missing = [
            name
            for name, value in (
                ("BQGATE_CONSOLE_ISSUER", self.issuer),
                ("BQGATE_CONSOLE_CLIENT_ID", self.client_id),
                ("BQGATE_CONSOLE_CLIENT_SECRET", self.client_secret),
            )
            if not value
        ]
        if missing:
            return f"the approver console is not configured: set {', '.join(missing)}"
        if len(self.session_key) < 32:
            return (
                "the approver console is not configured: BQGATE_CONSOLE_SESSION_KEY must "
                "hold at least 32 bytes"
            )
        return None


@dataclass(frozen=True)
class ConsoleDeps:
    """What the console talks to; factories, so nothing is built before it is needed."""

    service: Callable[[], ApprovalService]
    verifier: Callable[[], TokenVerifier]
    policy: Policy
    history: Callable[[], DecisionHistory]
    sessions: Callable[[], SessionReader]
    #: What verifying a session takes besides its record: the chain keys (None: none
    #: configured) and the checkpoints kept outside Firestore.
    evidence: Callable[[], tuple[Keyring | None, AnchorIndex]] = lambda: (None, AnchorIndex())
    clock: Callable[[], float] = time.time


def valid_job_id(job_id: str) -> bool:
    """
    >>> valid_job_id("bq-abc_1.2"), valid_job_id(".."), valid_job_id("__x__"), valid_job_id("a/b")
    (True, False, False, False)
    """
    return bool(_JOB_ID.match(job_id))


def safe_next(path: object) -> str | None:
    """A console path to return to after sign-in, or None (never another site).

    >>> safe_next("/console/sessions/s1"), safe_next("//evil.example/"), safe_next("https://x")
    ('/console/sessions/s1', None, None)
    """
    if not isinstance(path, str) or not path.startswith(PREFIX + "/") or len(path) > 2048:
        return None
    if "//" in path or "\\" in path or any(c.isspace() or not c.isprintable() for c in path):
        return None
    parts = urlsplit(path)
    return path if not parts.scheme and not parts.netloc else None


class ConsoleApp:
    """The console's Flask app, answering requests the approvals function hands it."""

    def __init__(self, config: ConsoleConfig, deps: ConsoleDeps) -> None:
        self.config = config
        self.deps = deps
        self.app = create_app(config, deps)

    def respond(self, request: flask.Request) -> Response:
        """Answer one request of the outer (functions-framework) app with the console.

        The body is read through the outer request (functions-framework reads it again
        after the function returns) and handed to the console as a fresh stream.
        """
        body = request.get_data(cache=True)
        environ = {
            **request.environ,
            "wsgi.input": io.BytesIO(body),
            "CONTENT_LENGTH": str(len(body)),
        }
        return flask.Response.from_app(self.app, environ, buffered=True)


def _principal(data: Any, now: float) -> Principal | None:
    if not isinstance(data, dict):
        return None
    try:
        exp = int(data["exp"])
        email = str(data["email"])
        groups = frozenset(str(g) for g in data["groups"])
    except (KeyError, TypeError, ValueError):
        return None
    if exp <= now or not email:
        return None
    return Principal(
        email=email,
        groups=groups,
        issuer=str(data.get("issuer", "")),
        subject=str(data.get("subject", "")),
        expires_at=exp,
    )


def create_app(config: ConsoleConfig, deps: ConsoleDeps) -> flask.Flask:
    """The console as a Flask app (mounted at :data:`bqgate.console.PREFIX`)."""
    app = flask.Flask(
        "bqgate.console",
        template_folder=str(TEMPLATES),
        static_folder=str(STATIC),
        static_url_path=PREFIX + "/static",
    )
    problem = config.problem()
    secure = not config.dev_mode
    app.config.update(
        # Unconfigured, every page is refused (below); a random key signs nothing lasting.
        SECRET_KEY=config.session_key or secrets.token_bytes(32),
        SESSION_COOKIE_NAME="__Host-bqgate-console" if secure else "bqgate-console",
        SESSION_COOKIE_PATH="/",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure,
        PERMANENT_SESSION_LIFETIME=dt.timedelta(seconds=config.session_seconds),
        WTF_CSRF_TIME_LIMIT=config.session_seconds,
        WTF_CSRF_SSL_STRICT=True,
        MAX_CONTENT_LENGTH=64 * 1024,
        SEND_FILE_MAX_AGE_DEFAULT=300,
        TEMPLATES_AUTO_RELOAD=False,
    )
    if secure:
        # Cloud Run terminates TLS in front of the function and says so in X-Forwarded-Proto.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_proto=1)  # type: ignore[method-assign]
    CSRFProtect(app)
    oauth = OAuth(app)
    if problem is None:
        oauth.register(
            "oidc",
            client_id=config.client_id,
            client_secret=config.client_secret,
            server_metadata_url=config.issuer + "/.well-known/openid-configuration",
            client_kwargs={
                "scope": "openid email",
                "code_challenge_method": "S256",
                "default_timeout": 5,
            },
        )
    _filters(app)
    bp = flask.Blueprint("console", __name__, url_prefix=PREFIX)

    def now_ms() -> int:
        return int(deps.clock() * 1000)

    def who() -> Principal | None:
        principal = _principal(flask.session.get("who"), deps.clock())
        if principal is None and "who" in flask.session:
            flask.session.pop("who", None)
        return principal

    def page(template: str, status: int = 200, **context: Any) -> Response:
        html = flask.render_template(template, who=who(), now_ms=now_ms(), **context)
        return flask.Response(html, status=status, mimetype="text/html")

    def error_page(status: int, title: str, message: str) -> Response:
        return page("error.html", status=status, title=title, message=message)

    def signed_in(
        *, fragment: bool = False
    ) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
        """Views that need a signed-in person; others are sent to sign in (or get 401)."""

        def wrap(view: Callable[..., Response]) -> Callable[..., Response]:
            @functools.wraps(view)
            def inner(**kwargs: Any) -> Response:
                principal = who()
                if principal is None:
                    if fragment:
                        return flask.Response("signed out", status=401, mimetype="text/plain")
                    target = safe_next(flask.request.full_path.rstrip("?"))
                    if flask.request.method == "GET" and target:
                        flask.session["next"] = target
                    status = 200 if flask.request.method == "GET" else 403
                    return page("signin.html", status=status, issuer=config.issuer)
                return view(principal, **kwargs)

            return inner

        return wrap

    def require_approver(principal: Principal) -> None:
        core.require_approver(principal.email, principal.groups, deps.policy, action="review")

    @app.before_request
    def configured() -> Response | None:
        if problem is not None and flask.request.endpoint != "static":
            log.error("console request refused: %s", problem)
            return error_page(503, "Console not configured", problem)
        return None

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "same-origin"
        resp.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        resp.headers["Cross-Origin-Resource-Policy"] = "same-origin"
        resp.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if secure:
            resp.headers["Strict-Transport-Security"] = "max-age=31536000"
        if flask.request.endpoint != "static":
            resp.headers["Cache-Control"] = "no-store"
            resp.vary.add("Cookie")
        return resp

    # --- sign-in ---------------------------------------------------------------------

    @bp.get("/auth/login")
    def login() -> Any:
        flask.session.permanent = True
        redirect_uri = flask.url_for("console.callback", _external=True)
        try:
            return oauth.oidc.authorize_redirect(redirect_uri)
        except (requests.RequestException, ValueError, AuthlibBaseError) as exc:
            return provider_unavailable(exc)

    def provider_unavailable(exc: Exception) -> Response:
        log.warning("identity provider %s unavailable: %s", config.issuer, type(exc).__name__)
        return error_page(
            503,
            "Sign-in unavailable",
            f"The identity provider ({config.issuer}) cannot be reached right now. "
            "Try again in a minute.",
        )

    @bp.get("/auth/callback")
    def callback() -> Response:
        try:
            token = oauth.oidc.authorize_access_token()
        except OAuthError as exc:  # state, code or the provider's refusal
            log.warning("sign-in failed: %s", exc.error)
            return error_page(
                400,
                "Sign-in failed",
                "The sign-in could not be completed ("
                f"{exc.description or exc.error}). Start again from the console.",
            )
        except (AuthlibBaseError, JoseError) as exc:  # the ID token's signature or claims
            log.warning("sign-in refused: %s", type(exc).__name__)
            return error_page(
                401, "Sign-in refused", "The identity provider's ID token was not valid."
            )
        except (requests.RequestException, ValueError) as exc:
            return provider_unavailable(exc)
        id_token = token.get("id_token") if isinstance(token, dict) else None
        if not isinstance(id_token, str):
            return error_page(400, "Sign-in failed", "The identity provider sent no ID token.")
        principal = deps.verifier().verify(id_token)  # the approver API's own check
        if principal.issuer.rstrip("/") != config.issuer:
            raise Unauthenticated(
                f"the token was issued by {principal.issuer}, "
                f"not the console's issuer {config.issuer}"
            )
        target = safe_next(flask.session.get("next"))
        flask.session.clear()  # a fresh session (and CSRF token) for the signed-in person
        flask.session.permanent = True
        flask.session["who"] = {
            "email": principal.email,
            "groups": sorted(principal.groups),
            "issuer": principal.issuer,
            "subject": principal.subject,
            "exp": min(principal.expires_at, int(deps.clock()) + config.session_seconds),
        }
        log.info("console sign-in: %s", principal.email)
        return flask.redirect(target or flask.url_for("console.inbox"), 303)

    @bp.post("/auth/logout")
    def logout() -> Response:
        flask.session.clear()
        flask.flash("You are signed out.", "info")
        return flask.redirect(flask.url_for("console.inbox"), 303)

    # --- inbox and decisions -----------------------------------------------------------

    def pending(principal: Principal) -> dict[str, Any]:
        # One call into the approvals service: its listing (order, paging, groups of
        # near-identical requests) is the console's.
        cursor = flask.request.args.get("cursor") or None
        listing = deps.service().pending_for(principal.email, principal.groups, cursor=cursor)
        return {
            "items": views.inbox_items(listing.items, deps.policy.tier_of),
            "next_cursor": listing.next_cursor,
            "cursor": cursor,
        }

    @bp.get("/")
    @signed_in()
    def inbox(principal: Principal) -> Response:
        return page("inbox.html", poll_ms=POLL_MS, **pending(principal))

    @bp.get("/inbox/items")
    @signed_in(fragment=True)
    def inbox_items(principal: Principal) -> Response:
        return page("_inbox_items.html", **pending(principal))

    @bp.post("/requests/<job_id>/<action>")
    @signed_in()
    def decide(principal: Principal, job_id: str, action: str) -> Response:
        if action not in ("approve", "deny") or not valid_job_id(job_id):
            return error_page(404, "Not found", "There is no such request.")
        reason = flask.request.form.get("reason") if action == "deny" else None
        verb: core.Action = "approve" if action == "approve" else "deny"
        act = ApproverAct(principal.email, principal.groups, verb, reason, "console")
        try:
            if flask.request.form.get("group") == "1":  # the request and its group
                body = group_body(job_id, verb, deps.service().decide_group(job_id, act))
                flask.flash(body["message"], "ok" if body["decided"] else "info")
            else:
                outcome = deps.service().decide(job_id, act)
                changed = outcome.decision.changed or outcome.redispatched
                flask.flash(outcome.decision.message, "ok" if changed else "info")
        except (InvalidRequest, NotFound) as err:
            flask.flash(err.message, "error")
        return flask.redirect(flask.url_for("console.inbox"), 303)

    # --- history and sessions ----------------------------------------------------------

    @bp.get("/history")
    @signed_in()
    def history(principal: Principal) -> Response:
        require_approver(principal)
        search = views.parse_history_search(flask.request.args, now_ms())
        rows: list[views.HistoryRow] = []
        if not search.errors:
            rows = [
                views.history_row(j) for j in deps.history().decided(search.query(HISTORY_LIMIT))
            ]
        older = None
        if len(rows) == HISTORY_LIMIT and rows[-1].decided_at_ms is not None:
            args = search.args(before=rows[-1].decided_at_ms)
            older = flask.url_for("console.history") + "?" + urlencode(args)
        return page(
            "history.html",
            search=search,
            rows=rows,
            older=older,
            decisions=views.DECISIONS,
            status=400 if search.errors else 200,
        )

    @bp.get("/sessions")
    @signed_in()
    def sessions(principal: Principal) -> Response:
        require_approver(principal)
        args = flask.request.args
        who_filter = " ".join(str(args.get("principal") or "").split())[:320]
        label = " ".join(str(args.get("label") or "").split())[:200]
        since_text = " ".join(str(args.get("since") or "").split())[:64]
        errors, since_ms = [], None
        if since_text:
            try:
                since_ms = views.parse_when(since_text, now_ms())
            except ValueError as exc:
                errors.append(f"Since: {exc}")
        heads: list[SessionHead] = []
        if errors:
            pass
        elif label:  # the client's session label: one session per principal that used it
            heads = [
                h
                for h in deps.sessions().by_label(label, limit=SESSIONS_LIMIT)
                if (not who_filter or who_filter.lower() in h.principals)
                and (since_ms is None or h.last_ms >= since_ms)
            ]
        else:
            heads = deps.sessions().list_sessions(
                principal=who_filter.lower() or None, since_ms=since_ms, limit=SESSIONS_LIMIT
            )
        return page(
            "sessions.html",
            heads=heads,
            principal_filter=who_filter,
            label=label,
            since=since_text,
            errors=errors,
            status=400 if errors else 200,
        )

    def load_session(session_id: str) -> tuple[Any, list[Any]]:
        if not _SESSION_DOC_ID.match(session_id):
            raise NotFound("There is no such session.")
        reader = deps.sessions()
        head, events = reader.head(session_id), reader.events(session_id)
        if head is None and not events:
            raise NotFound(f"There is no session {session_id} in the session record.")
        return head, events

    @bp.get("/sessions/<session_id>")
    @signed_in()
    def session_view(principal: Principal, session_id: str) -> Response:
        require_approver(principal)
        head, events = load_session(session_id)
        stored_id = head.session_id if head else events[0].session_id
        keys, anchors = deps.evidence()
        chain = views.check_chain(
            stored_id, head, events, keys=keys, anchors=anchors.of(stored_id), now_ms=now_ms()
        )
        return page("session.html", t=views.timeline(head, events, chain), doc_id=session_id)

    @bp.get("/sessions/<session_id>/export.jsonl")
    @signed_in()
    def session_export(principal: Principal, session_id: str) -> Response:
        require_approver(principal)
        _, events = load_session(session_id)
        resp = flask.Response(views.export_jsonl(events), mimetype="application/jsonl")
        resp.headers["Content-Disposition"] = f'attachment; filename="session-{session_id}.jsonl"'
        return resp

    app.register_blueprint(bp)

    # --- errors: one place, always a page, never data ---------------------------------

    @app.errorhandler(CSRFError)
    def csrf_error(err: CSRFError) -> Response:
        log.warning("console form refused: %s", err.description)
        return error_page(
            400,
            "Form refused",
            "This form was not sent by your console page, "
            "or it expired (the CSRF check failed). Reload the page and try again.",
        )

    @app.errorhandler(AccessDenied)
    def denied(err: AccessDenied) -> Response:
        return page("forbidden.html", status=403, message=err.message)

    @app.errorhandler(Unauthenticated)
    def unauthenticated(err: Unauthenticated) -> Response:
        log.warning("console sign-in refused: %s", err.message)
        return error_page(401, "Sign-in refused", f"Your sign-in was not accepted: {err.message}.")

    @app.errorhandler(NotFound)
    def not_found(err: NotFound) -> Response:
        return error_page(404, "Not found", err.message)

    @app.errorhandler(BqgateError)
    def bqgate_error(err: BqgateError) -> Response:
        return error_page(err.http_status, "Request failed", err.message)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Response:
        code = err.code or 400
        return error_page(code, err.name, err.description or err.name)

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> Response:
        incident = uuid.uuid4().hex[:12]
        log.exception(
            "console failure (incident %s) on %s %s",
            incident,
            flask.request.method,
            flask.request.path,
        )
        return error_page(
            500, "Something went wrong", f"The console failed to answer (incident {incident})."
        )

    return app


def _breakable(text: object) -> Markup:
    """Escaped text with line-break opportunities after ``@`` and ``.`` (long emails).

    >>> str(_breakable("agent@demo-project.iam.x<y"))
    'agent@<wbr>demo-project.<wbr>iam.<wbr>x&lt;y'
    """
    escaped = str(Markup.escape(str(text)))
    return Markup(re.sub(r"([@.])", r"\1<wbr>", escaped))


def _filters(app: flask.Flask) -> None:
    env = app.jinja_env
    env.filters["sql"] = lambda text: Markup(sql_html.highlight(str(text or "")))
    env.filters["pretty_sql"] = sql_html.formatted
    env.filters["utc"] = views.utc
    env.filters["iso"] = views.iso
    env.filters["left"] = views.describe_left
    env.filters["via"] = views.via_name
    env.filters["short"] = lambda text, n=12: str(text)[:n]
    env.filters["session_doc"] = session_doc_id
    env.filters["breakable"] = _breakable
    env.globals["poll_ms"] = POLL_MS
    env.trim_blocks = True
    env.lstrip_blocks = True


__all__ = [
    "CSP",
    "SESSION_SECONDS",
    "ConsoleApp",
    "ConsoleConfig",
    "ConsoleDeps",
    "create_app",
    "safe_next",
    "valid_job_id",
]
