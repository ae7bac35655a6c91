"""RSS growth per record of the memory store, measured in a process of its own.

    python -m bench.memory --records 1000000            # the store, as the engine drives it
    python -m bench.memory --records 50000 --via engine  # the whole Engine.deliver (slower)

`store` (the default) calls MemoryStore.reserve and complete with what the engine passes for a
successful `noop` attempt (a fresh fingerprint string, the lease's token, the noop channel's
own Receipt), so each record holds what the server's records hold; it skips the engine's
per-call asyncio machinery, which allocates nothing that outlives the call. `engine` runs the
real Engine.deliver, to cross-check that claim on fewer records. The uids are 36-character
UUID-shaped strings, as in the RPC scenarios. RSS is read from /proc/self/status after a
warm-up and after the last record, both after gc.collect(). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from sendonce_server.channels.registry import build_channel
from sendonce_server.engine.decisions import Completion, Reserved, ReserveRequest
from sendonce_server.engine.engine import Engine, EngineSettings, Receiver
from sendonce_server.engine.model import AttemptResult, Key, Link, Notification, Outcome, Priority
from sendonce_server.engine.policy import RetryPolicy
from sendonce_server.engine.ports import Delivery
from sendonce_server.store.memory import MemoryStore

from .procs import rss_bytes
from .workloads import CHANNEL, NOTIFICATION, uid

T = TypeVar("T")
_RUN = 0x5E4D
_WARMUP = 1000


def _notification() -> Notification:
    """What the servicer builds from the RPC scenarios' notification (a new object per call)."""
    return Notification(
        subject=NOTIFICATION.subject,
        body=NOTIFICATION.body,
        priority=Priority.HIGH,
        metadata=dict(NOTIFICATION.metadata),
        links=tuple(Link(link.title, link.url) for link in NOTIFICATION.links),
    )


def _now(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (MemoryStore's, the noop channel's) to its end."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise RuntimeError("the coroutine suspended")


class _StoreFill:
    """reserve + send (noop) + complete, as Engine._fly and Engine._attempt do them."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.channel = build_channel("noop", {})
        self.policy = RetryPolicy()
        self.lease_seconds = self.channel.timeout + EngineSettings().lease_margin
        self.notification = _notification()  # the noop channel does not keep it
        self.fingerprint = self.notification.fingerprint()

    def fill(self, first: int, count: int) -> None:
        fingerprint = self.fingerprint
        half = len(fingerprint) // 2
        for index in range(first, first + count):
            key = Key(uid(_RUN, index), CHANNEL)
            request = ReserveRequest(
                # The engine computes it per call: a string of its own in every record.
                fingerprint=fingerprint[:half] + fingerprint[half:],
                max_attempts=self.policy.max_attempts,
                persisted_attempts=0,
                lease_seconds=self.lease_seconds,
            )
            decision = _now(self.store.reserve(key, request, time.time()))
            if not isinstance(decision, Reserved):
                raise RuntimeError(f"record {index}: {decision}")
            lease = decision.lease
            sent = _now(self.channel.send(Delivery(key, self.notification, lease.attempt)))
            completion = Completion(
                attempt=lease.attempt,
                token=lease.token,
                result=AttemptResult.SUCCEEDED,
                receipt=sent.receipt,
                retry_delay=self.policy.backoff(lease.attempt, _RNG),
            )
            _now(self.store.complete(key, completion, time.time()))

    def __len__(self) -> int:
        return len(self.store)


class _EngineFill:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.engine = Engine(self.store, [Receiver(CHANNEL, build_channel("noop", {}))])

    def fill(self, first: int, count: int) -> None:
        asyncio.run(self._fill(first, count))

    async def _fill(self, first: int, count: int) -> None:
        for index in range(first, first + count):
            key = Key(uid(_RUN, index), CHANNEL)
            result = await self.engine.deliver(key, _notification())
            if result.outcome is not Outcome.DELIVERED:
                raise RuntimeError(f"record {index}: {result.outcome}")

    def __len__(self) -> int:
        return len(self.store)


class _Rng:
    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


_RNG: Any = _Rng()


def measure(records: int, via: str) -> dict[str, object]:
    filler = _StoreFill() if via == "store" else _EngineFill()
    filler.fill(0, _WARMUP)  # lazy allocations (caches, the loop's) are not records
    gc.collect()
    before = rss_bytes(os.getpid())
    started = time.perf_counter()
    filler.fill(_WARMUP, records)
    seconds = time.perf_counter() - started
    gc.collect()
    after = rss_bytes(os.getpid())
    assert len(filler) == _WARMUP + records
    return {
        "records": records,
        "via": via,
        "rss_before": before,
        "rss_after": after,
        "bytes_per_record": round((after - before) / records, 1),
        "seconds": round(seconds, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--via", choices=("store", "engine"), default="store")
    args = parser.parse_args()
    print(json.dumps(measure(args.records, args.via)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
