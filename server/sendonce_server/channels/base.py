"""The channel interface: one small module per channel type implements it."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from ..engine.model import Key, Notification, Receipt


@dataclass(frozen=True, slots=True)
class Delivery:
    """One attempt to deliver a notification through a receiver."""

    key: Key
    notification: Notification
    attempt: int

    @property
    def idempotency_key(self) -> str:
        return self.key.idempotency_key


class SendStatus(enum.Enum):
    SUCCESS = "success"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class SendResult:
    """Whether the attempt succeeded, and if not whether a retry makes sense.

    `error` is shown to callers and logged: it must never contain a secret (URL, token, ...).
    """

    status: SendStatus
    error: str = ""
    receipt: Receipt | None = None
    # The receiver's own Retry-After, in seconds; wins over the backoff when longer.
    retry_after: float | None = None

    @classmethod
    def success(cls, receipt: Receipt | None = None) -> SendResult:
        return cls(SendStatus.SUCCESS, receipt=receipt)

    @classmethod
    def retryable(cls, error: str, retry_after: float | None = None) -> SendResult:
        return cls(SendStatus.RETRYABLE, error=error, retry_after=retry_after)

    @classmethod
    def permanent(cls, error: str) -> SendResult:
        return cls(SendStatus.PERMANENT, error=error)


class Channel(Protocol):
    """A configured receiver. `timeout` bounds one attempt; the engine enforces it too."""

    @property
    def timeout(self) -> float: ...

    async def send(self, delivery: Delivery) -> SendResult: ...

    async def close(self) -> None: ...
