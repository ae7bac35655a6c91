"""The engine's promises, driven from plain asyncio with a scripted channel and a memory store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from sendonce_server.engine.decisions import Completion, Decision, ReserveRequest
from sendonce_server.engine.engine import Engine, EngineSettings, Receiver
from sendonce_server.engine.errors import PayloadMismatch, UnknownChannel
from sendonce_server.engine.model import (
    AttemptResult,
    Key,
    Lease,
    Notification,
    Outcome,
    Receipt,
    Record,
)
from sendonce_server.engine.policy import RetryPolicy
from sendonce_server.engine.ports import SendResult, StateUnavailable
from sendonce_server.store.memory import MemoryStore
from tests.support.scripted_channel import ManualClock, ScriptedChannel

KEY = Key("uid-1", "hook")
NOTE = Notification(subject="disk full", body="node-1 is at 99 %")
FAST = RetryPolicy(max_attempts=5, initial_backoff=0.0, jitter=0.0)


def make_engine(
    channel: ScriptedChannel,
    *,
    store: MemoryStore | None = None,
    clock: ManualClock | None = None,
    policy: RetryPolicy = FAST,
    engine_class: type[Engine] = Engine,
    settings: EngineSettings | None = None,
) -> Engine:
    return engine_class(
        store if store is not None else MemoryStore(),
        [Receiver("hook", channel, policy)],
        clock=clock,
        settings=settings or EngineSettings(lease_margin=1.0),
    )


async def test_delivers_once_then_answers_already_delivered() -> None:
    channel = ScriptedChannel(SendResult.success(Receipt("HTTP 200", {"status_code": "200"})))
    engine = make_engine(channel)

    first = await engine.deliver(KEY, NOTE)
    second = await engine.deliver(KEY, NOTE)

    assert (first.outcome, first.attempt, first.final, first.shared) == (
        Outcome.DELIVERED,
        1,
        True,
        False,
    )
    assert first.receipt == Receipt("HTTP 200", {"status_code": "200"})
    assert (second.outcome, second.attempt, second.attempts_used) == (
        Outcome.ALREADY_DELIVERED,
        1,
        1,
    )
    assert second.receipt == first.receipt
    assert len(channel.sends) == 1


async def test_concurrent_calls_share_one_attempt() -> None:
    channel = ScriptedChannel(hold=True)
    engine = make_engine(channel)

    calls = [asyncio.create_task(engine.deliver(KEY, NOTE)) for _ in range(200)]
    await channel.wait_for_sends(1)
    await asyncio.sleep(0)  # let every caller reach the flight before it lands
    channel.answer()
    results = await asyncio.gather(*calls)

    assert len(channel.sends) == 1
    assert {(r.outcome, r.attempt) for r in results} == {(Outcome.DELIVERED, 1)}
    assert sum(not r.shared for r in results) == 1


async def test_budget_holds_against_stale_callers() -> None:
    channel = ScriptedChannel(SendResult.retryable("HTTP 500"))
    engine = make_engine(channel)

    async def caller() -> list[Outcome]:
        seen = []
        for _ in range(10):
            result = await engine.deliver(KEY, NOTE, persisted_attempts=0)
            seen.append(result.outcome)
            await asyncio.sleep(0)
        return seen

    outcomes = [o for seen in await asyncio.gather(*(caller() for _ in range(50))) for o in seen]

    assert len(channel.sends) == 5
    assert [d.attempt for d in channel.sends] == [1, 2, 3, 4, 5]
    assert outcomes[-1] is Outcome.EXHAUSTED
    final = await engine.deliver(KEY, NOTE)
    assert (final.outcome, final.attempts_used, final.final) == (Outcome.EXHAUSTED, 5, True)
    assert final.last_error == "HTTP 500"


async def test_backoff_answers_retry_later_without_using_an_attempt() -> None:
    clock = ManualClock()
    channel = ScriptedChannel(SendResult.retryable("HTTP 503"))
    policy = RetryPolicy(max_attempts=5, initial_backoff=30.0, multiplier=2.0, jitter=0.0)
    engine = make_engine(channel, clock=clock, policy=policy)

    failed = await engine.deliver(KEY, NOTE)
    early = await engine.deliver(KEY, NOTE)
    clock.advance(30.0)
    second = await engine.deliver(KEY, NOTE)

    assert (failed.outcome, failed.retry_after, failed.final) == (Outcome.FAILED, 30.0, False)
    assert (early.outcome, early.attempts_used, early.retry_after) == (
        Outcome.RETRY_LATER,
        1,
        30.0,
    )
    assert (second.outcome, second.attempt, second.retry_after) == (Outcome.FAILED, 2, 60.0)
    assert len(channel.sends) == 2


async def test_receiver_retry_after_wins_when_longer() -> None:
    clock = ManualClock()
    channel = ScriptedChannel(SendResult.retryable("HTTP 429", retry_after=120.0))
    engine = make_engine(channel, clock=clock, policy=RetryPolicy(initial_backoff=30.0, jitter=0))

    result = await engine.deliver(KEY, NOTE)

    assert result.retry_after == 120.0


async def test_permanent_failure_is_final() -> None:
    channel = ScriptedChannel(SendResult.permanent("HTTP 404"))
    engine = make_engine(channel)

    first = await engine.deliver(KEY, NOTE)
    again = await engine.deliver(KEY, NOTE)

    assert (first.outcome, first.final, first.last_error) == (
        Outcome.FAILED_PERMANENT,
        True,
        "HTTP 404",
    )
    assert (again.outcome, again.attempt) == (Outcome.FAILED_PERMANENT, 1)
    assert len(channel.sends) == 1


async def test_persisted_attempts_count_when_fresher_than_the_sidecar() -> None:
    channel = ScriptedChannel(SendResult.retryable("HTTP 500"))
    engine = make_engine(channel)

    resumed = await engine.deliver(KEY, NOTE, persisted_attempts=3)
    assert resumed.attempt == 4
    stale = await engine.deliver(KEY, NOTE, persisted_attempts=0)
    assert (stale.outcome, stale.attempt) == (Outcome.EXHAUSTED, 5)
    spent = await engine.deliver(Key("uid-2", "hook"), NOTE, persisted_attempts=5)
    assert (spent.outcome, spent.attempts_used) == (Outcome.EXHAUSTED, 5)
    assert [d.attempt for d in channel.sends] == [4, 5]


async def test_payload_mismatch_is_refused_and_nothing_is_sent() -> None:
    channel = ScriptedChannel(hold=True)
    engine = make_engine(channel)
    other = Notification(subject="disk full", body="another body")

    running = asyncio.create_task(engine.deliver(KEY, NOTE))
    await channel.wait_for_sends(1)
    with pytest.raises(PayloadMismatch, match="different payload"):
        await engine.deliver(KEY, other)
    channel.answer()
    await running
    with pytest.raises(PayloadMismatch):
        await engine.deliver(KEY, other)
    assert len(channel.sends) == 1


async def test_unknown_channel_names_the_configured_ones() -> None:
    engine = make_engine(ScriptedChannel())
    with pytest.raises(UnknownChannel, match=r"'nope'.*configured: hook"):
        await engine.deliver(Key("uid", "nope"), NOTE)


async def test_cancelled_leader_does_not_fail_the_joiners() -> None:
    channel = ScriptedChannel(hold=True)
    engine = make_engine(channel)

    leader = asyncio.create_task(engine.deliver(KEY, NOTE))
    await channel.wait_for_sends(1)
    joiners = [asyncio.create_task(engine.deliver(KEY, NOTE)) for _ in range(5)]
    await asyncio.sleep(0)
    leader.cancel()
    channel.answer()
    results = await asyncio.gather(*joiners)

    assert leader.cancelled()
    assert {(r.outcome, r.shared) for r in results} == {(Outcome.DELIVERED, True)}
    assert len(channel.sends) == 1
    assert (await engine.deliver(KEY, NOTE)).outcome is Outcome.ALREADY_DELIVERED


async def test_caller_deadline_answers_in_progress_and_the_attempt_is_recorded() -> None:
    channel = ScriptedChannel(hold=True)
    engine = make_engine(channel)

    waiting = await engine.deliver(KEY, NOTE, timeout=0.01)
    assert (waiting.outcome, waiting.attempt, waiting.final) == (Outcome.IN_PROGRESS, 1, False)
    assert waiting.retry_after is not None
    assert 0 < waiting.retry_after <= 1.0
    channel.answer()
    await engine.drain(grace=1.0)

    assert (await engine.deliver(KEY, NOTE)).outcome is Outcome.ALREADY_DELIVERED
    assert len(channel.sends) == 1


async def test_a_joiner_whose_deadline_passes_leaves_the_flight_and_the_others_alone() -> None:
    channel = ScriptedChannel(hold=True)
    engine = make_engine(channel)

    leader = asyncio.create_task(engine.deliver(KEY, NOTE))
    await channel.wait_for_sends(1)
    impatient = await engine.deliver(KEY, NOTE, timeout=0.01)
    patient = asyncio.create_task(engine.deliver(KEY, NOTE, timeout=30))
    await asyncio.sleep(0)
    channel.answer()

    assert (impatient.outcome, impatient.shared) == (Outcome.IN_PROGRESS, True)
    assert (await leader).outcome is Outcome.DELIVERED
    assert ((await patient).outcome, (await patient).shared) == (Outcome.DELIVERED, True)
    assert len(channel.sends) == 1


class GatedStore(MemoryStore):
    """Its reserves wait for the test, then fail as an unreachable store does, until it is up."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.up = False
        self.reserves = 0

    async def reserve(self, key: Key, request: ReserveRequest, now: float) -> Decision:
        self.reserves += 1
        await self.gate.wait()
        if not self.up:
            raise StateUnavailable("store down")
        return await super().reserve(key, request, now)


