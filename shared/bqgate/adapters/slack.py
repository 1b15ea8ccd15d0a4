"""The :class:`bqgate.service.approvals.Notifier` port on Slack's Web API (slack-sdk).

``base_url`` points at the local Slack stand-in in dev (``BQGATE_SLACK_API_URL``).
Calls time out quickly: a click must be answered within Slack's 3 seconds.

Slack answering ``ok: false`` raises :class:`bqgate.errors.Rejected` (nothing happened);
a timeout or a broken connection raises whatever slack-sdk raised (the call may or may
not have happened: slack_notify then looks the message up before posting again).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bqgate.errors import Rejected
from bqgate.settings import Settings

#: Seconds per Slack Web API call.
TIMEOUT_S = 3
#: Messages per conversations.history page, and most pages one lookup reads.
HISTORY_PAGE = 200
HISTORY_PAGES = 5
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")


class SlackNotifier:
    def __init__(self, client: WebClient) -> None:
        self.client = client
        self._channel_ids: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> SlackNotifier:
        kwargs: dict[str, Any] = {"token": settings.slack_bot_token, "timeout": TIMEOUT_S}
        if settings.slack_api_url:
            base = settings.slack_api_url
            kwargs["base_url"] = base if base.endswith("/") else base + "/"
        return cls(WebClient(**kwargs))

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except SlackApiError as exc:
            error = exc.response.get("error") if exc.response is not None else None
            raise Rejected(f"Slack {what} failed: {error or exc}") from None

    def post_request(
        self,
        channel: str,
        text: str,
        blocks: Sequence[Mapping[str, Any]],
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[str, str]:
        kwargs: dict[str, Any] = {}
        if metadata is not None:
            kwargs["metadata"] = dict(metadata)
        resp = self._call(
            "chat.postMessage",
            self.client.chat_postMessage,
            channel=channel,
            text=text,
            blocks=list(blocks),
            unfurl_links=False,
            unfurl_media=False,
            **kwargs,
        )
        self._channel_ids.setdefault(channel, str(resp["channel"]))
        return str(resp["channel"]), str(resp["ts"])

    def channel_id(self, channel: str) -> str:
        """The id of ``channel`` (conversations.history takes ids, not ``#names``)."""
        if _CHANNEL_ID.match(channel):
            return channel
        if channel in self._channel_ids:
            return self._channel_ids[channel]
        name = channel.lstrip("#")
        cursor = None
        for _ in range(HISTORY_PAGES * 4):
            resp = self._call(
                "conversations.list",
                self.client.conversations_list,
                types="public_channel,private_channel",
                exclude_archived=True,
                limit=HISTORY_PAGE,
                cursor=cursor,
            )
            for conv in resp.get("channels") or []:
                if conv.get("name") == name:
                    self._channel_ids[channel] = str(conv["id"])
                    return self._channel_ids[channel]
            cursor = (resp.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                break
        raise Rejected(f"Slack conversations.list failed: no channel named {channel}")

    def find_messages(
        self, channel: str, event_type: str, key: str, value: str, oldest_ms: int
    ) -> list[tuple[str, str]]:
        """Messages tagged with our metadata, from conversations.history (newest first,
        paged), oldest first."""
        cid = self.channel_id(channel)
        found: list[tuple[str, str]] = []
        cursor = None
        for _ in range(HISTORY_PAGES):
            resp = self._call(
                "conversations.history",
                self.client.conversations_history,
                channel=cid,
                oldest=f"{max(oldest_ms, 0) / 1000:.6f}",
                limit=HISTORY_PAGE,
                include_all_metadata=True,
                cursor=cursor,
            )
            for msg in resp.get("messages") or []:
                meta = msg.get("metadata") or {}
                payload = meta.get("event_payload") or {}
                if meta.get("event_type") == event_type and payload.get(key) == value:
                    found.append((cid, str(msg["ts"])))
            cursor = (resp.get("response_metadata") or {}).get("next_cursor")
            if not resp.get("has_more") or not cursor:
                break
        return sorted(found, key=lambda m: float(m[1]))

    def delete_message(self, channel: str, ts: str) -> None:
        self._call("chat.delete", self.client.chat_delete, channel=channel, ts=ts)

    def update_message(
        self, channel: str, ts: str, text: str, blocks: Sequence[Mapping[str, Any]]
    ) -> None:
        self._call(
            "chat.update",
            self.client.chat_update,
            channel=channel,
            ts=ts,
            text=text,
            blocks=list(blocks),
        )

    def post_ephemeral(self, channel: str, user: str, text: str) -> None:
        self._call(
            "chat.postEphemeral",
            self.client.chat_postEphemeral,
            channel=channel,
            user=user,
            text=text,
        )

    def user_email(self, user_id: str) -> str | None:
        resp = self._call("users.info", self.client.users_info, user=user_id)
        user = resp.get("user") or {}
        email = (user.get("profile") or {}).get("email") if isinstance(user, dict) else None
        if user.get("deleted") or user.get("is_bot"):
            return None
        return email.strip().lower() if isinstance(email, str) and email.strip() else None

    def open_modal(self, trigger_id: str, view: Mapping[str, Any]) -> None:
        self._call("views.open", self.client.views_open, trigger_id=trigger_id, view=dict(view))
