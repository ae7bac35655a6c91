"""What the Redis store adds to the contract: server time, TTLs, hash tags, replicas, outages."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.crc import key_slot

from sendonce_server.config import ServerSettings
from sendonce_server.engine.decisions import Completion, Decision, Reserved, ReserveRequest
from sendonce_server.engine.engine import Engine, EngineSettings, Receiver
from sendonce_server.engine.model import AttemptResult, Key, Notification, Outcome, Record
from sendonce_server.engine.policy import RetryPolicy
from sendonce_server.engine.ports import SendResult, StateUnavailable
from sendonce_server.server import start
from sendonce_server.store.redis import RedisStore, hash_tag
from sendonce_server.store.urls import display_url
from tests.support.redis_server import free_port
from tests.support.scripted_channel import ScriptedChannel

KEY = Key("2f6c1a7e-uid", "hook")
REQUEST = ReserveRequest(fingerprint="fp", max_attempts=3, persisted_attempts=0, lease_seconds=10)


@pytest_asyncio.fixture
async def prefix() -> str:
    return f"test-{uuid.uuid4().hex}:"


@pytest_asyncio.fixture
async def store(redis_url: str, prefix: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_url, retention=3600, clear_grace=60, prefix=prefix)
    yield store
    await store.close()


@pytest_asyncio.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_leases_are_timed_by_the_server_clock(store: RedisStore) -> None:
    """A holder whose clock is far off does not move its lease."""
    before = time.time()
    decision = await store.reserve(KEY, REQUEST, now=0.0)
    after = time.time()

    assert isinstance(decision, Reserved)
    assert before + 10 - 1 <= decision.lease.expires_at <= after + 10 + 1


async def test_records_and_tombstones_carry_ttls(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    decision = await store.reserve(KEY, REQUEST, now=0.0)
    assert isinstance(decision, Reserved)
    record_key = f"{prefix}{{{KEY.uid}}}:r:{KEY.channel}"
    fence_key = f"{prefix}{{{KEY.uid}}}:f:{KEY.channel}"
    index_key = f"{prefix}{{{KEY.uid}}}:i"

    # The retention runs from the lease's end (10 s); the fencing counter lives as long.
    assert 3600_000 < await raw.pttl(record_key) <= 3610_000
    assert 3600_000 < await raw.pttl(fence_key) <= 3610_000
    assert 3600_000 < await raw.pttl(index_key) <= 3610_000
    await store.clear(KEY.uid, [], False, now=0.0)
    # The tombstone keeps the running lease: the grace runs from the lease's end.
    assert 60_000 < await raw.pttl(record_key) <= 70_000


async def test_keys_of_a_notification_share_one_cluster_slot(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    for channel in ("hook", "mail", "pager"):
        await store.reserve(Key(KEY.uid, channel), REQUEST, now=0.0)

    keys = [key async for key in raw.scan_iter(match=f"{prefix}*")]

    assert len(keys) == 7  # three records, three fencing counters, one index
    assert len({key_slot(key) for key in keys}) == 1


@pytest.mark.parametrize("uid", ["}x", "}", " }"])
async def test_a_uid_that_would_empty_the_hash_tag_gets_a_hashed_one_in_one_slot(
    store: RedisStore, raw: aioredis.Redis, prefix: str, uid: str
) -> None:
    for channel in ("hook", "mail"):
        await store.reserve(Key(uid, channel), REQUEST, now=0.0)

    keys = sorted([key.decode() async for key in raw.scan_iter(match=f"{prefix}*")])
    digest = hashlib.sha256(uid.encode()).hexdigest()

    assert hash_tag(uid) == f"{{ {digest}}}"
    assert keys == sorted(
        f"{prefix}{{ {digest}}}{suffix}"
        for suffix in (":i", ":r:hook", ":f:hook", ":r:mail", ":f:mail")
    )
    assert len({key_slot(key.encode()) for key in keys}) == 1


@pytest.mark.parametrize("uid", ["2f6c1a7e-uid", "{", "{}", "a}b", "x}", "{x}", "ns/name"])
def test_every_other_uid_keeps_its_plain_hash_tag(uid: str) -> None:
    """Keys written before hashed tags existed stay where they were: no migration."""
    assert hash_tag(uid) == f"{{{uid}}}"


def test_a_prefix_with_a_brace_is_refused() -> None:
    with pytest.raises(ValueError, match="prefix"):
        RedisStore("redis://127.0.0.1:1/0", prefix="app{1}:")


async def test_a_replica_waits_for_another_replicas_attempt_and_shares_it(
    redis_url: str, prefix: str
) -> None:
    """Two engines, two stores, one Redis: the second joins the first's attempt (pub/sub)."""
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.0, jitter=0.0)
    settings = EngineSettings(lease_margin=5.0)
    holding = ScriptedChannel(hold=True)
    idle = ScriptedChannel()
    first = Engine(
        RedisStore(redis_url, prefix=prefix), [Receiver("hook", holding, policy)], settings=settings
    )
    second = Engine(
        RedisStore(redis_url, prefix=prefix), [Receiver("hook", idle, policy)], settings=settings
    )
    note = Notification(subject="node not ready")
    try:
        held = asyncio.create_task(first.deliver(KEY, note))
        await holding.wait_for_sends(1)
        joined = asyncio.create_task(second.deliver(KEY, note, timeout=10.0))
        await _until_waiting(second)
        holding.answer(SendResult.success())

        shared = await joined
        assert (await held).outcome is Outcome.DELIVERED
        assert (shared.outcome, shared.attempt, shared.shared) == (Outcome.DELIVERED, 1, True)
        assert idle.sends == []
    finally:
        await first.close()
        await second.close()


