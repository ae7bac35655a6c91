"""Redis: one store shared by every replica.

Each decision is one Lua script call (redis_decisions.lua), atomic on the server, timed by the
server's clock, with keys hash-tagged per notification so a Redis Cluster keeps them in one
slot. Records and tombstones carry TTLs, so Redis memory stays bounded with no sweeper. Waiters
learn of completions through one pub/sub subscription per store.

How the script calls reach Redis: through `_Pipeliner`. A call made while none is on the wire
goes at once; calls made while some are (all those of one event-loop iteration, and all those
made while earlier batches are on the wire) leave together as one non-transactional pipeline,
one round trip for the batch (one per node in a cluster). Batching changes the transport only:
every call is still one script, atomic on the server, and a caller awaits its reserve before
it sends its complete. The error of one script fails its caller alone; a batch that cannot
reach Redis fails all its callers with StateUnavailable. Calls that found the script missing
(NOSCRIPT: Redis restarted or flushed its cache) are sent again with EVAL, which caches it.
Reads (GET), pings and the subscription go to Redis directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..engine import defaults
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
from ..engine.ports import StateUnavailable
from . import codec
from .urls import parse_store_url, sentinel_target
from .watchers import KeyWatchers

log = logging.getLogger("sendonce.store")

_SCRIPT = resources.files(__package__).joinpath("redis_decisions.lua").read_text()
# Failures of reaching Redis; any other error (e.g. from the script) is a bug to surface.
_UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,  # a replica, or a primary demoted by a failover: no write can be recorded
    OSError,
)
# Errors of one command of a pipeline that its caller does not get at once: the call is tried
# again alone, through the client's own command path (its retries, its redirections and, in a
# cluster, its rediscovery of the nodes), as every call went before pipelining.
_RETRY_ALONE = (*_UNREACHABLE, ClusterDownError, TryAgainError, AskError)
_VERDICTS = {
    "already_delivered": Outcome.ALREADY_DELIVERED,
    "failed_permanent": Outcome.FAILED_PERMANENT,
    "exhausted": Outcome.EXHAUSTED,
    "retry_later": Outcome.RETRY_LATER,
    "circuit_open": Outcome.CIRCUIT_OPEN,
}


def hash_tag(uid: str) -> str:
    """The `{...}` part shared by every key of a uid: a non-empty Redis Cluster hash tag.

    A cluster hashes what lies between a key's first `{` and the first `}` after it; when that is
    empty it hashes the whole key, and the keys of one script call land in different slots. So a
    uid gets `{uid}` (its tag is the uid up to its first `}`: never empty), except a uid starting
    with `}` (its tag would be empty) or with a space: those get `{ <SHA-256 of the uid>}`. No
    other uid produces that form, as only these start with a space or `}`, so the keys of two
    uids never meet; and the keys of every other uid keep the names they always had.
    """
    if uid[:1] in ("", "}", " "):
        return f"{{ {hashlib.sha256(uid.encode()).hexdigest()}}}"
    return f"{{{uid}}}"


class RedisStore:
    def __init__(
        self,
        url: str,
        *,
        retention: float = defaults.RETENTION,
        clear_grace: float = defaults.CLEAR_GRACE,
        prefix: str = "sendonce:",
        timeout: float = 2.0,
        server_time: bool = True,
    ) -> None:
        """`server_time=False` makes the scripts use the callers' `now` (tests with a clock)."""
        if "{" in prefix or "}" in prefix:
            # A brace in the prefix would move the hash tag out of `hash_tag`'s hands.
            raise ValueError("the key prefix must not contain '{' or '}'")
        self.retention = retention
        self.clear_grace = clear_grace
        self.prefix = prefix
        self.server_time = server_time
        self._redis: aioredis.Redis | RedisCluster
        store = parse_store_url(url).scheme.store
        if store == "sentinel":
            self._redis = _sentinel_master(url, timeout)
        elif store == "cluster":
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
        self._pipeliner = _Pipeliner(self._redis, _SCRIPT, self._drop_idle_connections)
        self._changes = f"{prefix}changes"
        self._watchers = KeyWatchers[str]()
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    def _keys(self, key: Key) -> tuple[str, str, str]:
        tag = self.prefix + hash_tag(key.uid)
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
                request.reservation,
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
                completion.persisted_attempts,
                completion.reservation,
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
        await self._pipeliner.close()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._redis.aclose()

    async def _call(self, keys: list[str], args: list[Any]) -> Any:
        result = await self._pipeliner.call(keys, args)
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
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]


_Invocation = tuple[list[str], list[Any]]  # the keys and arguments of one script call


class _Call:
    """A script call waiting for its batch, and the future its caller awaits."""

    __slots__ = ("future", "invocation")

    def __init__(self, invocation: _Invocation, future: asyncio.Future[Any]) -> None:
        self.invocation = invocation
        self.future = future


