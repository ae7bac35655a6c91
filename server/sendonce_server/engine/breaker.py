"""A circuit breaker per receiver: stop spending attempts on a receiver that keeps failing.

Closed: attempts go through. After `failures` consecutive retryable failures it opens: no
attempt starts (Deliver answers CIRCUIT_OPEN and uses no attempt) until `open_for` seconds have
passed. Then it is half-open: one probe goes through; a success or a permanent error (the
receiver answered) closes it, a retryable failure opens it again.

The state lives in the process: each replica judges the receiver by its own attempts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from .model import CircuitState
from .ports import SendStatus

log = logging.getLogger("sendonce.breaker")


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    # Consecutive retryable failures that open the circuit; 0 turns the breaker off.
    failures: int = 5
    open_for: float = 60.0


class CircuitBreaker:
    """One receiver's breaker; each change of state is logged, as an operator wants to know."""

    def __init__(
        self, settings: BreakerSettings, now: Callable[[], float], receiver: str = ""
    ) -> None:
        self.settings = settings
        self.receiver = receiver
        self._now = now
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> CircuitState:
        if self._opened_at is None:
            return CircuitState.CLOSED
        if self._probing or self._now() >= self._opened_at + self.settings.open_for:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    def retry_after(self) -> float | None:
        """Seconds until a probe may go through; None when an attempt may start now."""
        if self._opened_at is None:
            return None
        wait = self._opened_at + self.settings.open_for - self._now()
        if wait > 0:
            return wait
        # A probe is already out: its result comes within the channel's timeout.
        return 1.0 if self._probing else None

    def acquire(self) -> bool:
        """May an attempt start now? In half-open state only one (the probe) may."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and not self._probing:
            self._probing = True
            log.info("breaker half-open: one probe attempt", extra={"receiver": self.receiver})
            return True
        return False

    def release(self) -> None:
        """An acquired permission was not used (the store decided no attempt was due)."""
        self._probing = False

    def record(self, status: SendStatus) -> None:
        """The result of an attempt made with an acquired permission."""
        self._probing = False
        if status is SendStatus.RETRYABLE:
            self._failures += 1
            half_open = self._opened_at is not None
            threshold = self.settings.failures
            if half_open or (threshold and self._failures >= threshold):
                self._opened_at = self._now()
                log.warning(
                    "breaker opened",
                    extra={
                        "receiver": self.receiver,
                        "failures": self._failures,
                        "open_seconds": self.settings.open_for,
                    },
                )
            return
        # A success or a permanent error: the receiver is up and answering.
        self._failures = 0
        if self._opened_at is not None:
            log.info("breaker closed", extra={"receiver": self.receiver})
        self._opened_at = None
