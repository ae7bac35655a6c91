"""Reconfiguring the engine's receivers (a reload): running flights keep what they began with."""

from __future__ import annotations

import asyncio

import pytest

from sendonce_server.engine.breaker import BreakerSettings
from sendonce_server.engine.engine import Engine, Receiver
from sendonce_server.engine.errors import UnknownChannel
from sendonce_server.engine.model import CircuitState, Key, Notification, Outcome
from sendonce_server.engine.ports import SendResult
from sendonce_server.store.memory import MemoryStore
from tests.support.scripted_channel import ScriptedChannel

NOTE = Notification(subject="disk full")
BREAKER = BreakerSettings(failures=1, open_for=60.0)


async def test_a_running_attempt_finishes_on_the_channel_it_began_with() -> None:
    old, new = ScriptedChannel(hold=True), ScriptedChannel()
    engine = Engine(MemoryStore(), [Receiver("hook", old)])
    running = asyncio.create_task(engine.deliver(Key("uid-1", "hook"), NOTE, timeout=5))
    await old.wait_for_sends(1)

    retired = engine.reconfigure([Receiver("hook", new)])
    retiring = asyncio.create_task(engine.retire(retired))
    joined = asyncio.create_task(engine.deliver(Key("uid-1", "hook"), NOTE, timeout=5))
    fresh = await engine.deliver(Key("uid-2", "hook"), NOTE, timeout=5)
    assert not old.closed, "closed under a running attempt"
    old.answer()
    first, second = await running, await joined

    assert (first.outcome, second.outcome, fresh.outcome) == (Outcome.DELIVERED,) * 3
    assert second.shared, "the second call joined the running attempt"
    assert [d.key.uid for d in old.sends] == ["uid-1"]
    assert [d.key.uid for d in new.sends] == ["uid-2"]
    await retiring
    assert old.closed
    assert not new.closed


async def test_a_removed_receiver_is_unknown_to_new_calls() -> None:
    engine = Engine(
        MemoryStore(), [Receiver("hook", ScriptedChannel()), Receiver("mail", ScriptedChannel())]
    )
    engine.reconfigure([Receiver("hook", ScriptedChannel())])
    with pytest.raises(UnknownChannel):
        await engine.deliver(Key("uid-1", "mail"), NOTE, timeout=1)


async def test_an_open_breaker_stays_open_when_its_settings_stay() -> None:
    failing = ScriptedChannel(SendResult.retryable("HTTP 503"))
    engine = Engine(MemoryStore(), [Receiver("hook", failing, breaker=BREAKER)])
    await engine.deliver(Key("uid-1", "hook"), NOTE, timeout=1)
    assert state(engine) is CircuitState.OPEN

    engine.reconfigure([Receiver("hook", ScriptedChannel(), breaker=BREAKER)])
    assert state(engine) is CircuitState.OPEN
    refused = await engine.deliver(Key("uid-2", "hook"), NOTE, timeout=1)
    assert refused.outcome is Outcome.CIRCUIT_OPEN

    engine.reconfigure([Receiver("hook", ScriptedChannel(), breaker=BreakerSettings(failures=2))])
    assert state(engine) is CircuitState.CLOSED


def state(engine: Engine) -> CircuitState:
    return engine.breakers["hook"].state