async def test_a_failed_flight_fails_every_caller_and_the_next_call_starts_afresh() -> None:
    store = GatedStore()
    channel = ScriptedChannel()
    engine = make_engine(channel, store=store, settings=EngineSettings(reserve_retry=0.05))

    callers = [asyncio.create_task(engine.deliver(KEY, NOTE)) for _ in range(5)]
    await asyncio.sleep(0)
    assert (engine.running, engine.waiting) == (1, 5)
    store.gate.set()
    answers = await asyncio.gather(*callers, return_exceptions=True)
    asked = store.reserves
    store.up = True
    after = await engine.deliver(KEY, NOTE)

    assert all(isinstance(answer, StateUnavailable) for answer in answers), answers
    assert asked >= 2  # the lost reply was asked for again, once for all five callers
    assert (after.outcome, after.attempt) == (Outcome.DELIVERED, 1)
    assert (len(channel.sends), engine.running) == (1, 0)


class DyingEngine(Engine):
    """Plays a holder that dies after sending and before recording the result."""

    def _after_send(self, key: Key, lease: Lease) -> None:
        raise RuntimeError("holder died")


async def test_expired_lease_keeps_the_attempt_counted() -> None:
    clock = ManualClock()
    store = MemoryStore()
    dead = make_engine(ScriptedChannel(), store=store, clock=clock, engine_class=DyingEngine)
    with pytest.raises(RuntimeError, match="holder died"):
        await dead.deliver(KEY, NOTE)

    channel = ScriptedChannel()
    engine = make_engine(channel, store=store, clock=clock)
    blocked = await engine.deliver(KEY, NOTE, timeout=0.01)
    assert (blocked.outcome, blocked.attempt) == (Outcome.IN_PROGRESS, 1)
    during = await engine.attempt_count(KEY)
    assert (during.in_flight, during.attempts_used) == (True, 1)

    clock.advance(channel.timeout + 1.0)
    after = await engine.attempt_count(KEY)
    assert (after.in_flight, after.attempts_used) == (False, 1)
    assert after.history[0].result is AttemptResult.ABANDONED
    retried = await engine.deliver(KEY, NOTE)

    assert (retried.outcome, retried.attempt, retried.attempts_used) == (Outcome.DELIVERED, 2, 2)
    assert [d.attempt for d in channel.sends] == [2]


