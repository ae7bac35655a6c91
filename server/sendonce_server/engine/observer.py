"""What the engine reports as it works, for metrics, traces and logs kept outside the engine."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

from .model import DeliveryResult, Key
from .ports import SendStatus


class AttemptObservation(Protocol):
    def finished(self, status: SendStatus) -> None: ...


class Observer(Protocol):
    def answered(self, key: Key, result: DeliveryResult) -> None:
        """A Deliver call for `key` got its answer (in the caller's context)."""
        ...

    def attempt(
        self, receiver: str, key: Key, number: int
    ) -> AbstractContextManager[AttemptObservation]:
        """Wraps one attempt, from its start to its result."""
        ...


class _Unobserved:
    def finished(self, status: SendStatus) -> None:
        return None


_UNOBSERVED = _Unobserved()


class NullObserver:
    """Observes nothing, at almost no cost: the default."""

    def answered(self, key: Key, result: DeliveryResult) -> None:
        return None

    def attempt(
        self, receiver: str, key: Key, number: int
    ) -> AbstractContextManager[AttemptObservation]:
        return nullcontext(_UNOBSERVED)
