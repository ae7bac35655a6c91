"""The `teams` channel: an Adaptive Card POSTed to a Microsoft Teams webhook.

The payload is the Workflows ("Post to a channel when a webhook request is received") and
incoming-webhook format: a `message` with one Adaptive Card attachment. The card: the subject as a
bold, large TextBlock (in the attention colour for high and critical priority), the body as a
TextBlock (Teams renders a Markdown subset in it), the priority and metadata as a FactSet, and the
links as `Action.OpenUrl` buttons. The webhook URL carries its signature, so it is a secret.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..engine.model import Notification, Priority
from .base import Delivery, SendResult
from .http import HttpEndpoint, url_problem, url_secrets
from .secrets import SecretError, SecretRef

CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_VERSION = "1.4"
_URGENT = frozenset({Priority.HIGH, Priority.CRITICAL})


class TeamsSettings(BaseModel):
    """Settings of a `teams` receiver."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    webhook_url: SecretRef
    timeout: float = Field(default=10.0, gt=0, le=300)


class TeamsChannel:
    """Posts each delivery as an Adaptive Card to one Teams webhook."""

    def __init__(self, settings: TeamsSettings) -> None:
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
