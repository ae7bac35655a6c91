"""The `slack` channel: a Block Kit message POSTed to a Slack incoming webhook.

The message: a header block (the subject), the body as mrkdwn converted from Markdown, the links
as buttons, and a context line with the priority and the metadata; `text` is the plain fallback
Slack shows in notifications. The webhook URL is a credential, so it is only ever a secret
reference. Slack's 429 carries `Retry-After`, which the shared HTTP rules honour.
"""

from __future__ import annotations

from typing import Any

from ..engine.model import Notification, Priority
from .chat_webhook import ChatWebhookChannel, ChatWebhookSettings
from .markdown import escape_mrkdwn, to_mrkdwn

# Slack's limits (https://api.slack.com/reference/block-kit/blocks).
HEADER_CHARS = 150
SECTION_CHARS = 3000
BUTTON_TEXT_CHARS = 75
BUTTON_URL_CHARS = 3000
MAX_BUTTONS = 25
CONTEXT_CHARS = 3000
FALLBACK_CHARS = 3000
ELLIPSIS = "…"


class SlackSettings(ChatWebhookSettings):
    """Settings of a `slack` receiver."""


class SlackChannel(ChatWebhookChannel):
    """Posts each delivery as a Block Kit message to one incoming webhook."""

    def __init__(self, settings: SlackSettings) -> None:
        super().__init__(settings, message)


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