async def _until_waiting(engine: Engine) -> None:
    """The joiner is subscribed and watching once its flight waits on the foreign lease."""
    store = engine.store
    assert isinstance(store, RedisStore)
    while not store._watchers._events:  # noqa: ASYNC110 - no event announces a new watcher
        await asyncio.sleep(0.005)


async def test_an_unreachable_redis_is_unavailable_and_never_leaks_the_password() -> None:
    store = RedisStore(f"redis://:s3cret-pass@127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        with pytest.raises(StateUnavailable) as error:
            await store.reserve(KEY, REQUEST, now=0.0)
        assert "s3cret" not in str(error.value)
        assert not await store.ping()
    finally:
        await store.close()


async def test_a_stale_completion_cannot_undo_a_success(store: RedisStore) -> None:
    decision = await store.reserve(KEY, REQUEST, now=0.0)
    assert isinstance(decision, Reserved)
    lease = decision.lease
    success = Completion(lease.attempt, lease.token, AttemptResult.SUCCEEDED)
    stale = Completion(lease.attempt, lease.token, AttemptResult.FAILED, error="HTTP 500")

    await store.complete(KEY, success, now=0.0)
    record = await store.complete(KEY, stale, now=0.0)

    assert record is not None
    assert record.status.value == "delivered"


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret-pass@10.0.0.1:6379/0",
        "redis://admin:s3cret-pass@redis:6379/0",
        "redis+sentinel://:s3cret-pass@sentinel:26379/sendonce",
    ],
)
def test_store_urls_are_logged_without_their_password(url: str) -> None:
    shown = display_url(url)

    assert "s3cret" not in shown
    assert "***@" in shown


async def test_a_sidecar_on_an_unreachable_redis_never_logs_its_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://:s3cret-pass@127.0.0.1:{free_port()}/0"
    settings = ServerSettings(listen="127.0.0.1:0", store=url, store_check_interval=0.05)
    sidecar = await start(settings)
    try:
        assert "store" in caplog.text
    finally:
        await sidecar.stop()

    assert "s3cret" not in caplog.text


class LostReplies(RedisStore):
    """Runs each reserve script on the real Redis, then loses the reply while `lost`; refuses
    completions while `down`: Redis killed right after it ran the script."""

    lost = 0
    down = False

    async def reserve(self, key: Key, request: ReserveRequest, now: float) -> Decision:
        decision = await super().reserve(key, request, now)
        if self.lost:
            self.lost -= 1
            raise StateUnavailable("redis connection failed")
        return decision

    async def complete(self, key: Key, completion: Completion, now: float) -> Record | None:
        if self.down:
            raise StateUnavailable("redis connection failed")
        return await super().complete(key, completion, now)


async def test_a_lost_reserve_reply_is_found_again_on_redis(redis_url: str, prefix: str) -> None:
    store = LostReplies(redis_url, prefix=prefix)
    store.lost = 1
    channel = ScriptedChannel()
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.0, jitter=0.0)
    engine = Engine(store, [Receiver("hook", channel, policy)])
    try:
        result = await engine.deliver(KEY, Notification(subject="node not ready"))
        state = await engine.attempt_count(KEY)
    finally:
        await engine.close()

    assert (result.outcome, result.attempt, result.attempts_used) == (Outcome.DELIVERED, 1, 1)
    assert len(channel.sends) == 1
    assert (state.attempts_used, len(state.history)) == (1, 1)


async def test_a_reservation_whose_reply_stayed_lost_is_given_back_on_redis(
    redis_url: str, prefix: str
) -> None:
    store = LostReplies(redis_url, prefix=prefix)
    store.lost, store.down = 1_000, True
    channel = ScriptedChannel()
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.0, jitter=0.0)
    engine = Engine(
        store, [Receiver("hook", channel, policy)], settings=EngineSettings(reserve_retry=0.05)
    )
    note = Notification(subject="node not ready")
    try:
        with pytest.raises(StateUnavailable):
            await engine.deliver(KEY, note)
        during = await engine.attempt_count(KEY)
        store.lost, store.down = 0, False
        assert await engine.drain(10) == 0
        after = await engine.attempt_count(KEY)
        result = await engine.deliver(KEY, note)
    finally:
        await engine.close()

    assert (during.attempts_used, during.in_flight) == (1, True)
    assert (after.attempts_used, after.in_flight) == (0, False)
    assert (result.outcome, result.attempt, len(channel.sends)) == (Outcome.DELIVERED, 1, 1)
