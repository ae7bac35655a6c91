"""The engine: coalesces concurrent calls per key, asks the store to decide, runs the attempt.

Data flow of a Deliver: join the key's flight in this process or start one; the flight asks
the store for a decision (an atomic reserve), sends through the channel when an attempt was
reserved, and records the result with the lease's fencing token. Flights run detached from the
callers, so a caller that cancels or times out never cancels the attempt nor fails the others.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from . import decisions
from .breaker import BreakerSettings, CircuitBreaker
from .decisions import (
    Completion,
    Decision,
    Mismatch,
    Reserved,
    ReserveRequest,
    Running,
    Verdict,
)
from .errors import PayloadMismatch, UnknownChannel
from .model import (
    AttemptResult,
    ClearResult,
    DeliveryResult,
    Key,
    KeyState,
    Lease,
    Notification,
    Outcome,
    Record,
    Status,
)
from .observer import NullObserver, Observer
from .policy import RetryPolicy
from .ports import Channel, Delivery, SendResult, SendStatus, StateUnavailable, Store

log = logging.getLogger("sendonce.engine")

_SEND_RESULT = {
    SendStatus.SUCCESS: AttemptResult.SUCCEEDED,
    SendStatus.RETRYABLE: AttemptResult.FAILED,
    SendStatus.PERMANENT: AttemptResult.FAILED_PERMANENT,
}


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds: leases and backoffs are shared with other processes."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


@dataclass(frozen=True, slots=True)
class Receiver:
    """A configured channel with its retry policy and circuit breaker settings."""

    name: str
    channel: Channel
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)


@dataclass(frozen=True, slots=True)
class EngineSettings:
    # A lease outlives the channel's timeout by this much, so only a crashed or hung holder
    # ever loses it.
    lease_margin: float = 5.0
    # Longest retry_after suggested with IN_PROGRESS.
    in_progress_retry_after: float = 1.0


class _Expired:
    """What a waiter gets when its caller's deadline comes first."""


_EXPIRED = _Expired()
_Step = DeliveryResult | Running


@dataclass(slots=True)
class _Flight:
    """The one running Deliver for a key in this process; concurrent callers join it.

    Each caller waits on a future of its own, which the flight resolves when it lands: a
    caller that is cancelled (or whose deadline passes) only gives up its own future, never
    the flight.
    """

    fingerprint: str
    task: asyncio.Task[None] = field(init=False)
    lease: Lease | None = None
    attempts_used: int = 0
    max_attempts: int = 0
    waiters: list[asyncio.Future[_Step | _Expired]] = field(default_factory=list)

    def land(self, step: _Step) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(step)

    def fail(self, error: BaseException) -> None:
        for waiter in self.waiters:
            if waiter.done():
                continue
            if isinstance(error, asyncio.CancelledError):
                waiter.cancel()
            else:
                waiter.set_exception(error)


def _expire(waiter: asyncio.Future[_Step | _Expired]) -> None:
    if not waiter.done():
        waiter.set_result(_EXPIRED)