class WatchedStore(MemoryStore):
    """Tells the test when a caller starts waiting for a key."""

    def __init__(self) -> None:
        super().__init__()
        self.watching = asyncio.Event()

    @asynccontextmanager
    async def watch(self, key: Key) -> AsyncIterator[asyncio.Event]:
        async with super().watch(key) as changed:
            self.watching.set()
            yield changed


async def test_waiting_caller_shares_a_foreign_holders_result() -> None:
    """A caller finding another holder's live lease waits for it and shares its result."""
    store = WatchedStore()
    holder_channel = ScriptedChannel(hold=True)
    holder = make_engine(holder_channel, store=store)
    waiter_channel = ScriptedChannel()
    waiter = make_engine(waiter_channel, store=store)

    held = asyncio.create_task(holder.deliver(KEY, NOTE))
    await holder_channel.wait_for_sends(1)
    joined = asyncio.create_task(waiter.deliver(KEY, NOTE, timeout=5.0))
    await store.watching.wait()
    holder_channel.answer(SendResult.retryable("HTTP 502"))
    result = await joined

    assert (await held).outcome is Outcome.FAILED
    assert (result.outcome, result.attempt, result.shared) == (Outcome.FAILED, 1, True)
    assert waiter_channel.sends == []


async def test_default_clear_keeps_a_tombstone_and_force_allows_a_new_delivery() -> None:
    channel = ScriptedChannel()
    engine = make_engine(channel)
    await engine.deliver(KEY, NOTE)

    cleared = await engine.clear(KEY.uid)
    late = await engine.deliver(KEY, NOTE, persisted_attempts=0)
    state = await engine.attempt_count(KEY)
    assert cleared.cleared == ("hook",)
    assert late.outcome is Outcome.ALREADY_DELIVERED
    assert (state.cleared, state.succeeded, state.final) == (True, True, True)

    await engine.clear(KEY.uid, force=True)
    assert not (await engine.attempt_count(KEY)).found
    again = await engine.deliver(KEY, NOTE)
    assert (again.outcome, again.attempt) == (Outcome.DELIVERED, 1)
    assert len(channel.sends) == 2


