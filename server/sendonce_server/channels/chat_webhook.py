"""A chat webhook (Slack, Teams): one JSON document, rendered from the notification, POSTed
to a URL that is itself the credential, so it is only ever a secret reference."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..engine.model import Notification
from ..engine.ports import Delivery, SendResult
from .http import HttpEndpoint, url_problem, url_secrets
from .secrets import SecretError, SecretRef


class ChatWebhookSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    webhook_url: SecretRef
    timeout: float = Field(default=10.0, gt=0, le=300)


class ChatWebhookChannel:
    """Posts `render(notification)` as JSON; the shared HTTP rules classify the answer."""

    def __init__(
        self, settings: ChatWebhookSettings, render: Callable[[Notification], dict[str, Any]]
    ) -> None:
        url = settings.webhook_url.resolve("webhook_url").get_secret_value()
        if problem := url_problem(url):
            raise SecretError("webhook_url", f"the URL it holds {problem}")
        self._render = render
        self._timeout = settings.timeout
        self._endpoint = HttpEndpoint(url, timeout=settings.timeout, secrets=url_secrets(url))

    @property
    def timeout(self) -> float:
        return self._timeout

    async def send(self, delivery: Delivery) -> SendResult:
        content = json.dumps(self._render(delivery.notification), ensure_ascii=False).encode()
        result, _ = await self._endpoint.post(content, {"Content-Type": "application/json"})
        return result

    async def close(self) -> None:
        await self._endpoint.close()