class _Pipeliner:
    """Sends the script calls of concurrent callers to Redis together, one pipeline a batch.

    A call made while nothing is on the wire goes at once, as one ordinary command: an idle
    store adds no latency. A call made while something is on the wire waits in `_pending`. A
    sender, started by the first such call, runs in the next event-loop iteration and takes
    what gathered by then, so every call of an iteration leaves together, as one
    non-transactional pipeline. At most `senders` calls or batches are on the wire at once,
    each on a pooled connection, and a sender leaves a share of the pending calls to a sender
    that may still start: Redis then runs one batch while Python prepares or hands out another.
    """

    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster,
        script: str,
        unreachable: Callable[[], Awaitable[None]],
        senders: int = 2,
    ) -> None:
        self._redis = redis
        self._script = script
        self._sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
        # One call the client's ordinary way: EVALSHA, and on NOSCRIPT, SCRIPT LOAD and again.
        self._single = redis.register_script(script)
        self._unreachable = unreachable  # called once per round trip that failed to reach Redis
        self._max_senders = senders
        self._senders = 0  # calls or batches on the wire, and senders about to take a batch
        self._starting = False  # a sender is started and has not taken its batch yet
        self._pending: list[_Call] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.round_trips = 0  # pipelines sent (NOSCRIPT retries included) and lone calls

    async def call(self, keys: list[str], args: list[Any]) -> Any:
        """The script's reply to this call; StateUnavailable when Redis cannot be reached."""
        if not self._senders and not self._pending:
            return await self._call_at_once((keys, args))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Call((keys, args), future))
        self._start_sender()
        return await future

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._senders, self._starting = 0, False  # a sender cancelled before it ran
        _fail(self._pending, StateUnavailable("redis store closed"))
        self._pending = []

    async def _call_at_once(self, invocation: _Invocation) -> Any:
        """One call, the client's ordinary way (cheaper than a pipeline of one)."""
        self._senders += 1
        self.round_trips += 1
        try:
            return await self._single(*invocation)
        except _UNREACHABLE as error:
            await self._unreachable()
            raise _unavailable(error) from None
        finally:
            self._senders -= 1
            self._start_sender()  # for the calls made meanwhile, if no sender is free for them

    def _start_sender(self) -> None:
        if self._pending and not self._starting and self._senders < self._max_senders:
            self._starting = True
            self._senders += 1
            task = asyncio.create_task(self._send_pending(), name="sendonce-redis-pipeline")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send_pending(self) -> None:
        self._starting = False
        try:
            while self._pending:
                # Leave a share to a sender that may still start (see the class docstring).
                share = -(-len(self._pending) // (self._max_senders - self._senders + 1))
                batch, self._pending = self._pending[:share], self._pending[share:]
                self._start_sender()
                # A call whose caller is gone already need not run at all.
                await self._send([call for call in batch if not call.future.done()])
        finally:
            # Here, not in a done callback: a call made after the last batch and before such a
            # callback ran would find every sender busy, and wait for none.
            self._senders -= 1

    async def _send(self, batch: list[_Call]) -> None:
        if not batch:
            return
        try:
            replies = await self._run([call.invocation for call in batch])
        except _UNREACHABLE as error:
            _fail(batch, _unavailable(error))
            return
        except asyncio.CancelledError:
            _fail(batch, StateUnavailable("redis store closed"))
            raise
        except Exception as error:
            _fail(batch, error)  # a bug: every caller of the batch sees it
            return
        for call, reply in zip(batch, replies, strict=True):
            if call.future.done():
                continue  # its caller was cancelled; the script may have run all the same
            if (failure := _error(reply)) is None:
                call.future.set_result(reply)
            else:
                call.future.set_exception(failure)  # this script's error, for its caller alone

    async def _run(self, invocations: list[_Invocation]) -> list[Any]:
        """Each script's reply, or the error of its command; raises if Redis was not reached."""
        try:
            replies = await self._pipeline(invocations, "EVALSHA", self._sha)
            lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if lost:
                # Redis lost its script cache (a restart, SCRIPT FLUSH): the script did not run,
                # and EVAL runs it and caches it again for the EVALSHAs that follow.
                lost_ones = [invocations[i] for i in lost]
                again = await self._pipeline(lost_ones, "EVAL", self._script)
                for i, reply in zip(lost, again, strict=True):
                    replies[i] = reply
        except _UNREACHABLE:
            await self._unreachable()
            raise
        failed = [i for i, reply in enumerate(replies) if isinstance(reply, _RETRY_ALONE)]
        if failed:
            # E.g. READONLY from a primary demoted by a failover, a cluster node gone.
            await self._unreachable()
            again = await asyncio.gather(
                *(self._single(*invocations[i]) for i in failed), return_exceptions=True
            )
            for i, reply in zip(failed, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(
        self, invocations: list[_Invocation], command: str, script: str
    ) -> list[Any]:
        """One round trip (one per cluster node): a non-transactional pipeline of the calls."""
        self.round_trips += 1
        pipe = self._redis.pipeline(transaction=False)
        for keys, args in invocations:
            pipe.execute_command(command, script, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))


def _error(reply: Any) -> BaseException | None:
    """What a caller gets instead of a reply: its command's error, if it failed."""
    if isinstance(reply, _UNREACHABLE):
        return _unavailable(reply)
    return reply if isinstance(reply, BaseException) else None


def _fail(batch: list[_Call], error: BaseException) -> None:
    for call in batch:
        if not call.future.done():
            call.future.set_exception(error)


def _ended(listener: asyncio.Task[None]) -> None:
    if not listener.cancelled() and (error := listener.exception()) is not None:
        log.debug("redis change subscription ended: %s", _reason(error))


def _sentinel_master(url: str, timeout: float) -> aioredis.Redis:
    """A client of the master that the sentinels name; it follows failovers by itself."""
    target = sentinel_target(url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        list(target.sentinels),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )
    master: aioredis.Redis = sentinel.master_for(
        target.service,
        password=target.password,
        db=target.db,
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


def _unavailable(error: BaseException) -> StateUnavailable:
    return StateUnavailable(f"redis {_reason(error)}")
