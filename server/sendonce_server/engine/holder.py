"""Waiting for another holder's attempt (another replica, or a flight this process lost track of).

The waiter shares the attempt's outcome instead of making one of its own; when the holder's
lease ends without a result, or a newer attempt started, the caller decides again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .answers import answer
from .model import AttemptResult, DeliveryResult, Key, Lease
from .ports import Store

# How long to wait before asking again for a lease that has expired by our clock only: the
# store's clock (Redis's) has not expired it yet.
SKEW_WAIT = 0.05


async def await_holder(
    store: Store, now: Callable[[], float], key: Key, lease: Lease, *, skew_wait: float = 0.0
) -> DeliveryResult | None:
    """The shared answer once the attempt under `lease` finished; None means decide again.

    Returns only when the attempt finished, the lease ended or changed hands, or (after
    `skew_wait` more seconds) the lease outlived its expiry by our clock.
    """
    async with store.watch(key) as changed:
        while True:
            # Cleared before the read, never after: a change notified while the read is awaited
            # (a completion published by another replica) must wake the wait below.
            changed.clear()
            at = now()
            record = await store.read(key, at)
            if record is None:
                return None
            current = record.lease
            if current is not None and current.token == lease.token:
                wait = current.expires_at - at
                if wait <= 0:
                    if not skew_wait:
                        return None
                    wait, skew_wait = skew_wait, 0.0
                try:
                    async with asyncio.timeout(wait):
                        await changed.wait()
                except TimeoutError:
                    pass
                continue
            entry = record.entry(lease.attempt, lease.token)
            if entry is None or entry.result not in _FINISHED:
                return None  # released, cleared with force, or abandoned: nothing to share
            if current is not None and current.expires_at > at:
                return None  # a newer attempt runs: join that one instead
            return answer(record, at, shared=True, idempotency_key=key.idempotency_key)


_FINISHED = (AttemptResult.SUCCEEDED, AttemptResult.FAILED, AttemptResult.FAILED_PERMANENT)
