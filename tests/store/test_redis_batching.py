"""The Redis store's automatic pipelining: concurrent script calls share round trips.

Every test drives a real redis-server (or cluster, or sentinel) with real concurrent callers.
Where a test must hold a batch on the wire, it pauses the server's writes (CLIENT PAUSE WRITE)
and waits until Redis reports the store's connections blocked on their scripts.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from sendonce_server.engine.decisions import Completion, Reserved, ReserveRequest, Running
from sendonce_server.engine.model import AttemptResult, Key, Record, Status
from sendonce_server.engine.ports import StateUnavailable
from sendonce_server.store.redis import _SCRIPT, RedisStore
from tests.support.redis_server import RedisServer
from tests.support.wait import until

REQUEST = ReserveRequest(fingerprint="fp", max_attempts=3, persisted_attempts=0, lease_seconds=30)
SHA = hashlib.sha1(_SCRIPT.encode(), usedforsecurity=False).hexdigest()
CALLERS = 100


def keys(count: int) -> list[Key]:
    """Keys of distinct notifications: in a cluster they spread over every node."""
    run = uuid.uuid4().hex[:8]
    return [Key(f"{run}-{n}", "hook") for n in range(count)]


async def reserve_all(store: RedisStore, batch: list[Key]) -> list[Reserved]:
    decisions = await asyncio.gather(*(store.reserve(key, REQUEST, now=0.0) for key in batch))
    reserved = [d for d in decisions if isinstance(d, Reserved)]
    assert len(reserved) == len(batch), decisions
    return reserved


async def succeed_all(
    store: RedisStore, batch: list[Key], reserved: list[Reserved]
) -> list[Record | None]:
    return await asyncio.gather(
        *(
            store.complete(
                key, Completion(r.lease.attempt, r.lease.token, AttemptResult.SUCCEEDED), 0.0
            )
            for key, r in zip(batch, reserved, strict=True)
        )
    )


def delivered_once(record: Record | None) -> bool:
    return record is not None and record.status is Status.DELIVERED and record.attempts == 1


@pytest_asyncio.fixture
async def store(own_redis: RedisServer) -> AsyncIterator[RedisStore]:
    store = RedisStore(own_redis.url, prefix=f"test-{uuid.uuid4().hex}:", timeout=0.5)
    await store.reserve(keys(1)[0], REQUEST, now=0.0)  # connected, and the script cached
    yield store
    await store.close()


@pytest.fixture
def admin(own_redis: RedisServer) -> Iterator[redis.Redis]:
    """A client of the test's own Redis, for its statistics and for fault injection."""
    client = redis.Redis(port=own_redis.port, single_connection_client=True)
    yield client
    client.close()


def reads(admin: redis.Redis) -> int:
    """Read events the server processed so far (all clients), this INFO's own included."""
    return int(admin.info("stats")["total_reads_processed"])


def commands(admin: redis.Redis) -> int:
    return int(admin.info("stats")["total_commands_processed"])


async def hold_on_the_wire(
    admin: redis.Redis, store: RedisStore, batch: list[Key]
) -> list[asyncio.Task[object]]:
    """The keys' reserves, started while Redis holds every script; once all wait inside it."""
    admin.client_pause(60_000, all=False)  # scripts wait, INFO still answers
    trips = store._pipeliner.round_trips
    calls: list[asyncio.Task[object]] = [
        asyncio.create_task(store.reserve(key, REQUEST, now=0.0)) for key in batch
    ]
    await until(lambda: store._pipeliner.round_trips > trips and not store._pipeliner._pending)
    sent = store._pipeliner.round_trips - trips
    # One connection a round trip, each blocked on the first script it sent.
    await until(lambda: int(admin.info("clients")["blocked_clients"]) == sent)
    return calls


async def test_concurrent_decisions_reach_redis_in_a_few_round_trips(
    store: RedisStore, admin: redis.Redis
) -> None:
    """Counted by the server, which processes one read event per round trip at the least."""
    before = reads(admin)
    for key in keys(CALLERS):  # one at a time: the yardstick, one round trip each
        await store.reserve(key, REQUEST, now=0.0)
    one_at_a_time = reads(admin) - before - 1
    trips, before, ran = store._pipeliner.round_trips, reads(admin), commands(admin)
    filings = store._indexer.round_trips

    await reserve_all(store, keys(CALLERS))

    concurrent = reads(admin) - before - 1
    assert one_at_a_time >= CALLERS
    # Every script ran (the commands inside a script count too) in a handful of reads: the
    # first call alone, then one pipeline, larger than Redis's 16 KiB read buffer. The
    # filings in the deliveries index after them are batched the same way.
    assert commands(admin) - ran > CALLERS
    assert store._pipeliner.round_trips - trips == 2
    assert store._indexer.round_trips - filings <= 3, store._indexer.round_trips - filings
    assert concurrent <= 10 + 2 * (store._indexer.round_trips - filings), concurrent


