"""The `webhook` channel: POSTs each delivery as JSON, signed per the Standard Webhooks spec.

`webhook-id` and `Idempotency-Key` carry the delivery's idempotency key, which is the same for
every attempt of a (uid, channel) key, so a receiver can drop the duplicates a timeout may cause.
An HTTP 410 Gone means the receiver asks never to be called again: the channel object stops
sending until the configuration is reloaded (which builds a new channel object).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from datetime import UTC, datetime
from http import HTTPStatus

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator
from standardwebhooks.webhooks import Webhook

from ..engine.ports import Delivery, SendResult
from .http import HttpEndpoint, url_problem, url_secrets
from .secrets import SecretError, SecretRef

__all__ = ["WebhookChannel", "WebhookSettings", "signing_key", "url_problem"]

# Set by the channel on every request; a static header must not silently replace them.
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "idempotency-key",
        "user-agent",
        "webhook-id",
        "webhook-signature",
        "webhook-timestamp",
    }
)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# The Standard Webhooks spec asks for 24 to 64 random bytes.
_SIGNING_KEY_BYTES = range(24, 65)
GONE_ERROR = "receiver disabled after HTTP 410 Gone; reload or restart the sidecar to enable it"


class WebhookSettings(BaseModel):
    """Settings of a `webhook` receiver: exactly one of `url` or `url_secret`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = None
    url_secret: SecretRef | None = Field(default=None, validate_default=True)
    signing_secret: SecretRef | None = None
    timeout: float = Field(default=10.0, gt=0, le=300)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str | None) -> str | None:
        if url is not None and (problem := url_problem(url)):
            raise ValueError(problem)
        return url

    @field_validator("url_secret")
    @classmethod
    def _exactly_one_url(
        cls, url_secret: SecretRef | None, info: ValidationInfo
    ) -> SecretRef | None:
        if "url" in info.data and (info.data["url"] is None) == (url_secret is None):
            raise ValueError("give exactly one of 'url' (not secret) or 'url_secret'")
        return url_secret

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"{name!r} is set by sendonce and cannot be overridden")
            if "\r" in value or "\n" in value:
                raise ValueError(f"the value of {name!r} must be a single line")
        return headers


def signing_key(secret: SecretStr) -> bytes:
    """The HMAC key of a `whsec_` secret; raises ValueError without quoting the secret."""
    value = secret.get_secret_value()
    if not value.startswith("whsec_"):
        raise ValueError("must start with 'whsec_'")
    encoded = value.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("must be 'whsec_' followed by base64") from None
    if len(key) not in _SIGNING_KEY_BYTES:
        raise ValueError("must encode 24 to 64 bytes (Standard Webhooks)")
    return key


class WebhookChannel:
    """POSTs deliveries as JSON with one pooled httpx client per channel."""

    def __init__(self, settings: WebhookSettings) -> None:
        secrets: list[str] = []
        if settings.url_secret is not None:
            url = settings.url_secret.resolve("url_secret").get_secret_value()
            if problem := url_problem(url):
                raise SecretError("url_secret", f"the URL it holds {problem}")
            secrets += url_secrets(url)
        else:
            assert settings.url is not None
            url = settings.url
        self._signer: Webhook | None = None
        if settings.signing_secret is not None:
            secret = settings.signing_secret.resolve("signing_secret")
            try:
                key = signing_key(secret)
            except ValueError as exc:
                raise SecretError("signing_secret", str(exc)) from None
            self._signer = Webhook(key)
            secrets += [secret.get_secret_value(), secret.get_secret_value().removeprefix("whsec_")]
        self._timeout = settings.timeout
        self._endpoint = HttpEndpoint(
            url, timeout=settings.timeout, secrets=secrets, headers=settings.headers
        )
        self._gone = False

    @property
    def timeout(self) -> float:
        return self._timeout

    async def send(self, delivery: Delivery) -> SendResult:
        if self._gone:
            return SendResult.permanent(GONE_ERROR)
        body = _payload(delivery)
        result, reply = await self._endpoint.post(body.encode(), self._headers(delivery, body))
        if reply is not None and reply.status_code == HTTPStatus.GONE:
            self._gone = True
        return result

    async def close(self) -> None:
        await self._endpoint.close()

    def _headers(self, delivery: Delivery, body: str) -> dict[str, str]:
        message_id = delivery.idempotency_key
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": message_id,
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._signer is not None:
            signed_at = datetime.fromtimestamp(timestamp, tz=UTC)
            headers["webhook-signature"] = str(self._signer.sign(message_id, signed_at, body))
        return headers


def _payload(delivery: Delivery) -> str:
    key = delivery.key
    document = {
        "uid": key.uid,
        "channel": key.channel,
        "attempt": delivery.attempt,
        "idempotency_key": delivery.idempotency_key,
        **delivery.notification.canonical(),
    }
    # The signature covers exactly this text, so it is serialised once and sent as is.
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))