class Engine:
    def __init__(
        self,
        store: Store,
        receivers: Sequence[Receiver],
        *,
        clock: Clock | None = None,
        settings: EngineSettings | None = None,
        rng: random.Random | None = None,
        observer: Observer | None = None,
        redact: Callable[[Notification], Notification] | None = None,
    ) -> None:
        self.store = store
        self.receivers: Mapping[str, Receiver] = {r.name: r for r in receivers}
        self.clock = clock if clock is not None else SystemClock()
        self.settings = settings if settings is not None else EngineSettings()
        self._rng = rng or random.Random()
        self.observer: Observer = observer if observer is not None else NullObserver()
        # Applied to what channels see; the fingerprint is always of the payload as given.
        self._redact = redact
        self._flights: dict[Key, _Flight] = {}
        self.breakers = {
            r.name: CircuitBreaker(r.breaker, self.clock.now) for r in self.receivers.values()
        }
        self._waiting = 0

    def receiver(self, name: str) -> Receiver:
        try:
            return self.receivers[name]
        except KeyError:
            raise UnknownChannel(name, self.receivers) from None

    @property
    def running(self) -> int:
        """Flights in progress in this process."""
        return len(self._flights)

    @property
    def waiting(self) -> int:
        """Callers currently waiting for a flight (the leader included)."""
        return self._waiting

    async def deliver(
        self,
        key: Key,
        notification: Notification,
        policy: RetryPolicy | None = None,
        *,
        persisted_attempts: int = 0,
        timeout: float | None = None,
    ) -> DeliveryResult:
        """Perform at most one attempt for the key and answer with its outcome.

        `timeout` bounds how long this caller waits for a running attempt; the attempt itself
        goes on and is recorded either way.
        """
        result = await self._deliver(key, notification, policy, persisted_attempts, timeout)
        self.observer.answered(key.channel, result)
        return result

    async def _deliver(
        self,
        key: Key,
        notification: Notification,
        policy: RetryPolicy | None,
        persisted_attempts: int,
        timeout: float | None,
    ) -> DeliveryResult:
        receiver = self.receiver(key.channel)
        policy = policy or receiver.policy
        fingerprint = notification.fingerprint()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        seen: Lease | None = None
        while True:
            flight = self._flights.get(key)
            joined = flight is not None
            if flight is None:
                flight = self._launch(
                    key, notification, fingerprint, policy, persisted_attempts, receiver
                )
            elif flight.fingerprint != fingerprint:
                raise PayloadMismatch(key)
            waiter: asyncio.Future[_Step | _Expired] = loop.create_future()
            flight.waiters.append(waiter)
            expiry = None if deadline is None else loop.call_at(deadline, _expire, waiter)
            self._waiting += 1
            try:
                step = await waiter
            finally:
                self._waiting -= 1
                if expiry is not None:
                    expiry.cancel()
            if isinstance(step, _Expired):
                waiting = self._in_progress(flight.lease, flight.attempts_used, flight.max_attempts)
                return replace(waiting, shared=joined)
            if isinstance(step, DeliveryResult):
                return replace(step, shared=True) if joined else step
            try:
                # The whole wait, its subscription and reads included, ends by the deadline.
                async with asyncio.timeout_at(deadline):
                    # The same lease twice: the store's clock has not expired it yet although
                    # ours has (skew); wait a moment instead of asking again at once.
                    patience = _SKEW_PATIENCE if step.lease == seen else 0.0
                    seen = step.lease
                    shared = await self._await_foreign(key, step.lease, deadline, patience)
            except TimeoutError:
                record = step.record
                return self._in_progress(step.lease, record.attempts, record.max_attempts)
            if shared is not None:
                return shared

    async def attempt_count(self, key: Key, persisted_attempts: int = 0) -> KeyState:
        receiver = self.receiver(key.channel)
        record = await self.store.read(key, self.clock.now())
        state = decisions.state_of(
            record, persisted_attempts, receiver.policy.max_attempts, self.clock.now()
        )
        return replace(state, circuit=self.breakers[receiver.name].state)

    async def clear(
        self, uid: str, channels: Sequence[str] = (), force: bool = False
    ) -> ClearResult:
        cleared, running = await self.store.clear(uid, channels, force, self.clock.now())
        return ClearResult(tuple(cleared), tuple(running))

    async def drain(self, grace: float) -> int:
        """Wait up to `grace` seconds for running attempts; returns how many are still running."""
        tasks = [flight.task for flight in self._flights.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        return sum(not task.done() for task in tasks)

    async def close(self) -> None:
        for receiver in self.receivers.values():
            await receiver.channel.close()
        await self.store.close()

    def _launch(
        self,
        key: Key,
        notification: Notification,
        fingerprint: str,
        policy: RetryPolicy,
        persisted_attempts: int,
        receiver: Receiver,
    ) -> _Flight:
        flight = _Flight(
            fingerprint, attempts_used=persisted_attempts, max_attempts=policy.max_attempts
        )
        flight.task = asyncio.create_task(
            self._run(flight, key, notification, policy, persisted_attempts, receiver),
            name=f"sendonce-flight-{key.channel}",
        )
        self._flights[key] = flight
        return flight

    async def _run(
        self,
        flight: _Flight,
        key: Key,
        notification: Notification,
        policy: RetryPolicy,
        persisted_attempts: int,
        receiver: Receiver,
    ) -> None:
        """The flight's task: fly, then hand the outcome (or the error) to every waiter."""
        try:
            step = await self._fly(flight, key, notification, policy, persisted_attempts, receiver)
        except BaseException as error:
            flight.fail(error)
            if not isinstance(error, Exception):
                raise  # cancelled (shutdown) or exiting: the task ends so
            log.debug("flight for %s ended with %r", key.channel, error)
        else:
            flight.land(step)
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]

    async def _fly(
        self,
        flight: _Flight,
        key: Key,
        notification: Notification,
        policy: RetryPolicy,
        persisted_attempts: int,
        receiver: Receiver,
    ) -> _Step:
        breaker = self.breakers[receiver.name]
        permitted = breaker.acquire()
        request = ReserveRequest(
            fingerprint=flight.fingerprint,
            max_attempts=policy.max_attempts,
            persisted_attempts=persisted_attempts,
            lease_seconds=receiver.channel.timeout + self.settings.lease_margin,
            blocked=not permitted,
        )
        now = self.clock.now()
        decision: Decision | None = None
        try:
            decision = await self.store.reserve(key, request, now)
        finally:
            # A permission only an attempt may use: give it back when none was reserved.
            if permitted and not isinstance(decision, Reserved):
                breaker.release()
        if isinstance(decision, Mismatch):
            raise PayloadMismatch(key)
        flight.attempts_used = decision.record.attempts
        flight.max_attempts = decision.record.max_attempts
        if isinstance(decision, Verdict):
            result = _result(decision.outcome, decision.record, now)
            if decision.outcome is Outcome.CIRCUIT_OPEN:
                result = replace(result, retry_after=breaker.retry_after() or 0.0)
            return result
        if isinstance(decision, Running):
            flight.lease = decision.lease
            return decision
        assert isinstance(decision, Reserved)
        flight.lease = decision.lease
        return await self._attempt(key, notification, policy, receiver, decision)

    async def _attempt(
        self,
        key: Key,
        notification: Notification,
        policy: RetryPolicy,
        receiver: Receiver,
        reserved: Reserved,
    ) -> DeliveryResult:
        lease = reserved.lease
        started = time.monotonic()
        if self._redact is not None:
            notification = self._redact(notification)
        with self.observer.attempt(receiver.name, key, lease.attempt) as observation:
            sent = await self._send(receiver, Delivery(key, notification, lease.attempt))
            observation.finished(sent.status)
        self.breakers[receiver.name].record(sent.status)
        self._after_send(key, lease)
        now = self.clock.now()
        retry_delay = 0.0  # only a retryable failure waits before the next attempt
        if sent.status is SendStatus.RETRYABLE:
            retry_delay = max(policy.backoff(lease.attempt, self._rng), sent.retry_after or 0.0)
        completion = Completion(
            attempt=lease.attempt,
            token=lease.token,
            result=_SEND_RESULT[sent.status],
            error=sent.error,
            receipt=sent.receipt,
            retry_delay=retry_delay,
        )
        log.info(
            "attempt finished",
            extra={
                "uid": key.uid,
                "receiver": key.channel,
                "attempt": lease.attempt,
                "outcome": sent.status.value,
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
                "error": sent.error,
            },
        )
        record = await self._complete(key, completion, lease)
        return _own_result(sent, completion, reserved.record, record, now)

    def _after_send(self, key: Key, lease: Lease) -> None:
        """Test seam: a subclass may raise here to play a holder that dies before completing."""

    async def _complete(self, key: Key, completion: Completion, lease: Lease) -> Record | None:
        """Record the result; through a store outage, keep trying while the lease holds.

        Past the lease the attempt is counted but its result lost, and the key may be sent
        again (receivers dedupe by the idempotency key): worth a few retries to avoid.
        """
        try:
            return await self.store.complete(key, completion, self.clock.now())
        except StateUnavailable:
            pass  # the retries below are off the hot path: most completions land at once
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(StateUnavailable),
            stop=stop_after_delay(max(0.0, lease.expires_at - self.clock.now())),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self.store.complete(key, completion, self.clock.now())
        except Exception:
            # The caller still learns what happened; the lease will expire, the attempt counts.
            log.exception("could not record the result of attempt %d", completion.attempt)
        return None

    async def _send(self, receiver: Receiver, delivery: Delivery) -> SendResult:
        timeout = receiver.channel.timeout
        try:
            # The channel enforces its own timeout; this hard bound keeps a hung channel inside
            # its lease.
            async with asyncio.timeout(timeout + 1.0):
                return await receiver.channel.send(delivery)
        except TimeoutError:
            return SendResult.retryable(f"timed out after {timeout:g}s")
        except Exception as exc:
            # The exception text may carry a secret (URL, token): log and answer its type only.
            log.error("channel %s raised %s", receiver.name, type(exc).__name__)
            return SendResult.retryable(f"channel error: {type(exc).__name__}")

    async def _await_foreign(
        self, key: Key, lease: Lease, deadline: float | None, patience: float = 0.0
    ) -> DeliveryResult | None:
        """Wait for another holder's attempt; its result is shared, None means decide again."""
        loop = asyncio.get_running_loop()
        async with self.store.watch(key) as changed:
            while True:
                # Cleared before the read, never after: a change notified while the read is
                # awaited (a completion published by another replica) must wake the wait below.
                changed.clear()
                now = self.clock.now()
                record = await self.store.read(key, now)
                entry = record.entry(lease.attempt, lease.token) if record is not None else None
                if record is None or entry is None:
                    return None
                if entry.result in _FINISHED:
                    return replace(
                        _attempt_result(entry.result, record, now, lease.attempt), shared=True
                    )
                if record.lease is None or record.lease.token != lease.token:
                    return None
                wait = record.lease.expires_at - now
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return self._in_progress(lease, record.attempts, record.max_attempts)
                    wait = min(wait, remaining)
                if wait <= 0:
                    if not patience:
                        return None
                    wait, patience = patience, 0.0
                try:
                    async with asyncio.timeout(wait):
                        await changed.wait()
                except TimeoutError:
                    pass

    def _in_progress(self, lease: Lease | None, used: int, max_attempts: int) -> DeliveryResult:
        retry_after = self.settings.in_progress_retry_after
        if lease is not None:
            retry_after = max(0.0, min(retry_after, lease.expires_at - self.clock.now()))
        return DeliveryResult(
            outcome=Outcome.IN_PROGRESS,
            attempt=lease.attempt if lease else 0,
            attempts_used=used,
            max_attempts=max_attempts,
            retry_after=retry_after,
            shared=True,
        )


