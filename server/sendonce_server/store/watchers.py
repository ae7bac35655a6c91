"""Events that tell in-process waiters a key's record changed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class KeyWatchers(Generic[K]):
    def __init__(self) -> None:
        self._events: dict[K, list[asyncio.Event]] = {}

    @asynccontextmanager
    async def watch(self, key: K) -> AsyncIterator[asyncio.Event]:
        changed = asyncio.Event()
        events = self._events.setdefault(key, [])
        events.append(changed)
        try:
            yield changed
        finally:
            events.remove(changed)
            if not events:
                del self._events[key]

    def notify(self, key: K) -> None:
        for changed in self._events.get(key, ()):
            changed.set()
