"""A flight: the one Deliver for a key running in this process, which concurrent callers join.

A flight runs detached from its callers. Each caller waits on a future of its own, which the
flight resolves when it lands: a caller that is cancelled (or whose deadline passes) only gives
up its own future, never the flight.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .model import DeliveryResult, Key, Lease, Notification
from .policy import RetryPolicy

if TYPE_CHECKING:
    from .breaker import CircuitBreaker
    from .engine import Receiver


@dataclass(frozen=True, slots=True)
class DeliverRequest:
    """What the first caller asked; joiners share it (their payload is the same)."""

    key: Key
    notification: Notification
    fingerprint: str
    policy: RetryPolicy
    # The receiver and its breaker as they were when the flight began: a reload never moves a
    # running flight to another channel.
    receiver: Receiver
    breaker: CircuitBreaker


# Reservation ids: unique across replicas by the random prefix, within a process by the count.
_PROCESS = secrets.token_hex(8)
_COUNT = itertools.count()


def new_reservation() -> str:
    return f"{_PROCESS}-{next(_COUNT)}"


class Expired:
    """What a caller gets when its own deadline comes first."""


EXPIRED = Expired()


@dataclass(slots=True, eq=False)
class Flight:
    request: DeliverRequest
    # The highest persisted_attempts of the callers so far: promise 1 counts every caller's.
    persisted_attempts: int
    # Chosen before the first reserve and sent with each: a lost reply is found again by it.
    reservation: str = field(default_factory=new_reservation)
    task: asyncio.Task[None] = field(init=False)
    # The attempt in flight (ours or another holder's) and the count, for IN_PROGRESS answers.
    lease: Lease | None = None
    attempts_used: int = 0
    waiters: list[asyncio.Future[DeliveryResult | Expired]] = field(default_factory=list)
    # Once the store took this flight's payload as the key's, another payload loses.
    payload_accepted: bool = False
    # Made only for a caller with another payload that waits to learn the above.
    payload_decided: asyncio.Future[None] | None = None
    # While the flight waits on another holder's attempt: stopped when no caller is left.
    holder_wait: asyncio.Future[DeliveryResult | None] | None = None

    def join(self, persisted_attempts: int) -> asyncio.Future[DeliveryResult | Expired]:
        self.persisted_attempts = max(self.persisted_attempts, persisted_attempts)
        waiter: asyncio.Future[DeliveryResult | Expired] = (
            asyncio.get_running_loop().create_future()
        )
        self.waiters.append(waiter)
        return waiter

    @property
    def wanted(self) -> bool:
        """Whether a caller still waits: with none, the flight makes no new attempt."""
        return any(not waiter.done() for waiter in self.waiters)

    def accept_payload(self) -> None:
        self.payload_accepted = True
        if self.payload_decided is not None and not self.payload_decided.done():
            self.payload_decided.set_result(None)

    def left(self) -> None:
        """A caller stopped waiting: with none left, waiting on another holder is pointless."""
        if self.holder_wait is not None and not self.wanted:
            self.holder_wait.cancel()

    def resolve(self, result: DeliveryResult) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(result)

    def fail(self, error: BaseException) -> None:
        for waiter in self.waiters:
            if waiter.done():
                continue
            if isinstance(error, asyncio.CancelledError):
                waiter.cancel()
            else:
                waiter.set_exception(error)


def expire(waiter: asyncio.Future[DeliveryResult | Expired]) -> None:
    if not waiter.done():
        waiter.set_result(EXPIRED)
