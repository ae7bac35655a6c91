"""The `slack` channel: a Block Kit message POSTed to a Slack incoming webhook.

The message: a header block (the subject), the body as mrkdwn converted from Markdown, the links
as buttons, and a context line with the priority and the metadata; `text` is the plain fallback
Slack shows in notifications. The webhook URL is a credential, so it is only ever a secret
reference. Slack's 429 carries `Retry-After`, which the shared HTTP rules honour.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..engine.model import Notification, Priority
from .base import Delivery, SendResult
from .http import HttpEndpoint, url_problem, url_secrets
from .markdown import escape_mrkdwn, to_mrkdwn
from .secrets import SecretError, SecretRef

# Slack's limits (https://api.slack.com/reference/block-kit/blocks).
HEADER_CHARS = 150
SECTION_CHARS = 3000
BUTTON_TEXT_CHARS = 75
BUTTON_URL_CHARS = 3000
MAX_BUTTONS = 25
CONTEXT_CHARS = 3000
FALLBACK_CHARS = 3000
ELLIPSIS = "…"


class SlackSettings(BaseModel):
    """Settings of a `slack` receiver."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    webhook_url: SecretRef
    timeout: float = Field(default=10.0, gt=0, le=300)


class SlackChannel:
    """Posts each delivery as a Block Kit message to one incoming webhook."""

    def __init__(self, settings: SlackSettings) -> None:
        url = settings.webhook_url.resolve("webhook_url").get_secret_value()
        if problem := url_problem(url):
            raise SecretError("webhook_url", f"the URL it holds {problem}")
        self._timeout = settings.timeout
        self._endpoint = HttpEndpoint(url, timeout=settings.timeout, secrets=url_secrets(url))

    @property
    def timeout(self) -> float:
        return self._timeout

    async def send(self, delivery: Delivery) -> SendResult:
        content = json.dumps(message(delivery.notification), ensure_ascii=False).encode()
        result, _ = await self._endpoint.post(content, {"Content-Type": "application/json"})
        return result

    async def close(self) -> None:
        await self._endpoint.close()


def message(notification: Notification) -> dict[str, Any]:
    """The webhook payload for a notification."""
    body = to_mrkdwn(notification.body)
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _cut(notification.subject, HEADER_CHARS),
                "emoji": True,
            },
        }
    ]
    if body:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _cut(body, SECTION_CHARS)}}
        )
    if notification.links:
        buttons = [
            {
                "type": "button",
                "action_id": f"link-{index}",
                "text": {
                    "type": "plain_text",
                    "text": _cut(link.title or link.url, BUTTON_TEXT_CHARS),
                },
                "url": link.url,
            }
            for index, link in enumerate(notification.links[:MAX_BUTTONS])
            if len(link.url) <= BUTTON_URL_CHARS
        ]
        if buttons:
            blocks.append({"type": "actions", "elements": buttons})
    context = _context(notification)
    if context:
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        )
    fallback = escape_mrkdwn(notification.subject) + (f"\n{body}" if body else "")
    return {"text": _cut(fallback, FALLBACK_CHARS), "blocks": blocks}


def _context(notification: Notification) -> str:
    parts = []
    if notification.priority is not Priority.UNSPECIFIED:
        parts.append(f"*Priority:* {notification.priority.value}")
    parts += [
        f"*{escape_mrkdwn(key)}:* {escape_mrkdwn(value)}"
        for key, value in sorted(notification.metadata.items())
    ]
    return _cut("  |  ".join(parts), CONTEXT_CHARS)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)] + ELLIPSIS
