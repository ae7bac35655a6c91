"""The store interface. Every implementation passes the same contract tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from ..engine.decisions import Completion, Decision, ReserveRequest
from ..engine.model import Key, Record


class StoreUnavailable(Exception):
    """The store cannot be reached: the caller must not send anything."""


class Store(Protocol):
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
