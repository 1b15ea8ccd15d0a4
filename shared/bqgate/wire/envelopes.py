"""Pub/Sub messages and the CloudEvents that carry them, both directions, in one place.

Every hand-off names one job: the message is ``{"job_id": ...}`` as compact JSON. Pub/Sub
delivers it base64-encoded under ``message.data``, either pushed as an HTTP body (the
executor, the sweeper's dead letters) or as a ``messagePublished`` CloudEvent's data
(slack_notify); the ingress's direct call to the executor sends the very body a push
would, as a binary-mode CloudEvent, so the executor has one way in.

>>> headers, body = direct_call("j1")
>>> headers["ce-type"], job_id_of_push(body)
('google.cloud.pubsub.topic.v1.messagePublished', 'j1')
>>> job_id_of_event({"message": {"data": "bm90IGpzb24="}}) is None  # "not json"
True
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping
from typing import Any

from bqgate.wire import codec

#: The CloudEvent type of a Pub/Sub delivery.
MESSAGE_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
#: The attribute Pub/Sub sets on a dead letter: how often it tried the original delivery.
DEAD_LETTER_ATTEMPTS = "CloudPubSubDeadLetterSourceDeliveryCount"


def message_data(message: Mapping[str, Any]) -> bytes:
    """The bytes a hand-off publishes (compact JSON).

    >>> message_data({"job_id": "j1"})
    b'{"job_id":"j1"}'
    """
    return json.dumps(dict(message), separators=(",", ":")).encode()


def job_message(job_id: str) -> dict[str, str]:
    """The message that hands ``job_id`` on."""
    return {"job_id": job_id}


def direct_call(
    job_id: str, handover: Mapping[str, Any] | None = None
) -> tuple[dict[str, str], bytes]:
    """Headers and body of a binary-mode CloudEvent like a Pub/Sub push delivery; with
    ``handover``, the job as the ingress wrote it (``"job"``: the executor need not read
    it; see :meth:`bqgate.adapters.firestore_store.FirestoreJobStore.adopt`)."""
    event_id = uuid.uuid4().hex
    data = base64.b64encode(message_data(job_message(job_id))).decode()
    headers = {
        "ce-id": event_id,
        "ce-specversion": "1.0",
        "ce-type": MESSAGE_PUBLISHED,
        "ce-source": "//bqgate/ingress/direct",
        "Content-Type": "application/json",
    }
    envelope: dict[str, Any] = {
        "message": {"data": data, "messageId": event_id},
        "subscription": "direct",
    }
    if handover is not None:
        envelope["job"] = handover
    return headers, codec.dumps_bytes(envelope)


def job_id_of_event(envelope: Mapping[str, Any] | None) -> str | None:
    """The ``job_id`` of a Pub/Sub envelope (``{"message": {"data": ...}}``: a push body
    or a ``messagePublished`` event's data), or None if malformed.

    >>> data = base64.b64encode(b'{"job_id": "j1"}').decode()
    >>> job_id_of_event({"message": {"data": data}})
    'j1'
    >>> job_id_of_event({"message": {}}) is None, job_id_of_event(None) is None
    (True, True)
    """
    try:
        message = json.loads(base64.b64decode(envelope["message"]["data"]))  # type: ignore[index]  # malformed shapes land in except
        job_id = message["job_id"]
    except (KeyError, TypeError, ValueError, binascii.Error):
        return None
    return job_id if isinstance(job_id, str) and job_id else None


def job_id_of_push(body: bytes) -> str | None:
    """The job id of a pushed HTTP body: a Pub/Sub push, a binary-mode CloudEvent (the
    direct call) or a structured-mode one (``specversion`` and ``data`` in the body).

    >>> job_id_of_push(b"not json") is None
    True
    """
    return pushed(body)[0]


def pushed(body: bytes) -> tuple[str | None, Any]:
    """The job id of a pushed HTTP body (see :func:`job_id_of_push`) and the job a direct
    call hands over with it (``"job"``; None for a Pub/Sub delivery), from one parse.

    >>> headers, body = direct_call("j1", {"doc": {"job_id": "j1"}})
    >>> pushed(body)
    ('j1', {'doc': {'job_id': 'j1'}})
    >>> pushed(b"[]")
    (None, None)
    """
    try:
        envelope = json.loads(body)
    except ValueError:
        return None, None
    handover = envelope.get("job") if isinstance(envelope, dict) else None
    if isinstance(envelope, dict) and "specversion" in envelope:  # structured mode
        envelope = envelope.get("data")
    return job_id_of_event(envelope if isinstance(envelope, Mapping) else None), handover


def delivery_attempts(envelope: Mapping[str, Any] | None) -> int | None:
    """How often Pub/Sub delivered a dead letter before giving up (its attribute).

    >>> delivery_attempts({"message": {"attributes": {DEAD_LETTER_ATTEMPTS: "5"}}})
    5
    >>> delivery_attempts({}) is None
    True
    """
    try:
        raw = envelope["message"]["attributes"][DEAD_LETTER_ATTEMPTS]  # type: ignore[index]  # malformed shapes land in except
        return int(raw)
    except (KeyError, TypeError, ValueError):
        return None
