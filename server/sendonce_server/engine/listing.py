"""Which deliveries a ListDeliveries query names, in which order, a page at a time.

Every store answers the same query the same way: the state of a record (`state_of`), the time it
last changed (`updated_at`) and the order of the list (newest first, then by channel and uid,
descending) are defined here once. A store may keep an index to find the candidates cheaply,
but each candidate is checked against its record as read (`DeliveryQuery.admits`), so an index
that lags behind only costs a wasted look-up, never a wrong answer.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from .model import Key, Record, Status


class DeliveryState(enum.Enum):
    """Where a delivery stands, as an operator asks about it."""

    IN_FLIGHT = "in_flight"
    # A retryable failure (or an attempt abandoned by its holder), with attempts left.
    FAILED = "failed"
    EXHAUSTED = "exhausted"
    FAILED_PERMANENT = "failed_permanent"
    DELIVERED = "delivered"


_FINAL = {
    Status.DELIVERED: DeliveryState.DELIVERED,
    Status.FAILED_PERMANENT: DeliveryState.FAILED_PERMANENT,
    Status.EXHAUSTED: DeliveryState.EXHAUSTED,
}


def state_of(record: Record, now: float) -> DeliveryState | None:
    """The record's state; None for what no list shows (a cleared key, no attempt yet).

    An attempt whose lease has ended without a report is no longer in flight: it failed.
    """
    if record.cleared:
        return None
    lease = record.lease
    if lease is not None and lease.expires_at > now:
        return DeliveryState.IN_FLIGHT
    final = _FINAL.get(record.status)
    if final is not None:
        return final
    return DeliveryState.FAILED if record.attempts > 0 else None


def stored_state(record: Record) -> DeliveryState | None:
    """The state an index files the record under when it is written (a live lease: in flight).

    A lease that ends unreported moves the record to FAILED with no write, so a query for
    FAILED also looks at what is filed as in flight.
    """
    if record.cleared:
        return None
    if record.lease is not None:
        return DeliveryState.IN_FLIGHT
    final = _FINAL.get(record.status)
    if final is not None:
        return final
    return DeliveryState.FAILED if record.attempts > 0 else None


def updated_at(record: Record) -> float:
    """When the record last changed: its last attempt's start or end (0 with no attempt)."""
    latest = 0.0
    for entry in record.history:
        latest = max(latest, entry.started_at, entry.finished_at or 0.0)
    return latest


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A record's place in the list, which is ordered by this, descending."""

    updated_at: float
    channel: str
    uid: str

    @classmethod
    def of(cls, key: Key, record: Record) -> Position:
        return cls(updated_at(record), key.channel, key.uid)


@dataclass(frozen=True, slots=True)
class DeliveryQuery:
    """A ListDeliveries query: every filter set must hold; None filters nothing."""

    state: DeliveryState | None = None
    channel: str | None = None
    uid: str | None = None
    # updated_at >= since and < until.
    since: float | None = None
    until: float | None = None
    limit: int = 50
    # Continue after this position (exclusive): the last one the previous page examined.
    after: Position | None = None

    def states(self) -> tuple[DeliveryState, ...]:
        """Where an index filed the records this query may show."""
        if self.state is None:
            return tuple(DeliveryState)
        if self.state is DeliveryState.FAILED:
            return (DeliveryState.FAILED, DeliveryState.IN_FLIGHT)
        return (self.state,)

    def in_range(self, position: Position) -> bool:
        """Whether the position passes the time filters and comes after the cursor."""
        if self.since is not None and position.updated_at < self.since:
            return False
        if self.until is not None and position.updated_at >= self.until:
            return False
        return self.after is None or position < self.after

    def admits(
        self, key: Key, record: Record, now: float, position: Position | None = None
    ) -> bool:
        """Whether the record, as read, belongs in the answer (cursor and time included).

        `position` is where the store found it (its index's), by default the record's own.
        """
        if self.channel is not None and key.channel != self.channel:
            return False
        if self.uid is not None and key.uid != self.uid:
            return False
        if record.expires_at <= now:
            return False
        state = state_of(record, now)
        if state is None or (self.state is not None and state is not self.state):
            return False
        return self.in_range(position or Position.of(key, record))


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    """Up to `limit` records, in list order, and where the next page starts (None: no more).

    A page may hold fewer than `limit` records and still have a next one: a store that bounds
    the work of one call stops early and says where to go on.
    """

    entries: list[tuple[Key, Record]]
    next: Position | None


def select(
    candidates: Iterable[tuple[Key, Record]], query: DeliveryQuery, now: float
) -> DeliveryPage:
    """The page of `query` among `candidates` (any order): O(n log limit) for n candidates."""
    admitted = (
        (Position.of(key, record), key, record)
        for key, record in candidates
        if query.admits(key, record, now)
    )
    top = heapq.nlargest(query.limit + 1, admitted, key=lambda item: item[0])
    page = top[: query.limit]
    more = len(top) > query.limit
    return DeliveryPage(
        [(key, record) for _, key, record in page], page[-1][0] if more and page else None
    )


@dataclass(frozen=True, slots=True)
class DeliverySummary:
    """One listed key, in the answer's terms."""

    key: Key
    state: DeliveryState
    # 0 when the sidecar made no attempt itself (a count from persisted_attempts alone).
    updated_at: float
    attempts_used: int
    max_attempts: int
    last_error: str
    retry_after: float | None

    @property
    def idempotency_key(self) -> str:
        return self.key.idempotency_key


def summarise(key: Key, record: Record, now: float) -> DeliverySummary:
    state = state_of(record, now)
    assert state is not None, "a store lists only what the query admits"
    retry_after = None
    if state is DeliveryState.FAILED and record.next_attempt_at > now:
        retry_after = record.next_attempt_at - now
    return DeliverySummary(
        key=key,
        state=state,
        updated_at=updated_at(record),
        attempts_used=record.attempts,
        max_attempts=record.max_attempts,
        last_error="" if state is DeliveryState.DELIVERED else record.last_error,
        retry_after=retry_after,
    )