# How long to wait before asking again for a lease that has expired by our clock only.
_SKEW_PATIENCE = 0.05
_FINISHED = (AttemptResult.SUCCEEDED, AttemptResult.FAILED, AttemptResult.FAILED_PERMANENT)


def _result(
    outcome: Outcome, record: Record, now: float, attempt: int | None = None
) -> DeliveryResult:
    """An answer built from the key's record."""
    retry_after = None
    if record.status is Status.OPEN and record.next_attempt_at > now:
        retry_after = record.next_attempt_at - now
    if attempt is None:
        attempt = record.attempts
        if record.status is Status.DELIVERED:
            attempt = next(
                (e.number for e in record.history if e.result is AttemptResult.SUCCEEDED), attempt
            )
    return DeliveryResult(
        outcome=outcome,
        attempt=attempt,
        attempts_used=record.attempts,
        max_attempts=record.max_attempts,
        retry_after=retry_after,
        last_error=record.last_error,
        final=record.final,
        receipt=record.receipt if record.status is Status.DELIVERED else None,
    )


def _attempt_result(
    result: AttemptResult, record: Record, now: float, attempt: int
) -> DeliveryResult:
    """The answer for a finished attempt, as its own caller would have received it."""
    if result is AttemptResult.SUCCEEDED:
        return _result(Outcome.DELIVERED, record, now, attempt)
    if result is AttemptResult.FAILED_PERMANENT:
        return _result(Outcome.FAILED_PERMANENT, record, now, attempt)
    if record.status is Status.EXHAUSTED:
        return _result(Outcome.EXHAUSTED, record, now, attempt)
    return _result(Outcome.FAILED, record, now, attempt)


