"""The engine: coalesces concurrent calls per key, asks the store to decide, runs the attempt.

Data flow of a Deliver: join the key's flight in this process or start one (flight.py); the
flight asks the store for a decision (an atomic reserve), sends through the channel when an
attempt was reserved and records the result with the lease's fencing token, or waits for
another holder's attempt (holder.py). Every answer is built from one record (answers.py).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from . import decisions, defaults
from .answers import answer, in_progress
from .breaker import BreakerSettings, CircuitBreaker
from .decisions import Completion, Decision, Mismatch, Reserved, ReserveRequest, Running, Verdict
from .errors import PayloadMismatch, UnknownChannel
from .flight import EXPIRED, DeliverRequest, Flight, expire
from .holder import SKEW_WAIT, await_holder
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
    lease_margin: float = defaults.LEASE_MARGIN
    in_progress_retry_after: float = defaults.IN_PROGRESS_RETRY_AFTER
    reserve_retry: float = defaults.RESERVE_RETRY
    # Applied to the answer built when the store could not record a result.
    retention: float = defaults.RETENTION


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
        self._flights: dict[Key, Flight] = {}
        # Reservations whose reply may have been lost, to give back while their lease holds:
        # reservation id -> (key, lease end). One task works through them.
        self._unreleased: dict[str, tuple[Key, float]] = {}
        self._releaser: asyncio.Task[None] | None = None
        self.breakers = {
            r.name: CircuitBreaker(r.breaker, self.clock.now, r.name)
            for r in self.receivers.values()
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
        self.observer.answered(key, result)
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
        fingerprint = notification.fingerprint()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            flight = self._flights.get(key)
            joined = flight is not None
            if flight is None:
                request = DeliverRequest(
                    key,
                    notification,
                    fingerprint,
                    policy or receiver.policy,
                    receiver,
                    self.breakers[receiver.name],
                )
                flight = self._launch(request, persisted_attempts)
            elif flight.request.fingerprint != fingerprint:
                # Only the store knows the key's payload: until it has answered the other
                # flight, that payload may yet lose to ours.
                if not await self._lost_to(flight, deadline):
                    continue
                raise PayloadMismatch(key)
            waiter = flight.join(persisted_attempts)
            expiry = None if deadline is None else loop.call_at(deadline, expire, waiter)
            self._waiting += 1
            try:
                result = await waiter
            finally:
                self._waiting -= 1
                if expiry is not None:
                    expiry.cancel()
                flight.left()
            if result is EXPIRED:
                return self._in_progress(flight)
            assert isinstance(result, DeliveryResult)
            return replace(result, shared=True) if joined else result

    async def _lost_to(self, flight: Flight, deadline: float | None) -> bool:
        """Whether the store took `flight`'s payload as the key's; False once it ended without."""
        if not flight.payload_accepted:
            loop = asyncio.get_running_loop()
            if flight.payload_decided is None:
                flight.payload_decided = loop.create_future()
            remaining = None if deadline is None else deadline - loop.time()
            await asyncio.wait(
                [flight.payload_decided, flight.task],
                timeout=remaining,
                return_when=asyncio.FIRST_COMPLETED,
            )
        # Past the deadline with the question still open: the other payload is the one deciding.
        return flight.payload_accepted or not flight.task.done()

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
        if self._releaser is not None:
            tasks.append(self._releaser)
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        return sum(not task.done() for task in tasks)

    def reconfigure(
        self,
        receivers: Sequence[Receiver],
        redact: Callable[[Notification], Notification] | None = None,
    ) -> list[Receiver]:
        """Serve `receivers` from now on; returns the receivers they replace, to `retire`.

        A running flight keeps the receiver and breaker it began with. A receiver whose name
        and breaker settings stay keeps its breaker's state: an open breaker stays open.
        """
        breakers = {}
        for receiver in receivers:
            previous = self.receivers.get(receiver.name)
            if previous is not None and previous.breaker == receiver.breaker:
                breakers[receiver.name] = self.breakers[receiver.name]
            else:
                breakers[receiver.name] = CircuitBreaker(
                    receiver.breaker, self.clock.now, receiver.name
                )
        replaced = list(self.receivers.values())
        self.receivers = {receiver.name: receiver for receiver in receivers}
        self.breakers = breakers
        self._redact = redact
        return replaced

    async def retire(self, receivers: Sequence[Receiver]) -> None:
        """Close the channels of `receivers` once no flight of this process uses them."""
        retiring = {id(receiver) for receiver in receivers}
        flights = [f.task for f in self._flights.values() if id(f.request.receiver) in retiring]
        if flights:
            await asyncio.wait(flights)
        for receiver in receivers:
            await receiver.channel.close()

    async def close(self) -> None:
        if self._releaser is not None:
            self._releaser.cancel()
        for receiver in self.receivers.values():
            await receiver.channel.close()
        await self.store.close()

    def _launch(self, request: DeliverRequest, persisted_attempts: int) -> Flight:
        flight = Flight(request, persisted_attempts)
        flight.task = asyncio.create_task(
            self._run(flight), name=f"sendonce-flight-{request.key.channel}"
        )
        self._flights[request.key] = flight
        return flight

    async def _run(self, flight: Flight) -> None:
        """The flight's task: fly, then hand the answer (or the error) to every waiter."""
        key = flight.request.key
        try:
            result = await self._find_answer(flight)
        except BaseException as error:
            flight.fail(error)
            if not isinstance(error, Exception):
                raise  # cancelled (shutdown) or exiting: the task ends so
            log.debug("flight for %s ended with %r", key.channel, error)
        else:
            if result is not None:
                flight.resolve(result)
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]

    async def _find_answer(self, flight: Flight) -> DeliveryResult | None:
        """Decide until there is an answer; None when no caller is left to take one."""
        skew_wait = 0.0
        while True:
            asked = flight.persisted_attempts
            now = self.clock.now()
            decision = await self._reserve(flight, asked, now)
            if isinstance(decision, Mismatch):
                raise PayloadMismatch(flight.request.key)
            flight.accept_payload()
            flight.attempts_used = decision.record.attempts
            if isinstance(decision, Verdict):
                result = answer(decision.record, now, decision.outcome)
                if decision.outcome is Outcome.CIRCUIT_OPEN:
                    breaker = flight.request.breaker
                    result = replace(result, retry_after=breaker.retry_after() or 0.0)
                return result
            if flight.persisted_attempts > asked:
                # A caller joined with a count this decision did not see: give the attempt
                # back unsent (or fold the count into the running one) and decide again.
                if isinstance(decision, Reserved):
                    await self._release(flight, decision.lease)
                continue
            flight.lease = decision.lease
            if isinstance(decision, Reserved):
                return await self._attempt(flight, decision)
            assert isinstance(decision, Running)
            shared = await self._await_holder(flight, decision.lease, skew_wait)
            if shared is not None:
                return shared
            if not flight.wanted:
                return None
            # The same lease again next time means the store's clock has not expired it yet
            # although ours has (skew): wait a moment instead of asking again at once.
            skew_wait = SKEW_WAIT if decision.lease.expires_at <= self.clock.now() else 0.0

    async def _await_holder(
        self, flight: Flight, lease: Lease, skew_wait: float
    ) -> DeliveryResult | None:
        """The holder's shared answer; None to decide again (or, with no caller left, to stop)."""
        wait = asyncio.ensure_future(
            await_holder(self.store, self.clock.now, flight.request.key, lease, skew_wait=skew_wait)
        )
        flight.holder_wait = wait
        try:
            return await wait
        except asyncio.CancelledError:
            if not wait.cancelled() or _cancelling():
                raise  # the flight itself is cancelled (shutdown)
            return None  # every caller left (flight.left)
        finally:
            flight.holder_wait = None

    async def _reserve(self, flight: Flight, persisted_attempts: int, now: float) -> Decision:
        """Ask the store for a decision; a lost reply is asked again with the same reservation.

        When the store stays out of reach, the reservation it may have made is given back in
        the background while its lease holds, so that an attempt never sent is not counted.
        """
        request = flight.request
        breaker = request.breaker
        permitted = breaker.acquire()
        reserve = ReserveRequest(
            fingerprint=request.fingerprint,
            max_attempts=request.policy.max_attempts,
            persisted_attempts=persisted_attempts,
            lease_seconds=request.receiver.channel.timeout + self.settings.lease_margin,
            blocked=not permitted,
            reservation=flight.reservation,
        )
        decision: Decision | None = None
        try:
            decision = await self._reserve_asking_again(request.key, reserve, now)
        except StateUnavailable:
            self._release_later(request.key, flight.reservation, now + reserve.lease_seconds)
            raise
        finally:
            # A permission only an attempt may use: give it back when none was reserved.
            if permitted and not isinstance(decision, Reserved):
                breaker.release()
        return decision

    async def _reserve_asking_again(
        self, key: Key, request: ReserveRequest, now: float
    ) -> Decision:
        try:
            return await self.store.reserve(key, request, now)
        except StateUnavailable:
            pass  # the retries below are off the hot path: most reserves land at once
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(StateUnavailable),
            stop=stop_after_delay(self.settings.reserve_retry),
            wait=wait_exponential(multiplier=0.05, max=0.5),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self.store.reserve(key, request, self.clock.now())
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _release(self, flight: Flight, lease: Lease) -> None:
        release = Completion(
            attempt=lease.attempt,
            token=lease.token,
            result=AttemptResult.RELEASED,
            reservation=flight.reservation,
        )
        try:
            await self.store.complete(flight.request.key, release, self.clock.now())
        except StateUnavailable:
            self._release_later(flight.request.key, flight.reservation, lease.expires_at)
            raise

    def _release_later(self, key: Key, reservation: str, until: float) -> None:
        self._unreleased[reservation] = (key, until)
        if self._releaser is None or self._releaser.done():
            self._releaser = asyncio.create_task(self._give_back(), name="sendonce-release")

    async def _give_back(self) -> None:
        """Give back the reservations whose reply may have been lost, one at a time.

        However many calls an outage refused, one task retries, backing off while the store
        stays out of reach. A reservation not given back before its lease ended counts as
        abandoned, as a crashed holder's does.
        """
        wait = 0.05
        while self._unreleased:
            now = self.clock.now()
            for reservation, (key, until) in list(self._unreleased.items()):
                if until <= now:
                    del self._unreleased[reservation]
                    log.warning(
                        "could not give back a reservation on %s before its lease ended: "
                        "its attempt counts as abandoned",
                        key.channel,
                    )
                    continue
                release = Completion(0, 0, AttemptResult.RELEASED, reservation=reservation)
                try:
                    await self.store.complete(key, release, now)
                except StateUnavailable:
                    break
                del self._unreleased[reservation]
                wait = 0.05
            else:
                continue
            await asyncio.sleep(wait)
            wait = min(wait * 2, 2.0)

    async def _attempt(self, flight: Flight, reserved: Reserved) -> DeliveryResult:
        request = flight.request
        key, receiver, lease = request.key, request.receiver, reserved.lease
        notification = request.notification
        started = time.monotonic()
        if self._redact is not None:
            notification = self._redact(notification)
        with self.observer.attempt(receiver.name, key, lease.attempt) as observation:
            sent = await self._send(receiver, Delivery(key, notification, lease.attempt))
            observation.finished(sent.status)
        request.breaker.record(sent.status)
        self._after_send(key, lease)
        retry_delay = 0.0  # only a retryable failure waits before the next attempt
        if sent.status is SendStatus.RETRYABLE:
            retry_delay = max(
                request.policy.backoff(lease.attempt, self._rng), sent.retry_after or 0.0
            )
        completion = Completion(
            attempt=lease.attempt,
            token=lease.token,
            result=_SEND_RESULT[sent.status],
            error=sent.error,
            receipt=sent.receipt,
            retry_delay=retry_delay,
            persisted_attempts=flight.persisted_attempts,
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
        # Taken before the completion, so retry_after is never shorter than the backoff.
        now = self.clock.now()
        record = await self._complete(key, completion, lease)
        if record is None:
            # Not recorded (store out of reach, or the key cleared with force meanwhile): the
            # answer is the record as the completion would have left it.
            record = copy.deepcopy(reserved.record)
            decisions.complete(record, completion, now, self.settings.retention)
        return answer(record, now)

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

    def _in_progress(self, flight: Flight) -> DeliveryResult:
        max_attempts = flight.request.policy.max_attempts
        return in_progress(
            flight.lease,
            max(flight.attempts_used, flight.persisted_attempts),
            max_attempts,
            self.clock.now(),
            self.settings.in_progress_retry_after,
        )


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
