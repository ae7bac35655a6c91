"""The ports of the engine: what a channel and a store must do, in the engine's own terms.

Adapters (channels/, store/) implement these and import the engine; the engine never imports
an adapter.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from .decisions import Completion, Decision, ReserveRequest
from .listing import DeliveryPage, DeliveryQuery
from .model import Key, Notification, Receipt, Record


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


class StateUnavailable(Exception):
    """The delivery state cannot be reached: the caller must not send anything."""


class Store(Protocol):
    """Where records live. Every implementation passes the same contract tests."""

    async def reserve(self, key: Key, request: ReserveRequest, now: float) -> Decision:
        """Apply `decisions.decide` atomically and persist the record if it changed."""
        ...

    async def complete(self, key: Key, completion: Completion, now: float) -> Record | None:
        """Apply `decisions.complete` atomically; returns the record after it (None if gone)."""
        ...

    async def read(self, key: Key, now: float) -> Record | None:
        """The key's record, or None when there is none (or it expired). Never creates one."""
        ...

    async def clear(
        self, uid: str, channels: Sequence[str], force: bool, now: float
    ) -> tuple[list[str], list[str]]:
        """Tombstone (or with force, delete) the uid's records for the channels (all if empty).

        Returns (cleared channels, channels whose attempt is still running).
        """
        ...

    async def list_deliveries(self, query: DeliveryQuery, now: float) -> DeliveryPage:
        """A page of the records `query` admits, in `listing` order; never changes a record.

        Bounded in cost: through an index, never a walk of every key of a shared store.
        """
        ...

    def watch(self, key: Key) -> AbstractAsyncContextManager[asyncio.Event]:
        """An event set whenever the key's record changes while the context is open.

        Open it before reading the record, so a change between the read and the wait is
        never missed.
        """
        ...

    async def ping(self) -> bool:
        """Whether the store is reachable (for health checks)."""
        ...

    async def close(self) -> None: ...
