"""Waiting for a condition that no event announces (e.g. how many callers have joined)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Return once `condition()` holds; TimeoutError after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        # A poll, not a sleep as synchronisation: the engine exposes counts, not events, to keep
        # its hot path free of notifications nobody but a test would await.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.002)
