"""Redis: one store shared by every replica.

Each decision is one Lua script call (redis_decisions.lua), atomic on the server, timed by the
server's clock, with keys hash-tagged per notification so a Redis Cluster keeps them in one
slot. Records and tombstones carry TTLs, so Redis memory stays bounded with no sweeper. Waiters
learn of completions through one pub/sub subscription per store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import BusyLoadingError, ReadOnlyError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..engine.decisions import (
    Completion,
    Decision,
    Mismatch,
    Reserved,
    ReserveRequest,
    Running,
    Verdict,
)
from ..engine.model import Key, Outcome, Record
from . import codec
from .base import StoreUnavailable
from .urls import CLUSTER_SCHEMES, SENTINEL_SCHEME
from .watchers import KeyWatchers

log = logging.getLogger("sendonce.store")

DAY = 86_400.0
_SCRIPT = resources.files(__package__).joinpath("redis_decisions.lua").read_text()
# Failures of reaching Redis; any other error (e.g. from the script) is a bug to surface.
_UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,  # a replica, or a primary demoted by a failover: no write can be recorded
    OSError,
)
_VERDICTS = {
    "already_delivered": Outcome.ALREADY_DELIVERED,
    "failed_permanent": Outcome.FAILED_PERMANENT,
    "exhausted": Outcome.EXHAUSTED,
    "retry_later": Outcome.RETRY_LATER,
    "circuit_open": Outcome.CIRCUIT_OPEN,
}


class RedisStore:
    def __init__(
        self,
        url: str,
        *,
        retention: float = 7 * DAY,
        clear_grace: float = 600.0,
        prefix: str = "sendonce:",
        timeout: float = 2.0,
        server_time: bool = True,
    ) -> None:
        """`server_time=False` makes the scripts use the callers' `now` (tests with a clock)."""
        self.retention = retention
        self.clear_grace = clear_grace
        self.prefix = prefix
        self.server_time = server_time
        self._redis: aioredis.Redis | RedisCluster
        if url.startswith(SENTINEL_SCHEME):
            self._redis = _sentinel_master(url, timeout)
        elif url.startswith(CLUSTER_SCHEMES):
            # Every key of a notification shares its {uid} hash tag, so each script call
            # touches one slot and is routed to the node that owns it.
            self._redis = RedisCluster.from_url(
                url.replace("+cluster", "", 1),
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
            )
        else:
            self._redis = aioredis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                health_check_interval=30,
            )
        self._script = self._redis.register_script(_SCRIPT)
        self._changes = f"{prefix}changes"
        self._watchers = KeyWatchers[str]()
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    def _keys(self, key: Key) -> tuple[str, str, str]:
        tag = f"{self.prefix}{{{key.uid}}}"
        return f"{tag}:r:{key.channel}", f"{tag}:f:{key.channel}", f"{tag}:i"

    def _now(self, now: float) -> str:
        return "" if self.server_time else repr(now)

    async def reserve(self, key: Key, request: ReserveRequest, now: float) -> Decision:
        record_key, fence_key, index_key = self._keys(key)
        kind, raw = await self._call(
            [record_key, fence_key, index_key],
            [
                "reserve",
                self._now(now),
                key.channel,
                request.fingerprint,
                request.max_attempts,
                request.persisted_attempts,
                request.lease_seconds,
                self.retention,
                "1" if request.blocked else "0",
            ],
        )
        if kind == "mismatch":
            return Mismatch()
        record = codec.loads(raw)
        if kind == "reserved":
            assert record.lease is not None
            return Reserved(record.lease, record)
        if kind == "running":
            assert record.lease is not None
            return Running(record.lease, record)
        return Verdict(_VERDICTS[kind], record)

    async def complete(self, key: Key, completion: Completion, now: float) -> Record | None:
        record_key, _, index_key = self._keys(key)
        receipt = ""
        if completion.receipt is not None:
            receipt = json.dumps([completion.receipt.reference, dict(completion.receipt.details)])
        kind, raw = await self._call(
            [record_key, index_key],
            [
                "complete",
                self._now(now),
                key.channel,
                completion.attempt,
                completion.token,
                completion.result.value,
                completion.error,
                receipt,
                completion.retry_delay,
                self.retention,
                self._changes,
            ],
        )
        return None if kind == "gone" else codec.loads(raw)

    async def read(self, key: Key, now: float) -> Record | None:
        try:
            raw = await self._redis.get(self._keys(key)[0])
        except _UNREACHABLE as error:
            await self._drop_idle_connections()
            raise _unavailable(error) from None
        if raw is None:
            return None
        record = codec.loads(_text(raw))
        # Redis drops it by TTL; a caller's clock ahead of the server's sees it expire first.
        return None if record.expires_at <= now and not self.server_time else record

    async def clear(
        self, uid: str, channels: Sequence[str], force: bool, now: float
    ) -> tuple[list[str], list[str]]:
        record_key, _, index_key = self._keys(Key(uid, ""))
        cleared, running = await self._call(
            [index_key],
            [
                "clear",
                self._now(now),
                "1" if force else "0",
                self.clear_grace,
                record_key,
                self._changes,
                *channels,
            ],
        )
        return [_text(c) for c in cleared], [_text(c) for c in running]

    @asynccontextmanager
    async def watch(self, key: Key) -> AsyncIterator[asyncio.Event]:
        await self._subscribe()
        async with self._watchers.watch(self._keys(key)[0]) as changed:
            yield changed

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except RedisError as error:
            log.warning("redis store unreachable: %s", _reason(error))
            await self._drop_idle_connections()
            return False

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._redis.aclose()

    async def _call(self, keys: list[str], args: list[Any]) -> Any:
        try:
            result = await self._script(keys=keys, args=args)
        except _UNREACHABLE as error:
            await self._drop_idle_connections()
            raise _unavailable(error) from None
        return [_text(item) if isinstance(item, bytes) else item for item in result]

    async def _drop_idle_connections(self) -> None:
        """Close the pooled connections once Redis is unreachable.

        A connection left idle in the pool across a Redis restart fails its next command
        ("Connection closed by server"): after the outage, every such connection would answer
        one more call UNAVAILABLE, fail one more health check, or lose one more attempt's
        result. Closed now, each reconnects when next used.
        """
        if isinstance(self._redis, RedisCluster):
            return  # the cluster client drops and rediscovers failed nodes itself
        with contextlib.suppress(RedisError, OSError):
            await self._redis.connection_pool.disconnect(inuse_connections=False)

    async def _subscribe(self) -> None:
        """Start the one subscription of this store and wait until Redis confirmed it."""
        if self._listener is None or self._listener.done():
            self._subscribed.clear()
            self._listener = asyncio.create_task(self._listen(), name="sendonce-redis-changes")
            # Its error (Redis went away) is retrieved here, not reported as never retrieved;
            # the next watch starts a new subscription.
            self._listener.add_done_callback(_ended)
        waiting = asyncio.create_task(self._subscribed.wait())
        done, _ = await asyncio.wait({waiting, self._listener}, return_when=asyncio.FIRST_COMPLETED)
        if waiting not in done:
            waiting.cancel()
            error = self._listener.exception() if not self._listener.cancelled() else None
            raise _unavailable(error if isinstance(error, RedisError) else RedisError("closed"))

    async def _listen(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self._changes)
            async for message in pubsub.listen():
                if message["type"] == "subscribe":
                    self._subscribed.set()
                elif message["type"] == "message":
                    self._watchers.notify(_text(message["data"]))
        finally:
            self._subscribed.clear()
            with contextlib.suppress(RedisError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]


def _ended(listener: asyncio.Task[None]) -> None:
    if not listener.cancelled() and (error := listener.exception()) is not None:
        log.debug("redis change subscription ended: %s", _reason(error))


def _sentinel_master(url: str, timeout: float) -> aioredis.Redis:
    """A client of the master that the sentinels name; it follows failovers by itself."""
    parts = urlsplit(url)
    path = [part for part in parts.path.split("/") if part]
    if not path:
        raise ValueError("a sentinel URL names the service: redis+sentinel://host:port/name")
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        sentinels.append((name or host, int(port) if port.isdigit() else 26379))
    password = unquote(parts.password) if parts.password else None
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        sentinels,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )
    master: aioredis.Redis = sentinel.master_for(
        path[0],
        password=password,
        db=int(path[1]) if len(path) > 1 else 0,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    return master


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _reason(error: BaseException) -> str:
    # Redis error texts may carry the URL and so a password: name the kind of failure only.
    if isinstance(error, RedisTimeoutError):
        return "timed out"
    if isinstance(error, RedisConnectionError):
        return "connection failed"
    return type(error).__name__


def _unavailable(error: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"redis {_reason(error)}")
