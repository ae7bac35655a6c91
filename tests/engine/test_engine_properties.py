"""Random interleavings of deliver / answer / crash / clear / time passing keep promises 1-4,
and every answer is true, on every store (the machine runs once per store kind)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sendonce_server.engine.defaults import DAY
from sendonce_server.engine.engine import Engine, EngineSettings, Receiver
from sendonce_server.engine.flight import expire
from sendonce_server.engine.model import Key, Lease, Notification, Outcome, Status
from sendonce_server.engine.policy import RetryPolicy
from sendonce_server.engine.ports import Delivery, SendResult, Store
from tests.rules.stores import STORES, make_store
from tests.support.scripted_channel import ManualClock, ScriptedChannel
from tests.support.wait import until

MAX_ATTEMPTS = 3
KEYS = [Key("uid-a", "hook"), Key("uid-b", "hook")]
NOTE = Notification(subject="pod crashlooping")
FINAL = {Outcome.DELIVERED, Outcome.ALREADY_DELIVERED, Outcome.FAILED_PERMANENT, Outcome.EXHAUSTED}
# Examples per store: the in-process stores are cheap, a network round trip per step is not.
EXAMPLES = {"memory": 150, "sqlite": 40, "redis": 40, "redis-cluster": 15, "redis-sentinel": 15}
POLICY = RetryPolicy(max_attempts=MAX_ATTEMPTS, initial_backoff=10.0, multiplier=2.0, jitter=0.0)
RESULTS = {
    "success": SendResult.success(),
    "retryable": SendResult.retryable("HTTP 503"),
    "permanent": SendResult.permanent("HTTP 400"),
}


class _Dying(Engine):
    """A replica that crashes between sending and recording the result."""

    def _after_send(self, key: Key, lease: Lease) -> None:
        raise RuntimeError("crashed")


async def _gather(tasks: Iterable[asyncio.Task[Any]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)


class EngineMachine(RuleBasedStateMachine):
    make_store: Callable[[], Store]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock()
        self.store = self.make_store()
        self.channel = ScriptedChannel(hold=True)
        self.crash_channel = ScriptedChannel(RESULTS["retryable"])
        engine_settings = EngineSettings(lease_margin=1.0)
        receivers = [Receiver("hook", self.channel, POLICY)]
        self.engine = Engine(self.store, receivers, clock=self.clock, settings=engine_settings)
        self.dying = _Dying(
            self.store,
            [Receiver("hook", self.crash_channel, POLICY)],
            clock=self.clock,
            settings=engine_settings,
        )
        self.callers: list[asyncio.Task[Any]] = []
        # Sends per key since the key was last force-cleared (which legitimately resets it).
        self.sends: dict[Key, list[Delivery]] = defaultdict(list)
        self.seen = {id(channel): 0 for channel in (self.channel, self.crash_channel)}
        self.sends_at_success: dict[Key, int] = {}

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coroutine)

    def settle(self) -> None:
        """Run until nothing moves but what the test steers, then let the callers' deadlines pass.

        A store with threads or a network answers in real time: each step first waits until
        every flight is done, holds a send of the test's channel or waits on another holder.
        Only then do the callers' deadlines pass (each waiter expires, as a deadline does), so
        what happens never depends on how fast the machine is.
        """
        self.run(until(self._quiet))
        for engine in (self.engine, self.dying):
            for flight in engine._flights.values():
                for waiter in flight.waiters:
                    expire(waiter)
        self.run(_gather(self.callers))
        self.run(until(self._quiet))
        self._collect()

    def _quiet(self) -> bool:
        held = {pending.delivery.key for pending in self.channel.pending}
        return all(
            flight.task.done()
            or (engine is self.engine and key in held)
            or (flight.holder_wait is not None and not flight.holder_wait.done())
            for engine in (self.engine, self.dying)
            for key, flight in engine._flights.items()
        )

    def _collect(self) -> None:
        for channel in (self.channel, self.crash_channel):
            for delivery in channel.sends[self.seen[id(channel)] :]:
                self.sends[delivery.key].append(delivery)
            self.seen[id(channel)] = len(channel.sends)
        for key in KEYS:
            record = self.run(self.store.read(key, self.clock.now()))
            if record is not None and record.status is Status.DELIVERED:
                self.sends_at_success.setdefault(key, len(self.sends[key]))

    # Counts above the budget come from a controller that attempted elsewhere first.
    @rule(
        key=st.sampled_from(KEYS),
        persisted=st.integers(0, MAX_ATTEMPTS + 2),
        callers=st.integers(1, 3),
    )
    def deliver(self, key: Key, persisted: int, callers: int) -> None:
        for _ in range(callers):
            call = self.engine.deliver(key, NOTE, persisted_attempts=persisted)
            self.callers.append(self.loop.create_task(call))
        self.settle()

    @precondition(lambda self: bool(self.channel.pending))
    @rule(result=st.sampled_from(sorted(RESULTS)))
    def answer(self, result: str) -> None:
        self.channel.answer(RESULTS[result])
        self.settle()

    @rule(key=st.sampled_from(KEYS))
    def crash_mid_attempt(self, key: Key) -> None:
        self.callers.append(self.loop.create_task(self.dying.deliver(key, NOTE)))
        self.settle()

    @rule(seconds=st.sampled_from([1.0, 5.0, 10.0, 40.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(key=st.sampled_from(KEYS), force=st.booleans())
    def clear(self, key: Key, force: bool) -> None:
        self.run(self.engine.clear(key.uid, [key.channel], force=force))
        if force:
            self.sends[key] = []
            self.sends_at_success.pop(key, None)
        self.settle()

    @invariant()
    def never_more_than_max_attempts(self) -> None:
        for key in KEYS:
            assert len(self.sends[key]) <= MAX_ATTEMPTS, self.sends[key]

    @invariant()
    def never_a_send_after_a_recorded_success(self) -> None:
        for key, count in self.sends_at_success.items():
            assert len(self.sends[key]) == count

    @invariant()
    def one_attempt_at_a_time_per_key(self) -> None:
        for key in KEYS:
            assert sum(p.delivery.key == key for p in self.channel.pending) <= 1

    @invariant()
    def every_attempt_stays_counted(self) -> None:
        for key in KEYS:
            record = self.run(self.store.read(key, self.clock.now()))
            attempts = record.attempts if record is not None else 0
            assert attempts >= len(self.sends[key])

    @invariant()
    def every_answer_is_true(self) -> None:
        for task in self.callers:
            if not task.done() or task.cancelled() or task.exception() is not None:
                continue
            result = task.result()
            assert result.attempt <= MAX_ATTEMPTS, result
            assert result.max_attempts == MAX_ATTEMPTS, result
            assert result.attempt <= result.attempts_used or result.attempt == 0, result
            # `final` tells the controller to stop: true exactly for the outcomes that end a key.
            assert result.final == (result.outcome in FINAL), result
            if result.final:
                assert result.retry_after is None, result
            if result.outcome in (Outcome.DELIVERED, Outcome.ALREADY_DELIVERED):
                assert result.attempt >= 1, result
                assert result.last_error == "", result

    def teardown(self) -> None:
        for pending in self.channel.pending:
            pending.answer.cancel()
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(_gather(tasks))
        self.loop.run_until_complete(self.store.close())
        self.loop.close()


@pytest.mark.parametrize("kind", STORES)
def test_engine_properties(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    class OnStore(EngineMachine):
        # Nothing expires within a run (at most 40 steps of 40 s): a forgotten key may be sent
        # again by design, which the send counts here would read as a second delivery.
        make_store = staticmethod(lambda: make_store(kind, request, tmp_path, DAY, DAY))

    run_state_machine_as_test(
        OnStore,
        settings=settings(
            max_examples=EXAMPLES[kind],
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
