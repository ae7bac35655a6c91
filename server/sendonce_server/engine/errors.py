"""Errors the engine raises for input it must refuse. Delivery failures are results, not errors."""

from __future__ import annotations

from collections.abc import Iterable

from .model import Key


class PayloadMismatch(Exception):
    """The key was first delivered with a different notification payload."""

    def __init__(self, key: Key) -> None:
        super().__init__(
            f"notification {key.uid!r} on channel {key.channel!r} was first delivered with a "
            "different payload; a key only ever delivers its first payload (use a new uid, or "
            "Clear with force to send again on purpose)"
        )
        self.key = key


class UnknownChannel(Exception):
    """The channel names no configured receiver."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        names = ", ".join(sorted(known)) or "none"
        super().__init__(f"no receiver named {name!r} is configured (configured: {names})")
        self.name = name
