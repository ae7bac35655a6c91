"""The `teams` channel: an Adaptive Card POSTed to a Microsoft Teams webhook.

The payload is the Workflows ("Post to a channel when a webhook request is received") and
incoming-webhook format: a `message` with one Adaptive Card attachment. The card: the subject as a
bold, large TextBlock (in the attention colour for high and critical priority), the body as a
TextBlock (Teams renders a Markdown subset in it), the priority and metadata as a FactSet, and the
links as `Action.OpenUrl` buttons. The webhook URL carries its signature, so it is a secret.
"""

from __future__ import annotations

from typing import Any

from ..engine.model import Notification, Priority
from .chat_webhook import ChatWebhookChannel, ChatWebhookSettings

CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_VERSION = "1.4"
_URGENT = frozenset({Priority.HIGH, Priority.CRITICAL})


class TeamsSettings(ChatWebhookSettings):
    """Settings of a `teams` receiver."""


class TeamsChannel(ChatWebhookChannel):
    """Posts each delivery as an Adaptive Card to one Teams webhook."""

    def __init__(self, settings: TeamsSettings) -> None:
        super().__init__(settings, message)


def message(notification: Notification) -> dict[str, Any]:
    """The webhook payload for a notification."""
    return {
        "type": "message",
        "attachments": [
            {"contentType": CARD_CONTENT_TYPE, "contentUrl": None, "content": card(notification)}
        ],
    }


def card(notification: Notification) -> dict[str, Any]:
    """The Adaptive Card of a notification."""
    title: dict[str, Any] = {
        "type": "TextBlock",
        "text": notification.subject,
        "weight": "Bolder",
        "size": "Large",
        "wrap": True,
    }
    if notification.priority in _URGENT:
        title["color"] = "Attention"
    body: list[dict[str, Any]] = [title]
    if notification.body:
        body.append({"type": "TextBlock", "text": notification.body, "wrap": True})
    facts = [{"title": key, "value": value} for key, value in sorted(notification.metadata.items())]
    if notification.priority is not Priority.UNSPECIFIED:
        facts.insert(0, {"title": "Priority", "value": notification.priority.value})
    if facts:
        body.append({"type": "FactSet", "facts": facts})
    document: dict[str, Any] = {
        "$schema": CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "body": body,
    }
    if notification.links:
        document["actions"] = [
            {"type": "Action.OpenUrl", "title": link.title or link.url, "url": link.url}
            for link in notification.links
        ]
    return document
