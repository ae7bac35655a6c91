"""Every answer true: joiners, waiters on another holder, and callers whose reply was lost.

Two engines on one memory store play two replicas on one shared store.
"""

from __future__ import annotations

import asyncio

import pytest

from sendonce_server.engine.decisions import Completion, Decision, ReserveRequest
from sendonce_server.engine.engine import Engine, EngineSettings, Receiver
from sendonce_server.engine.errors import PayloadMismatch
from sendonce_server.engine.model import Key, Notification, Outcome, Receipt, Record
from sendonce_server.engine.policy import RetryPolicy
from sendonce_server.engine.ports import SendResult, StateUnavailable
from sendonce_server.store.memory import MemoryStore
from tests.support.scripted_channel import ScriptedChannel
from tests.support.wait import until

KEY = Key("uid-1", "hook")
NOTE = Notification(subject="disk full", body="node-1 is at 99 %")
FAST = RetryPolicy(max_attempts=5, initial_backoff=0.0, jitter=0.0)
FAILURE = SendResult.retryable("HTTP 500")
SUCCESS = SendResult.success(Receipt("HTTP 200"))


class Gates(MemoryStore):
    """A memory store whose reserves and reads the test can hold at a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.reserve_gate: asyncio.Event | None = None
        self.read_gate: asyncio.Event | None = None
        self.reserves = 0
        self.reads = 0

    async def reserve(self, key: Key, request: ReserveRequest, now: float) -> Decision:
        self.reserves += 1
        if self.reserve_gate is not None:
            await self.reserve_gate.wait()
        return await super().reserve(key, request, now)

    async def read(self, key: Key, now: float) -> Record | None:
        self.reads += 1
        if self.read_gate is not None:
            await self.read_gate.wait()
        return await super().read(key, now)


class LostReplies(MemoryStore):
    """Executes every reserve, then loses its reply while `lost`; refuses completions while
    `down`: a Redis killed right after it ran the script."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0
        self.down = False

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


def engine(
    store: MemoryStore, channel: ScriptedChannel, settings: EngineSettings | None = None
) -> Engine:
    return Engine(
        store,
        [Receiver("hook", channel, FAST)],
        settings=settings or EngineSettings(lease_margin=1.0),
    )


async def test_a_waiter_on_another_holder_learns_of_a_later_success_as_delivered() -> None:
    store = Gates()
    holder_channel, waiter_channel = ScriptedChannel(hold=True), ScriptedChannel()
    holder, waiter = engine(store, holder_channel), engine(store, waiter_channel)

    first = asyncio.create_task(holder.deliver(KEY, NOTE))
    await holder_channel.wait_for_sends(1)
    waiting = asyncio.create_task(waiter.deliver(KEY, NOTE))
    await until(lambda: store.reads == 1)  # the waiter saw the lease and waits for a change
    store.read_gate = asyncio.Event()  # its next read comes only after attempt 2 succeeded
    holder_channel.answer(FAILURE)
    assert (await first).outcome is Outcome.FAILED
    second = asyncio.create_task(holder.deliver(KEY, NOTE))
    await holder_channel.wait_for_sends(2)
    holder_channel.answer(SUCCESS)
    assert (await second).outcome is Outcome.DELIVERED
    store.read_gate.set()
    shared = await waiting

    assert (shared.outcome, shared.final, shared.shared) == (Outcome.DELIVERED, True, True)
    assert (shared.attempt, shared.attempts_used) == (2, 2)
    assert (shared.receipt, shared.last_error) == (Receipt("HTTP 200"), "")
    assert waiter_channel.sends == []


async def test_a_waiter_after_a_later_failure_gets_that_failure_not_final() -> None:
    store = Gates()
    holder_channel = ScriptedChannel(hold=True)
    holder, waiter = engine(store, holder_channel), engine(store, ScriptedChannel())

    first = asyncio.create_task(holder.deliver(KEY, NOTE))
    await holder_channel.wait_for_sends(1)
    waiting = asyncio.create_task(waiter.deliver(KEY, NOTE))
    await until(lambda: store.reads == 1)
    store.read_gate = asyncio.Event()
    holder_channel.answer(FAILURE)
    await first
    second = asyncio.create_task(holder.deliver(KEY, NOTE))
    await holder_channel.wait_for_sends(2)
    holder_channel.answer(SendResult.retryable("HTTP 503"))
    await second
    store.read_gate.set()
    shared = await waiting

    assert (shared.outcome, shared.final) == (Outcome.FAILED, False)
    assert (shared.attempt, shared.attempts_used, shared.last_error) == (2, 2, "HTTP 503")
    assert shared.receipt is None


async def test_the_key_payload_is_not_refused_while_another_payload_decides() -> None:
    store = Gates()
    channel = ScriptedChannel(SUCCESS)
    sidecar = engine(store, channel)
    assert (await sidecar.deliver(KEY, NOTE)).outcome is Outcome.DELIVERED

    store.reserve_gate = asyncio.Event()
    other = asyncio.create_task(sidecar.deliver(KEY, Notification(subject="another")))
    await until(lambda: store.reserves == 2)
    same = asyncio.create_task(sidecar.deliver(KEY, NOTE))
    await asyncio.sleep(0)  # the same payload meets the other one's flight
    store.reserve_gate.set()

    with pytest.raises(PayloadMismatch):
        await other
    assert (await same).outcome is Outcome.ALREADY_DELIVERED
    assert len(channel.sends) == 1


