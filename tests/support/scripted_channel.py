"""A channel whose sends the test controls: each send waits until the test answers it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sendonce_server.engine.ports import Delivery, SendResult


@dataclass
class PendingSend:
    delivery: Delivery
    answer: asyncio.Future[SendResult]


@dataclass
class ScriptedChannel:
    """Sends either answer at once with `default` or, with `hold=True`, wait for the test.

    `sends` lists every delivery the channel saw, in order: the tests' ground truth for how
    many attempts really reached the receiver.
    """

    default: SendResult = field(default_factory=SendResult.success)
    hold: bool = False
    timeout: float = 5.0
    sends: list[Delivery] = field(default_factory=list)
    pending: list[PendingSend] = field(default_factory=list)
    closed: bool = False
    _arrived: asyncio.Condition | None = None

    async def send(self, delivery: Delivery) -> SendResult:
        self.sends.append(delivery)
        answer: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        if self.hold:
            self.pending.append(PendingSend(delivery, answer))
        else:
            answer.set_result(self.default)
        async with self._condition():
            self._condition().notify_all()
        return await answer

    async def wait_for_sends(self, count: int) -> None:
        async with self._condition():
            await self._condition().wait_for(lambda: len(self.sends) >= count)

    def answer(self, result: SendResult | None = None) -> Delivery:
        """Answer the oldest held send (default: the channel's default result)."""
        pending = self.pending.pop(0)
        pending.answer.set_result(result or self.default)
        return pending.delivery

    async def close(self) -> None:
        self.closed = True

    def _condition(self) -> asyncio.Condition:
        if self._arrived is None:
            self._arrived = asyncio.Condition()
        return self._arrived


class ManualClock:
    """Wall-clock time that only moves when the test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.current = start

    def now(self) -> float:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += seconds
