"""The :class:`bqgate.service.approvals.Notifier` port on Slack's Web API (slack-sdk).

``base_url`` points at the local Slack stand-in in dev (``BQGATE_SLACK_API_URL``).
Calls time out quickly: a click must be answered within Slack's 3 seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bqgate.errors import Unavailable
from bqgate.settings import Settings

#: Seconds per Slack Web API call.
TIMEOUT_S = 3


class SlackNotifier:
    def __init__(self, client: WebClient) -> None:
        self.client = client

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
            raise Unavailable(f"Slack {what} failed: {error or exc}") from None

    def post_request(self, channel: str, text: str, blocks: Sequence[Mapping[str, Any]]
                     ) -> tuple[str, str]:
        resp = self._call("chat.postMessage", self.client.chat_postMessage, channel=channel,
                          text=text, blocks=list(blocks), unfurl_links=False, unfurl_media=False)
        return str(resp["channel"]), str(resp["ts"])

    def update_message(self, channel: str, ts: str, text: str,
                       blocks: Sequence[Mapping[str, Any]]) -> None:
        self._call("chat.update", self.client.chat_update, channel=channel, ts=ts, text=text,
                   blocks=list(blocks))

    def post_ephemeral(self, channel: str, user: str, text: str) -> None:
        self._call("chat.postEphemeral", self.client.chat_postEphemeral, channel=channel,
                   user=user, text=text)

    def user_email(self, user_id: str) -> str | None:
        resp = self._call("users.info", self.client.users_info, user=user_id)
        user = resp.get("user") or {}
        email = (user.get("profile") or {}).get("email") if isinstance(user, dict) else None
        if user.get("deleted") or user.get("is_bot"):
            return None
        return email.strip().lower() if isinstance(email, str) and email.strip() else None

    def open_modal(self, trigger_id: str, view: Mapping[str, Any]) -> None:
        self._call("views.open", self.client.views_open, trigger_id=trigger_id, view=dict(view))
