"""The fast path: allowed jobs go straight to the executor instead of through Pub/Sub.

The ingress POSTs the executor exactly the CloudEvent that a Pub/Sub push delivery would
(``google.cloud.pubsub.topic.v1.messagePublished``), so one executor entry point serves
both paths. The direct call also sends ``X-Bqgate-Direct: 1``, and the executor answers it
with what it did (:class:`bqgate.service.dispatch.ExecutorAnswer`): the finished job as
committed, with its masked rows when they fit one answer, so the ingress can answer the
agent without another store round trip. The call carries the job as the ingress just
wrote it, so the executor need not read it (its claim is a compare-and-set on that
version: a job that changed meanwhile is read again). Both ends also hand each other the head of the
job's session as they last committed it (``X-Bqgate-Session-Head``), so the next commit to
that session (the executor's claim, the ingress's next request) need not read it first; a
head that moved meanwhile only fails that commit, which then reads it (see
:meth:`bqgate.adapters.firestore_audit.FirestoreRecorder.learn`). In the cloud the call
carries an ID token for the executor's URL (Cloud Run IAM admits only the ingress's
service account); on the loopback dev stack it needs none.
Any failure falls back to the ``execute`` topic; if that fails too, the job's outbox record
stays due and the sweeper publishes it. The executor is idempotent, so a job that several
paths deliver still runs once.

An allowed read goes further (:func:`bqgate.service.dispatch.directly_acceptable`): the
ingress hands it over *uncommitted* (``"job": {"new": {"doc", "outbox"}}``) and the
executor creates it with its claim, in one commit made while the read runs. If the
executor did not create it (it answers without ``accepted``), or could not be asked, the
ingress creates it and hands it off as above; there is no topic fallback for a job that is
not stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import requests

from bqgate.adapters.google_clients import environment_read_once
from bqgate.jobs import Job
from bqgate.outbox import OutboxRecord
from bqgate.ports import Queue
from bqgate.service.dispatch import DIRECT_HEADER, NOT_CREATED, ExecutorAnswer
from bqgate.wire import codec, envelopes

#: The header both ends of the direct call hand the job's session head in.
HEAD_HEADER = "X-Bqgate-Session-Head"
#: The hand-over key of a job the ingress has not committed (the executor creates it).
NEW_JOB = "new"


class SessionHints:
    """What the direct call's two ends hand each other (see the module docstring): the
    job as the ingress just wrote it, and its session's head. ``store`` knows the job it
    just wrote (and which session it belongs to); ``recorder`` knows that session's head
    as it committed it."""

    def __init__(self, store: Any, recorder: Any) -> None:
        self.store = store
        self.recorder = recorder

    def outgoing(self, job_id: str) -> str | None:
        """The head of ``job_id``'s session as this process last committed it, if known."""
        try:
            job = self.store.known(job_id)
        except Exception:  # a hint is only ever an optimisation
            log.exception("no session hint for %s", job_id)
            return None
        return None if job is None else self.outgoing_for(job)

    def outgoing_for(self, job: Job) -> str | None:
        """The head of ``job``'s session as this process last committed it, if known."""
        try:
            hint: str | None = self.recorder.hint(self.recorder.session_of(job))
            return hint
        except Exception:
            log.exception("no session hint for %s", job.job_id)
            return None

    def incoming(self, hint: str | None) -> None:
        try:
            self.recorder.learn(hint)
        except Exception:
            log.exception("session hint dropped")

    def handover(self, job_id: str) -> dict[str, Any] | None:
        """The job as this process just wrote it, for the executor (None: not known)."""
        try:
            handed: dict[str, Any] | None = self.store.handover(job_id)
            return handed
        except Exception:
            log.exception("no handover for %s", job_id)
            return None

    def adopt(self, job_id: str, state: Any) -> None:
        if state is None:
            return
        try:
            if not self.store.adopt(job_id, state):
                log.warning("direct call for %s handed over no usable job: reading it", job_id)
        except Exception:
            log.exception("handover of %s dropped", job_id)


def serve_direct(
    executor: Any,
    hints: SessionHints | None,
    job_id: str,
    hint: str | None,
    handover: Any = None,
) -> tuple[ExecutorAnswer, bytes, dict[str, str]]:
    """The executor's side of the direct call: run the job (as the ingress handed it
    over, when it did); answer with what happened (the answer's bytes, see
    :meth:`ExecutorAnswer.to_json`) and the job's session head (headers)."""
    if hints is not None:
        hints.incoming(hint)
    new = handover.get(NEW_JOB) if isinstance(handover, dict) else None
    if new is not None:
        answer: ExecutorAnswer = _accept(executor, job_id, new)
    else:
        if hints is not None:
            hints.adopt(job_id, handover)
        answer = executor.execute(job_id, direct=True)
    out = hints.outgoing(job_id) if hints is not None else None
    return answer, answer.to_json(), ({HEAD_HEADER: out} if out else {})


def _accept(executor: Any, job_id: str, new: Any) -> ExecutorAnswer:
    """Create and run the job a direct call hands over uncommitted (``NEW_JOB``); an
    answer without ``accepted`` when it is not one this executor will create."""
    try:
        job = Job.from_doc(dict(new["doc"]))
        handoff = OutboxRecord.from_doc(dict(new["outbox"]))
    except (KeyError, TypeError, ValueError):
        log.warning("direct call for %s handed over no usable new job", job_id)
        return ExecutorAnswer(NOT_CREATED)
    if job.job_id != job_id:
        return ExecutorAnswer(NOT_CREATED)
    answer: ExecutorAnswer = executor.accept(job, handoff)
    return answer


