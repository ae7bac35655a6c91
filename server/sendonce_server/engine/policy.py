"""Retry policy: how many attempts a key gets and how long to wait between them."""

from __future__ import annotations

import random
from dataclasses import dataclass

MIN_ATTEMPTS = 1
MAX_ATTEMPTS = 20
# Backoffs beyond a year are a mistake, not a plan; the bound also keeps every later sum and
# product of times finite. The multiplier's bound keeps `multiplier ** (MAX_ATTEMPTS - 1)` finite.
MAX_BACKOFF = 365 * 86_400.0
MAX_MULTIPLIER = 100.0


class PolicyError(ValueError):
    """A policy value out of range; `field` names the offending setting."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Defaults are the reference controller's: 5 attempts, 30 s doubling up to 480 s, ±10 %."""

    max_attempts: int = 5
    initial_backoff: float = 30.0
    multiplier: float = 2.0
    max_backoff: float = 480.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not MIN_ATTEMPTS <= self.max_attempts <= MAX_ATTEMPTS:
            raise PolicyError(
                "max_attempts",
                f"must be between {MIN_ATTEMPTS} and {MAX_ATTEMPTS}, got {self.max_attempts}",
            )
        # Every check is written so that NaN fails it (a comparison with NaN is false).
        _check_backoff("initial_backoff", self.initial_backoff)
        if not 1 <= self.multiplier <= MAX_MULTIPLIER:
            raise PolicyError(
                "multiplier", f"must be between 1 and {MAX_MULTIPLIER:g}, got {self.multiplier:g}"
            )
        _check_backoff("max_backoff", self.max_backoff)
        if not self.max_backoff >= self.initial_backoff:
            raise PolicyError("max_backoff", "must not be shorter than initial_backoff")
        if not 0 <= self.jitter <= 1:
            raise PolicyError("jitter", f"must be between 0 and 1, got {self.jitter:g}")

    def merged(
        self,
        *,
        max_attempts: int | None = None,
        initial_backoff: float | None = None,
        multiplier: float | None = None,
        max_backoff: float | None = None,
        jitter: float | None = None,
    ) -> RetryPolicy:
        """This policy with the given fields overridden; None keeps the current value."""
        policy = RetryPolicy(
            max_attempts=self.max_attempts if max_attempts is None else max_attempts,
            initial_backoff=self.initial_backoff if initial_backoff is None else initial_backoff,
            multiplier=self.multiplier if multiplier is None else multiplier,
            max_backoff=(
                max_backoff
                if max_backoff is not None
                else max(self.max_backoff, initial_backoff or 0.0)
            ),
            jitter=self.jitter if jitter is None else jitter,
        )
        return self if policy == self else policy

    def backoff(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the given (1-based) attempt failed."""
        exponent = max(0, failed_attempt - 1)
        base = min(self.max_backoff, self.initial_backoff * self.multiplier**exponent)
        if not self.jitter:
            return base
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1 + spread))


def _check_backoff(field: str, seconds: float) -> None:
    if seconds < 0:
        raise PolicyError(field, "must not be negative")
    if not seconds <= MAX_BACKOFF:
        raise PolicyError(
            field,
            f"must be at most {MAX_BACKOFF:.0f} seconds ({MAX_BACKOFF / 86_400:.0f} days), "
            f"got {seconds:g}",
        )