def _own_result(
    sent: SendResult,
    completion: Completion,
    reserved: Record,
    record: Record | None,
    now: float,
) -> DeliveryResult:
    """The answer for this caller's attempt, even when the store could not record it."""
    if record is not None:
        result = _attempt_result(completion.result, record, now, completion.attempt)
        if sent.status is SendStatus.SUCCESS and result.receipt is not sent.receipt:
            # Our own receipt, even if an older holder's late success was recorded first.
            return replace(result, receipt=sent.receipt)
        return result
    retry_after = completion.retry_delay
    outcome = {
        SendStatus.SUCCESS: Outcome.DELIVERED,
        SendStatus.PERMANENT: Outcome.FAILED_PERMANENT,
        SendStatus.RETRYABLE: Outcome.FAILED,
    }[sent.status]
    if outcome is Outcome.FAILED and completion.attempt >= reserved.max_attempts:
        outcome = Outcome.EXHAUSTED
    return DeliveryResult(
        outcome=outcome,
        attempt=completion.attempt,
        attempts_used=completion.attempt,
        max_attempts=reserved.max_attempts,
        retry_after=retry_after if outcome is Outcome.FAILED else None,
        last_error=sent.error,
        final=outcome is not Outcome.FAILED,
        receipt=sent.receipt,
    )