log = logging.getLogger("bqgate.ingress")


def google_id_token(audience: str) -> Callable[[], str | None]:
    """ID tokens for ``audience`` from the runtime's service account (cached by google-auth)."""
    import google.auth.transport.requests
    from google.oauth2 import id_token

    request = google.auth.transport.requests.Request()

    def get() -> str | None:
        token: str = id_token.fetch_id_token(request, audience)
        return token

    return get


class DirectExecutor:
    def __init__(
        self,
        url: str,
        *,
        queue: Queue,
        topic: str,
        timeout_s: float = 30.0,
        token: Callable[[], str | None] = lambda: None,
        hints: SessionHints | None = None,
    ) -> None:
        self.url = url.rstrip("/") + "/"
        self.queue = queue
        self.topic = topic
        self.timeout_s = timeout_s
        self.token = token
        self.hints = hints
        self.session = environment_read_once(requests.Session(), self.url)

    def accept(self, job: Job, handoff: OutboxRecord) -> ExecutorAnswer | None:
        """Hand the executor ``job`` uncommitted, with its ``accepted`` record, to create
        and run (:func:`bqgate.service.dispatch.directly_acceptable`). Its answer, or None
        if it could not be asked; never the topic: there is no stored job to deliver."""
        new = {NEW_JOB: {"doc": job.to_doc(), "outbox": handoff.to_doc()}}
        hint = self.hints.outgoing_for(job) if self.hints is not None else None
        answer, problem = self._call(job.job_id, new, hint)
        if answer is None:
            log.warning("direct hand-over of %s %s; the ingress creates it", job.job_id, problem)
        return answer

    def __call__(self, job_id: str) -> ExecutorAnswer | None:
        """Hand ``job_id`` to the executor and return its answer (None: it went to the
        topic instead); raises only if neither path took it."""
        handover = self.hints.handover(job_id) if self.hints is not None else None
        hint = self.hints.outgoing(job_id) if self.hints is not None else None
        answer, problem = self._call(job_id, handover, hint)
        if answer is not None:
            return answer
        # Fall back whatever went wrong: the job must not be lost.
        log.warning("direct executor call for %s %s; using the topic", job_id, problem)
        self.queue.publish(self.topic, envelopes.job_message(job_id))
        return None

    def _call(
        self, job_id: str, handover: Any, hint: str | None
    ) -> tuple[ExecutorAnswer | None, str]:
        """One direct call: the executor's answer, or None and what went wrong."""
        headers, body = envelopes.direct_call(job_id, handover)
        headers[DIRECT_HEADER] = "1"
        if hint:
            headers[HEAD_HEADER] = hint
        try:
            bearer = self.token()
            if bearer:
                headers["Authorization"] = f"Bearer {bearer}"
            resp = self.session.post(self.url, data=body, headers=headers, timeout=self.timeout_s)
        except Exception as exc:
            return None, f"failed ({type(exc).__name__})"
        if resp.status_code >= 300:
            return None, f"answered {resp.status_code}"
        if self.hints is not None:
            self.hints.incoming(resp.headers.get(HEAD_HEADER))
        return _answer(resp), ""


def _answer(resp: requests.Response) -> ExecutorAnswer:
    """The executor's answer (an acknowledgement without one: handled, nothing to add)."""
    return ExecutorAnswer.from_json(resp.content) or ExecutorAnswer("handled")


def catalog_transport(
    url: str,
    *,
    timeout_s: float = 20.0,
    token: Callable[[], str | None] = lambda: None,
) -> Callable[[dict[str, str]], dict[str, Any]]:
    """``call(request) -> answer`` for the executor's catalog endpoint.

    Authenticated like the fast path (an ID token for the executor's URL in the cloud).
    The executor's 404 becomes NotFound; anything else that is not an answer is
    Unavailable, which the BigQuery clients do not retry.
    """
    from bqgate.errors import BqgateError, InvalidRequest, NotFound, Unavailable
    from bqgate.service.catalog import CATALOG_PATH

    endpoint = url.rstrip("/") + CATALOG_PATH
    session = environment_read_once(requests.Session(), endpoint)

    def call(request: dict[str, str]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        try:
            bearer = token()
            if bearer:
                headers["Authorization"] = f"Bearer {bearer}"
            resp = session.post(
                endpoint, data=codec.dumps_bytes(request), headers=headers, timeout=timeout_s
            )
            body = codec.loads(resp.content)
        except Exception as exc:
            log.warning("catalog call failed (%s)", type(exc).__name__)
            raise Unavailable("Table metadata is unavailable right now; try again") from None
        if resp.status_code == 200 and isinstance(body, dict):
            return body
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        err: BqgateError
        if resp.status_code == 404:
            err = NotFound(message or "Not found")
        elif resp.status_code == 400:
            err = InvalidRequest(message or "invalid catalog request")
        else:
            log.warning("catalog call answered %s", resp.status_code)
            err = Unavailable("Table metadata is unavailable right now; try again")
        raise err

    return call
