"""The circuit breaker alone, and in the engine: no attempt is spent while it is open."""

from __future__ import annotations

import logging

import pytest

from sendonce_server.engine.breaker import BreakerSettings, CircuitBreaker
from sendonce_server.engine.engine import Engine, EngineSettings, Receiver
from sendonce_server.engine.model import CircuitState, Key, Notification, Outcome
from sendonce_server.engine.policy import RetryPolicy
from sendonce_server.engine.ports import SendResult, SendStatus
from sendonce_server.store.memory import MemoryStore
from tests.support.scripted_channel import ManualClock, ScriptedChannel

NOTE = Notification(subject="certificate expires in 3 days")


def current(breaker: CircuitBreaker) -> CircuitState:
    """Read afresh (mypy would otherwise keep the narrowing of an earlier assert)."""
    return breaker.state


def test_opens_after_consecutive_retryable_failures_only() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(BreakerSettings(failures=3, open_for=60), clock.now)

    for status in (SendStatus.RETRYABLE, SendStatus.RETRYABLE, SendStatus.PERMANENT):
        assert breaker.acquire()
        breaker.record(status)
    assert current(breaker) is CircuitState.CLOSED  # a permanent error resets the count
    for _ in range(3):
        assert breaker.acquire()
        breaker.record(SendStatus.RETRYABLE)

    assert current(breaker) is CircuitState.OPEN
    assert not breaker.acquire()
    assert breaker.retry_after() == 60


def test_half_open_lets_one_probe_through_and_its_result_decides() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(BreakerSettings(failures=1, open_for=60), clock.now)
    breaker.record(SendStatus.RETRYABLE)
    clock.advance(60)

    assert current(breaker) is CircuitState.HALF_OPEN
    assert breaker.acquire()
    assert not breaker.acquire()  # only one probe at a time
    breaker.record(SendStatus.RETRYABLE)
    assert current(breaker) is CircuitState.OPEN  # a failed probe opens it again

    clock.advance(60)
    assert breaker.acquire()
    breaker.release()  # the permission was not used: the next caller may probe
    assert breaker.acquire()
    breaker.record(SendStatus.SUCCESS)
    assert current(breaker) is CircuitState.CLOSED


def test_failures_zero_turns_it_off() -> None:
    breaker = CircuitBreaker(BreakerSettings(failures=0), ManualClock().now)
    for _ in range(100):
        assert breaker.acquire()
        breaker.record(SendStatus.RETRYABLE)
    assert current(breaker) is CircuitState.CLOSED


async def test_an_open_circuit_uses_no_attempt_and_a_successful_probe_closes_it() -> None:
    clock = ManualClock()
    channel = ScriptedChannel(SendResult.retryable("HTTP 503"))
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.0, jitter=0.0)
    engine = Engine(
        MemoryStore(),
        [Receiver("hook", channel, policy, BreakerSettings(failures=2, open_for=30))],
        clock=clock,
        settings=EngineSettings(lease_margin=1.0),
    )
    first, second = Key("a", "hook"), Key("b", "hook")

    await engine.deliver(first, NOTE)
    await engine.deliver(second, NOTE)
    blocked = await engine.deliver(first, NOTE)
    state = await engine.attempt_count(first)

    assert len(channel.sends) == 2
    assert (blocked.outcome, blocked.attempts_used, blocked.retry_after) == (
        Outcome.CIRCUIT_OPEN,
        1,
        30,
    )
    assert (state.attempts_used, state.circuit) == (1, CircuitState.OPEN)

    clock.advance(30)
    channel.default = SendResult.success()
    probe = await engine.deliver(first, NOTE)
    after = await engine.deliver(second, NOTE)

    assert (probe.outcome, probe.attempt) == (Outcome.DELIVERED, 2)
    assert (after.outcome, after.attempt) == (Outcome.DELIVERED, 2)
    assert (await engine.attempt_count(first)).circuit is CircuitState.CLOSED


async def test_already_delivered_still_answers_while_the_circuit_is_open() -> None:
    channel = ScriptedChannel()
    engine = Engine(
        MemoryStore(),
        [Receiver("hook", channel, RetryPolicy(initial_backoff=0), BreakerSettings(failures=1))],
    )
    done = Key("done", "hook")
    await engine.deliver(done, NOTE)
    channel.default = SendResult.retryable("HTTP 500")
    await engine.deliver(Key("other", "hook"), NOTE)

    assert (await engine.deliver(done, NOTE)).outcome is Outcome.ALREADY_DELIVERED


def test_each_change_of_state_is_logged_with_its_receiver(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(BreakerSettings(failures=2, open_for=60), clock.now, "pager")
    caplog.set_level(logging.INFO, logger="sendonce.breaker")

    for _ in range(2):
        assert breaker.acquire()
        breaker.record(SendStatus.RETRYABLE)
    clock.advance(60)
    assert breaker.acquire()  # the probe
    breaker.record(SendStatus.RETRYABLE)  # opens again
    clock.advance(60)
    assert breaker.acquire()
    breaker.record(SendStatus.SUCCESS)
    assert breaker.acquire()
    breaker.record(SendStatus.SUCCESS)  # closed already: nothing more to say

    lines = [(r.levelname, r.getMessage(), getattr(r, "receiver", None)) for r in caplog.records]
    assert lines == [
        ("WARNING", "breaker opened", "pager"),
        ("INFO", "breaker half-open: one probe attempt", "pager"),
        ("WARNING", "breaker opened", "pager"),
        ("INFO", "breaker half-open: one probe attempt", "pager"),
        ("INFO", "breaker closed", "pager"),
    ]
    assert caplog.records[0].failures == 2  # type: ignore[attr-defined]