@pytest.mark.parametrize("damage", ["corrupt record", "wrong type"])
async def test_a_failing_script_fails_its_caller_alone(
    store: RedisStore, admin: redis.Redis, damage: str
) -> None:
    batch = keys(20)
    broken = batch[7]
    record_key = f"{store.prefix}{{{broken.uid}}}:r:{broken.channel}"
    if damage == "corrupt record":
        admin.set(record_key, "{not json")
    else:
        admin.rpush(record_key, "a list, not a string")
    trips = store._pipeliner.round_trips

    decisions = await asyncio.gather(
        *(store.reserve(key, REQUEST, now=0.0) for key in batch), return_exceptions=True
    )

    # The first call went alone (nothing else was on the wire); the 19 others, the broken
    # one among them, shared one pipeline.
    assert store._pipeliner.round_trips - trips == 2
    failed = decisions.pop(7)
    assert isinstance(failed, ResponseError), failed  # a script error is a bug to surface
    assert all(isinstance(d, Reserved) for d in decisions), decisions
    assert isinstance(await store.reserve(keys(1)[0], REQUEST, now=0.0), Reserved)


@pytest_asyncio.fixture(params=["redis", "redis-cluster"])
async def flushable(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[RedisStore, aioredis.Redis | RedisCluster]]:
    """A store, and a client whose SCRIPT FLUSH and SCRIPT EXISTS reach every node."""
    if request.param == "redis-cluster":
        url = str(request.getfixturevalue("redis_cluster_url"))
        client: aioredis.Redis | RedisCluster = RedisCluster.from_url(
            url.replace("+cluster", "", 1)
        )
    else:
        url = str(request.getfixturevalue("redis_url"))
        client = aioredis.from_url(url)
    store = RedisStore(url, prefix=f"test-{uuid.uuid4().hex}:")
    yield store, client
    await store.close()
    await client.aclose()


async def test_a_flushed_script_cache_is_refilled_and_no_decision_fails(
    flushable: tuple[RedisStore, aioredis.Redis | RedisCluster],
) -> None:
    """As after a Redis restart: every script call answers NOSCRIPT until it is loaded again."""
    store, client = flushable
    await reserve_all(store, keys(CALLERS))
    await client.script_flush()
    assert not any(await client.script_exists(SHA))
    batch = keys(CALLERS)

    reserved = await reserve_all(store, batch)
    records = await succeed_all(store, batch, reserved)

    assert all(delivered_once(r) for r in records), records
    # The store never sends SCRIPT LOAD: its EVAL retries of the NOSCRIPT calls cached it.
    assert all(await client.script_exists(SHA))


@pytest.fixture(params=["redis", "redis-cluster", "redis-sentinel"])
def any_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param.replace('-', '_')}_url"))


async def test_every_kind_of_redis_batches_decisions_and_completions(any_url: str) -> None:
    """A cluster pipeline goes to each node the keys live on; the replies keep their order."""
    store = RedisStore(any_url, prefix=f"test-{uuid.uuid4().hex}:")
    batch = keys(CALLERS)
    try:
        reserved = await reserve_all(store, batch)
        trips = store._pipeliner.round_trips
        records = await succeed_all(store, batch, reserved)
        read = await asyncio.gather(*(store.read(key, now=0.0) for key in batch))
    finally:
        await store.close()

    assert store._pipeliner.round_trips - trips == 2  # first alone, then one pipeline
    assert all(delivered_once(r) for r in records), records
    assert [r.history if r else None for r in read] == [r.history if r else None for r in records]
    assert [r.history[0].token for r in records if r] == [r.lease.token for r in reserved]


async def test_a_connection_lost_mid_batch_fails_its_callers_unavailable_until_redis_is_back(
    store: RedisStore, admin: redis.Redis, own_redis: RedisServer
) -> None:
    calls = await hold_on_the_wire(admin, store, keys(20))

    await asyncio.to_thread(own_redis.stop)  # kill -9 while every call waits inside Redis
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    await asyncio.to_thread(own_redis.start)  # empty: no record, no script

    assert all(isinstance(o, StateUnavailable) for o in outcomes), outcomes
    assert {str(o) for o in outcomes} == {"redis connection failed"}
    batch = keys(CALLERS)
    assert all(
        delivered_once(r) for r in await succeed_all(store, batch, await reserve_all(store, batch))
    )


async def test_a_caller_cancelled_while_its_call_is_on_the_wire_disturbs_no_other(
    store: RedisStore, admin: redis.Redis
) -> None:
    batch = keys(20)
    calls = await hold_on_the_wire(admin, store, batch)
    cancelled = calls[1::2]  # all in the pipeline (the first call went alone), between others

    for call in cancelled:
        call.cancel()
    admin.client_unpause()
    _, stranded = await asyncio.wait(calls, timeout=10)

    # A hand-back that raised at a cancelled caller would strand the callers after it.
    assert not stranded, f"{len(stranded)} calls never answered"
    assert all(call.cancelled() for call in cancelled)
    assert all(isinstance(call.result(), Reserved) for call in calls[0::2])
    # The pipeline was sent whole: the cancelled callers' scripts ran all the same.
    again = await asyncio.gather(*(store.reserve(key, REQUEST, now=0.0) for key in batch[1::2]))
    assert all(isinstance(d, Running) for d in again), again