async def test_clear_never_cancels_a_running_attempt() -> None:
    channel = ScriptedChannel(hold=True)
    engine = make_engine(channel)
    running = asyncio.create_task(engine.deliver(KEY, NOTE))
    await channel.wait_for_sends(1)

    cleared = await engine.clear(KEY.uid, [KEY.channel])
    channel.answer()
    result = await running

    assert cleared.running == ("hook",)
    assert result.outcome is Outcome.DELIVERED
    assert (await engine.deliver(KEY, NOTE)).outcome is Outcome.ALREADY_DELIVERED


async def test_attempt_count_reads_without_creating_state() -> None:
    engine = make_engine(ScriptedChannel())

    unknown = await engine.attempt_count(KEY, persisted_attempts=2)

    assert (unknown.found, unknown.attempts_used, unknown.remaining) == (False, 2, 3)
    assert not (await engine.attempt_count(KEY)).found


class FlakyStore(MemoryStore):
    """Unreachable for the first `failures` completions, like a store during a short outage."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def complete(self, key: Key, completion: Completion, now: float) -> Record | None:
        if self.failures:
            self.failures -= 1
            raise StateUnavailable("redis connection failed")
        return await super().complete(key, completion, now)


async def test_a_result_is_recorded_through_a_short_store_outage() -> None:
    store = FlakyStore(failures=3)
    channel = ScriptedChannel()
    engine = make_engine(channel, store=store)

    first = await engine.deliver(KEY, NOTE)
    again = await engine.deliver(KEY, NOTE)

    assert first.outcome is Outcome.DELIVERED
    assert store.failures == 0
    assert again.outcome is Outcome.ALREADY_DELIVERED
    assert len(channel.sends) == 1


class LaggingStore(MemoryStore):
    """A store whose clock runs behind the engine's (as Redis's may): leases live longer."""

    def __init__(self, lag: float) -> None:
        super().__init__()
        self.lag = lag
        self.reserves = 0

    async def reserve(self, key: Key, request: ReserveRequest, now: float) -> Decision:
        self.reserves += 1
        return await super().reserve(key, request, now - self.lag)


async def test_a_lease_expired_by_our_clock_only_is_not_polled_in_a_tight_loop() -> None:
    store = LaggingStore(lag=100.0)
    holder_channel = ScriptedChannel(hold=True)
    holder = make_engine(holder_channel, store=store)
    held = asyncio.create_task(holder.deliver(KEY, NOTE))
    await holder_channel.wait_for_sends(1)
    # Both engines read the system clock; the store decides 100 s in the past, where the
    # holder's lease is live, while by the engines' clock it expired long ago.
    waiter = make_engine(ScriptedChannel(), store=store)

    answer = await waiter.deliver(KEY, NOTE, timeout=0.3)

    assert answer.outcome is Outcome.IN_PROGRESS
    assert store.reserves < 20  # about one per 50 ms, not thousands
    holder_channel.answer()
    await held
