"""The `pagerduty` channel: a `trigger` event of the PagerDuty Events API v2.

`dedup_key` is the delivery's idempotency key, so PagerDuty itself folds a repeated attempt into
the alert it already opened. Severity follows the priority. An event must stay under 512 KB: when
it would not, the body and then the metadata values are cut (each marked), and the event says so
with `custom_details.truncated`. The routing key is a secret; it travels in the body, never in an
error (PagerDuty's own replies are redacted before they are quoted).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..engine.model import Notification, Priority, Receipt
from ..engine.ports import Delivery, SendResult, SendStatus
from .http import HttpEndpoint, url_problem
from .secrets import SecretRef

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
# PagerDuty's limit is 512 KB per event; stay a little under it.
MAX_EVENT_BYTES = 512 * 1000
SUMMARY_CHARS = 1024
TRUNCATED = " [truncated]"
SEVERITY = {
    Priority.CRITICAL: "critical",
    Priority.HIGH: "error",
    Priority.NORMAL: "warning",
    Priority.LOW: "info",
    Priority.UNSPECIFIED: "info",
}


class PagerDutySettings(BaseModel):
    """Settings of a `pagerduty` receiver."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    routing_key: SecretRef
    url: str = EVENTS_URL
    source: str = Field(default="sendonce", min_length=1, max_length=255)
    timeout: float = Field(default=10.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        if problem := url_problem(url):
            raise ValueError(problem)
        return url


class PagerDutyChannel:
    """Sends each delivery as a PagerDuty alert trigger."""

    def __init__(self, settings: PagerDutySettings) -> None:
        self._routing_key = settings.routing_key.resolve("routing_key").get_secret_value()
        self._source = settings.source
        self._timeout = settings.timeout
        self._endpoint = HttpEndpoint(
            settings.url, timeout=settings.timeout, secrets=[self._routing_key]
        )

    @property
    def timeout(self) -> float:
        return self._timeout

    async def send(self, delivery: Delivery) -> SendResult:
        document = event(delivery, routing_key=self._routing_key, source=self._source)
        content = encode(document, MAX_EVENT_BYTES)
        result, reply = await self._endpoint.post(content, {"Content-Type": "application/json"})
        if result.status is not SendStatus.SUCCESS or reply is None:
            return result
        dedup_key = _reply_dedup_key(reply.body) or delivery.idempotency_key
        return SendResult.success(
            Receipt(dedup_key, {"status_code": str(reply.status_code), "dedup_key": dedup_key})
        )

    async def close(self) -> None:
        await self._endpoint.close()


def event(delivery: Delivery, *, routing_key: str, source: str) -> dict[str, Any]:
    """The Events API v2 trigger for a delivery (before any truncation)."""
    notification: Notification = delivery.notification
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": delivery.idempotency_key,
        "payload": {
            "summary": _cut(notification.subject or delivery.key.uid, SUMMARY_CHARS),
            "source": source,
            "severity": SEVERITY[notification.priority],
            "custom_details": {
                "body": notification.body,
                "metadata": dict(sorted(notification.metadata.items())),
            },
        },
        "links": [{"href": link.url, "text": link.title} for link in notification.links],
    }


def encode(document: dict[str, Any], limit: int) -> bytes:
    """The event as JSON of at most `limit` bytes: cut the body, then the longest metadata values.

    Each cut keeps the longest prefix that removes the excess (measured in bytes of JSON, escapes
    and UTF-8 included), so one pass per field suffices; what was cut ends with " [truncated]".
    """
    data = _json(document)
    if len(data) <= limit:
        return data
    details = document["payload"]["custom_details"]
    details["truncated"] = True
    metadata: dict[str, str] = details["metadata"]
    fields: list[tuple[dict[str, Any], str]] = [(details, "body")]
    fields += [(metadata, key) for key in sorted(metadata, key=lambda k: -len(metadata[k]))]
    for holder, name in fields:
        data = _json(document)
        if len(data) <= limit:
            return data
        holder[name] = _shorten(holder[name], len(data) - limit)
    data = _json(document)
    if len(data) <= limit:
        return data
    # Only the metadata keys or the links can still be too big: keep what always fits.
    document["payload"]["custom_details"] = {"truncated": True}
    document["links"] = []
    return _json(document)


def _shorten(text: str, excess: int) -> str:
    """`text` cut so that its JSON form is at least `excess` bytes smaller, marked as cut."""
    budget = _size(text) - excess - len(TRUNCATED)
    # The longest prefix within the budget; a character is at least one byte, hence the bound.
    low, high = 0, max(0, min(len(text), budget))
    while low < high:
        middle = (low + high + 1) // 2
        if _size(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[:low] + TRUNCATED if low else TRUNCATED.strip()


def _size(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode())


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def _reply_dedup_key(body: bytes) -> str | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    dedup_key = document.get("dedup_key") if isinstance(document, dict) else None
    return dedup_key if isinstance(dedup_key, str) and dedup_key else None