async def test_another_payload_is_refused_once_the_store_took_the_first() -> None:
    channel = ScriptedChannel(hold=True)
    sidecar = engine(Gates(), channel)
    running = asyncio.create_task(sidecar.deliver(KEY, NOTE))
    await channel.wait_for_sends(1)

    # At once: the store already took the first payload (not at the caller's deadline).
    async with asyncio.timeout(1):
        with pytest.raises(PayloadMismatch):
            await sidecar.deliver(KEY, Notification(subject="another"), timeout=5)
    channel.answer()
    await running


async def test_a_joiner_count_seen_before_the_reservation_lands_decides_the_attempt() -> None:
    store = Gates()
    store.reserve_gate = asyncio.Event()
    channel = ScriptedChannel(FAILURE)
    sidecar = engine(store, channel)

    leader = asyncio.create_task(sidecar.deliver(KEY, NOTE))
    await until(lambda: store.reserves == 1)
    joiner = asyncio.create_task(sidecar.deliver(KEY, NOTE, persisted_attempts=4))
    await asyncio.sleep(0)
    store.reserve_gate.set()
    answers = await asyncio.gather(leader, joiner)

    # Attempt 1 was reserved on a count of 0, given back unsent, and decided again on 4.
    assert [d.attempt for d in channel.sends] == [5]
    for result in answers:
        assert (result.outcome, result.attempt, result.attempts_used) == (Outcome.EXHAUSTED, 5, 5)
    again = await sidecar.deliver(KEY, NOTE)
    assert (again.outcome, len(channel.sends)) == (Outcome.EXHAUSTED, 1)


async def test_a_joiner_count_during_the_send_counts_when_the_result_is_recorded() -> None:
    channel = ScriptedChannel(hold=True)
    sidecar = engine(Gates(), channel)

    leader = asyncio.create_task(sidecar.deliver(KEY, NOTE))
    await channel.wait_for_sends(1)
    joiner = asyncio.create_task(sidecar.deliver(KEY, NOTE, persisted_attempts=4))
    await until(lambda: sidecar.waiting == 2)
    channel.answer(FAILURE)
    answers = await asyncio.gather(leader, joiner)
    again = await sidecar.deliver(KEY, NOTE)

    for result in answers:
        assert (result.outcome, result.attempts_used, result.final) == (Outcome.EXHAUSTED, 5, True)
    assert (again.outcome, len(channel.sends)) == (Outcome.EXHAUSTED, 1)


async def test_a_joiner_on_another_replica_counts_on_top_of_the_attempt_in_flight() -> None:
    store = Gates()
    channel = ScriptedChannel(hold=True)
    holder, other = engine(store, channel), engine(store, ScriptedChannel())

    first = asyncio.create_task(holder.deliver(KEY, NOTE))
    await channel.wait_for_sends(1)
    joined = await other.deliver(KEY, NOTE, persisted_attempts=4, timeout=0.05)
    channel.answer(FAILURE)
    result = await first

    assert (joined.outcome, joined.attempt, joined.attempts_used) == (Outcome.IN_PROGRESS, 1, 5)
    assert (result.outcome, result.attempts_used) == (Outcome.EXHAUSTED, 5)


async def test_a_lost_reserve_reply_is_found_again_and_used_once() -> None:
    store = LostReplies()
    store.lost = 1
    channel = ScriptedChannel(SUCCESS)
    sidecar = engine(store, channel)

    result = await sidecar.deliver(KEY, NOTE)
    state = await sidecar.attempt_count(KEY)

    assert (result.outcome, result.attempt, result.attempts_used) == (Outcome.DELIVERED, 1, 1)
    assert [d.attempt for d in channel.sends] == [1]
    assert (state.attempts_used, len(state.history)) == (1, 1)


async def test_a_reservation_whose_reply_stayed_lost_is_given_back_unsent() -> None:
    store = LostReplies()
    store.lost, store.down = 1_000, True
    channel = ScriptedChannel(SUCCESS)
    sidecar = engine(store, channel, EngineSettings(lease_margin=1.0, reserve_retry=0.05))

    with pytest.raises(StateUnavailable):
        await sidecar.deliver(KEY, NOTE)
    during = await sidecar.attempt_count(KEY)
    store.lost, store.down = 0, False
    assert await sidecar.drain(10) == 0  # drains the give-back too
    after = await sidecar.attempt_count(KEY)
    result = await sidecar.deliver(KEY, NOTE)

    assert (during.attempts_used, during.in_flight) == (1, True)
    assert (after.attempts_used, after.in_flight, after.history) == (0, False, ())
    assert (result.outcome, result.attempt) == (Outcome.DELIVERED, 1)
    assert channel.sends[0].attempt == 1


async def test_a_flight_stops_waiting_on_another_holder_once_its_callers_left() -> None:
    store = Gates()
    channel = ScriptedChannel(hold=True)
    holder, other = engine(store, channel), engine(store, ScriptedChannel())
    first = asyncio.create_task(holder.deliver(KEY, NOTE))
    await channel.wait_for_sends(1)

    left = await other.deliver(KEY, NOTE, timeout=0.01)
    # Well before the holder's lease (6 s) ends: nothing is left waiting, nor to send later.
    await until(lambda: other.running == 0, timeout=2)
    channel.answer()
    await first
    assert left.outcome is Outcome.IN_PROGRESS


async def test_a_count_above_the_budget_answers_no_attempt_beyond_it() -> None:
    """Attempts made elsewhere have no number here: the answer names none past the budget."""
    channel = ScriptedChannel(SUCCESS)
    result = await engine(MemoryStore(), channel).deliver(
        KEY, NOTE, persisted_attempts=7, timeout=1.0
    )
    assert (result.outcome, result.final) == (Outcome.EXHAUSTED, True)
    assert (result.attempt, result.attempts_used, result.max_attempts) == (5, 7, 5)
    assert channel.sends == []
