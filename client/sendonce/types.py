"""The client's vocabulary: typed requests and results, and their protobuf conversions.

Callers only ever see the dataclasses and enums below. The `*_to_pb` / `*_from_pb` functions
at the bottom are the one place that knows the wire format; they are used by the clients and
are not part of the public API.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from sendonce.v1 import delivery_pb2

__all__ = [
    "Attempt",
    "AttemptCountResult",
    "AttemptResult",
    "ClearResult",
    "DeliverResult",
    "Delivery",
    "DeliveryPage",
    "DeliveryState",
    "Link",
    "Notification",
    "Outcome",
    "Priority",
    "Receipt",
    "Receiver",
    "RetryPolicy",
]


class Priority(enum.Enum):
    """Priority of a notification; each channel maps it to its own notion (severity, colour)."""

    UNSPECIFIED = "unspecified"
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"


class Outcome(enum.Enum):
    """Outcome of a Deliver call. A failed delivery is an outcome, never an exception."""

    #: A value this client version does not know (sent by a newer sidecar).
    UNKNOWN = "unknown"
    #: This call's attempt, or the concurrent attempt it joined, succeeded.
    DELIVERED = "delivered"
    #: A success was recorded earlier; nothing was sent.
    ALREADY_DELIVERED = "already_delivered"
    #: The attempt failed with a retryable error; `retry_after` says when to call again.
    FAILED = "failed"
    #: The attempt failed with a permanent error (e.g. HTTP 400); final.
    FAILED_PERMANENT = "failed_permanent"
    #: The attempt budget is spent; final.
    EXHAUSTED = "exhausted"
    #: The backoff since the last failure has not elapsed; no attempt was used.
    RETRY_LATER = "retry_later"
    #: Another caller's attempt was still running at this call's deadline; ask again later.
    IN_PROGRESS = "in_progress"
    #: The receiver's circuit breaker is open after repeated failures; no attempt was used.
    CIRCUIT_OPEN = "circuit_open"


class CircuitState(enum.Enum):
    """A receiver's circuit breaker in the answering sidecar process."""

    #: A value this client version does not know (sent by a newer sidecar).
    UNKNOWN = "unknown"
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class DeliveryState(enum.Enum):
    """Where a delivery stands, as `list_deliveries` files it."""

    #: A value this client version does not know (sent by a newer sidecar).
    UNKNOWN = "unknown"
    #: An attempt is running: the receiver has not answered yet.
    IN_FLIGHT = "in_flight"
    #: The last attempt failed with a retryable error and attempts are left.
    FAILED = "failed"
    #: The attempt budget is spent; final.
    EXHAUSTED = "exhausted"
    #: An attempt failed with a permanent error; final.
    FAILED_PERMANENT = "failed_permanent"
    DELIVERED = "delivered"


class AttemptResult(enum.Enum):
    """Result of one attempt in a key's history."""

    #: A value this client version does not know (sent by a newer sidecar).
    UNKNOWN = "unknown"
    #: The attempt holds a live lease.
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    FAILED_PERMANENT = "failed_permanent"
    #: The holder's lease expired before it reported: outcome unknown, the attempt counts.
    ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class Link:
    """A titled URL shown with the notification (e.g. as a button)."""

    title: str
    url: str


@dataclass(frozen=True, slots=True)
class Notification:
    """What a channel delivers. A key only ever delivers the payload it first saw."""

    subject: str
    body: str = ""
    priority: Priority = Priority.UNSPECIFIED
    metadata: Mapping[str, str] = field(default_factory=dict)
    links: tuple[Link, ...] = ()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Overrides the channel's retry policy for one request; None falls back to the channel's."""

    max_attempts: int | None = None
    initial_backoff: timedelta | None = None
    multiplier: float | None = None
    max_backoff: timedelta | None = None
    #: Fraction of the backoff added or removed at random, 0 to 1.
    jitter: float | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the receiver answered to a successful attempt."""

    #: A short human-readable reference (e.g. "HTTP 202", a message id).
    reference: str
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeliverResult:
    """The answer to `deliver`."""

    outcome: Outcome
    #: The attempt this answer refers to (1-based); 0 when no attempt was ever made.
    attempt: int
    #: Attempts used for the key, counted when each attempt starts.
    attempts_used: int
    max_attempts: int
    #: How long to wait before the next attempt may start; None when nothing is due to wait.
    retry_after: timedelta | None = None
    last_error: str = ""
    #: True when this call joined an attempt started by a concurrent call.
    shared: bool = False
    #: True when nothing more will ever be sent for the key.
    final: bool = False
    receipt: Receipt | None = None
    #: The idempotency key the receiver sees for (uid, channel) on every attempt (e.g. the
    #: webhook's Idempotency-Key header, PagerDuty's dedup_key): find the notification there.
    idempotency_key: str = ""

    @property
    def delivered(self) -> bool:
        """True when the notification reached the receiver (now or earlier)."""
        return self.outcome in (Outcome.DELIVERED, Outcome.ALREADY_DELIVERED)

    @property
    def gave_up(self) -> bool:
        """True when the key is final without a delivery (permanent error or budget spent)."""
        return self.final and not self.delivered


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt in a key's history."""

    number: int
    #: When the attempt started, timezone-aware in UTC.
    start_time: datetime
    #: None while running or when abandoned.
    duration: timedelta | None
    result: AttemptResult
    error: str = ""


@dataclass(frozen=True, slots=True)
class AttemptCountResult:
    """The answer to `attempt_count`: the state of a key, read without changing it."""

    #: False when the sidecar holds no record of the key (never seen, cleared, or expired).
    found: bool
    attempts_used: int
    max_attempts: int
    remaining: int
    in_flight: bool = False
    succeeded: bool = False
    final: bool = False
    retry_after: timedelta | None = None
    last_error: str = ""
    history: tuple[Attempt, ...] = ()
    #: True when only a tombstone of a cleared key remains (it keeps a running or won attempt).
    cleared: bool = False
    #: The channel's circuit breaker.
    circuit: CircuitState = CircuitState.UNKNOWN
    #: The idempotency key the receiver sees for (uid, channel), as in DeliverResult.
    idempotency_key: str = ""


@dataclass(frozen=True, slots=True)
class ClearResult:
    """The answer to `clear`."""

    #: Channels whose record was cleared.
    cleared_channels: tuple[str, ...] = ()
    #: Channels whose attempt is still running: it finishes and is recorded (never cancelled).
    running_channels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Receiver:
    """A configured receiver as the answering sidecar process sees it (never its settings).

    The counts are of the attempts that process made since it started.
    """

    name: str
    #: The channel type, e.g. "webhook".
    type: str
    circuit: CircuitState
    #: While the circuit is open: how long until a probe may go through.
    circuit_retry_after: timedelta | None = None
    #: Retryable failures in a row; the breaker opens at its configured threshold.
    consecutive_failures: int = 0
    #: The attempt budget per key when a request sets none.
    max_attempts: int = 0
    attempts_started: int = 0
    #: Attempts still waiting for the receiver's answer.
    attempts_in_flight: int = 0
    attempts_succeeded: int = 0
    #: Retryable failures, timeouts included.
    attempts_failed: int = 0
    attempts_failed_permanent: int = 0


@dataclass(frozen=True, slots=True)
class Delivery:
    """One key as `list_deliveries` shows it."""

    uid: str
    channel: str
    state: DeliveryState
    #: When the key last changed (its last attempt's start or end), timezone-aware in UTC;
    #: None when the sidecar made no attempt itself.
    update_time: datetime | None
    attempts_used: int
    max_attempts: int
    last_error: str = ""
    #: With state FAILED: how long until the next attempt may start.
    retry_after: timedelta | None = None
    idempotency_key: str = ""


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    """One page of `list_deliveries`: pass `next_page_token` to get the next one."""

    deliveries: tuple[Delivery, ...]
    #: Empty when there is no next page.
    next_page_token: str = ""


# --- protobuf conversions (not public) ---------------------------------------------------------

# Built from the member names, so a member missing from the proto fails at import, not at runtime.
_PRIORITY_TO_PB = {p: delivery_pb2.Priority.Value(f"PRIORITY_{p.name}") for p in Priority}
_OUTCOME_FROM_PB = {
    delivery_pb2.Outcome.Value(f"OUTCOME_{o.name}"): o for o in Outcome if o is not Outcome.UNKNOWN
}
_CIRCUIT_FROM_PB = {
    delivery_pb2.CircuitState.Value(f"CIRCUIT_STATE_{c.name}"): c
    for c in CircuitState
    if c is not CircuitState.UNKNOWN
}
_DELIVERY_STATE_TO_PB: dict[DeliveryState, delivery_pb2.DeliveryState.ValueType] = {
    s: delivery_pb2.DeliveryState.Value(f"DELIVERY_STATE_{s.name}")
    for s in DeliveryState
    if s is not DeliveryState.UNKNOWN
}
_DELIVERY_STATE_FROM_PB = {value: state for state, value in _DELIVERY_STATE_TO_PB.items()}
_ATTEMPT_RESULT_FROM_PB = {
    delivery_pb2.AttemptResult.Value(f"ATTEMPT_RESULT_{r.name}"): r
    for r in AttemptResult
    if r is not AttemptResult.UNKNOWN
}


def _duration_to_pb(value: timedelta) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromTimedelta(value)
    return message


def _optional_duration(
    message: delivery_pb2.DeliverResponse | delivery_pb2.AttemptCountResponse,
) -> timedelta | None:
    # Proto3 message fields carry presence: unset means "nothing to wait for", not zero.
    return message.retry_after.ToTimedelta() if message.HasField("retry_after") else None


def notification_to_pb(notification: Notification) -> delivery_pb2.Notification:
    """The wire form of a notification."""
    return delivery_pb2.Notification(
        subject=notification.subject,
        body=notification.body,
        priority=_PRIORITY_TO_PB[notification.priority],
        metadata=dict(notification.metadata),
        links=[delivery_pb2.Link(title=link.title, url=link.url) for link in notification.links],
    )


def retry_policy_to_pb(policy: RetryPolicy) -> delivery_pb2.RetryPolicy:
    """The wire form of a retry policy; None fields stay unset so the channel's value applies."""
    message = delivery_pb2.RetryPolicy(
        max_attempts=policy.max_attempts or 0,
        multiplier=policy.multiplier or 0.0,
    )
    if policy.initial_backoff is not None:
        message.initial_backoff.CopyFrom(_duration_to_pb(policy.initial_backoff))
    if policy.max_backoff is not None:
        message.max_backoff.CopyFrom(_duration_to_pb(policy.max_backoff))
    if policy.jitter is not None:
        # jitter is `optional` on the wire: 0.0 (no jitter) differs from unset.
        message.jitter = policy.jitter
    return message


def deliver_request_to_pb(
    uid: str,
    channel: str,
    notification: Notification,
    retry_policy: RetryPolicy | None,
    persisted_attempts: int,
) -> delivery_pb2.DeliverRequest:
    """The wire form of a Deliver call."""
    request = delivery_pb2.DeliverRequest(
        uid=uid,
        channel=channel,
        notification=notification_to_pb(notification),
        persisted_attempts=persisted_attempts,
    )
    if retry_policy is not None:
        request.retry_policy.CopyFrom(retry_policy_to_pb(retry_policy))
    return request


def attempt_count_request_to_pb(
    uid: str, channel: str, persisted_attempts: int
) -> delivery_pb2.AttemptCountRequest:
    """The wire form of an AttemptCount call."""
    return delivery_pb2.AttemptCountRequest(
        uid=uid, channel=channel, persisted_attempts=persisted_attempts
    )


def clear_request_to_pb(
    uid: str, channels: Iterable[str], force: bool
) -> delivery_pb2.ClearRequest:
    """The wire form of a Clear call."""
    return delivery_pb2.ClearRequest(uid=uid, channels=list(channels), force=force)


def deliver_result_from_pb(message: delivery_pb2.DeliverResponse) -> DeliverResult:
    """A typed DeliverResult from the wire."""
    receipt = (
        Receipt(reference=message.receipt.reference, details=dict(message.receipt.details))
        if message.HasField("receipt")
        else None
    )
    return DeliverResult(
        outcome=_OUTCOME_FROM_PB.get(message.outcome, Outcome.UNKNOWN),
        attempt=message.attempt,
        attempts_used=message.attempts_used,
        max_attempts=message.max_attempts,
        retry_after=_optional_duration(message),
        last_error=message.last_error,
        shared=message.shared,
        final=message.final,
        receipt=receipt,
        idempotency_key=message.idempotency_key,
    )


def attempt_from_pb(message: delivery_pb2.Attempt) -> Attempt:
    """A typed Attempt from the wire; start_time is timezone-aware (UTC)."""
    return Attempt(
        number=message.number,
        start_time=message.start_time.ToDatetime(tzinfo=UTC),
        duration=message.duration.ToTimedelta() if message.HasField("duration") else None,
        result=_ATTEMPT_RESULT_FROM_PB.get(message.result, AttemptResult.UNKNOWN),
        error=message.error,
    )


def attempt_count_result_from_pb(message: delivery_pb2.AttemptCountResponse) -> AttemptCountResult:
    """A typed AttemptCountResult from the wire."""
    return AttemptCountResult(
        found=message.found,
        attempts_used=message.attempts_used,
        max_attempts=message.max_attempts,
        remaining=message.remaining,
        in_flight=message.in_flight,
        succeeded=message.succeeded,
        final=message.final,
        retry_after=_optional_duration(message),
        last_error=message.last_error,
        history=tuple(attempt_from_pb(entry) for entry in message.history),
        cleared=message.cleared,
        circuit=_CIRCUIT_FROM_PB.get(message.circuit, CircuitState.UNKNOWN),
        idempotency_key=message.idempotency_key,
    )


def clear_result_from_pb(message: delivery_pb2.ClearResponse) -> ClearResult:
    """A typed ClearResult from the wire."""
    return ClearResult(
        cleared_channels=tuple(message.cleared_channels),
        running_channels=tuple(message.running_channels),
    )


def list_receivers_request_to_pb() -> delivery_pb2.ListReceiversRequest:
    """The wire form of a ListReceivers call."""
    return delivery_pb2.ListReceiversRequest()


def receivers_from_pb(message: delivery_pb2.ListReceiversResponse) -> tuple[Receiver, ...]:
    """Typed Receivers from the wire."""
    return tuple(
        Receiver(
            name=receiver.name,
            type=receiver.type,
            circuit=_CIRCUIT_FROM_PB.get(receiver.circuit, CircuitState.UNKNOWN),
            circuit_retry_after=(
                receiver.circuit_retry_after.ToTimedelta()
                if receiver.HasField("circuit_retry_after")
                else None
            ),
            consecutive_failures=receiver.consecutive_failures,
            max_attempts=receiver.max_attempts,
            attempts_started=receiver.attempts_started,
            attempts_in_flight=receiver.attempts_in_flight,
            attempts_succeeded=receiver.attempts_succeeded,
            attempts_failed=receiver.attempts_failed,
            attempts_failed_permanent=receiver.attempts_failed_permanent,
        )
        for receiver in message.receivers
    )


def _timestamp_to_pb(value: datetime) -> timestamp_pb2.Timestamp:
    if value.tzinfo is None:
        raise ValueError("updated_after and updated_before must be timezone-aware")
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value.astimezone(UTC))
    return message


def list_deliveries_request_to_pb(
    state: DeliveryState | None,
    channel: str,
    uid: str,
    updated_after: datetime | None,
    updated_before: datetime | None,
    page_size: int,
    page_token: str,
) -> delivery_pb2.ListDeliveriesRequest:
    """The wire form of a ListDeliveries call."""
    request = delivery_pb2.ListDeliveriesRequest(
        state=delivery_pb2.DELIVERY_STATE_UNSPECIFIED
        if state is None
        else _DELIVERY_STATE_TO_PB[state],
        channel=channel,
        uid=uid,
        page_size=page_size,
        page_token=page_token,
    )
    if updated_after is not None:
        request.updated_after.CopyFrom(_timestamp_to_pb(updated_after))
    if updated_before is not None:
        request.updated_before.CopyFrom(_timestamp_to_pb(updated_before))
    return request


def delivery_page_from_pb(message: delivery_pb2.ListDeliveriesResponse) -> DeliveryPage:
    """A typed DeliveryPage from the wire."""
    return DeliveryPage(
        deliveries=tuple(
            Delivery(
                uid=d.uid,
                channel=d.channel,
                state=_DELIVERY_STATE_FROM_PB.get(d.state, DeliveryState.UNKNOWN),
                update_time=d.update_time.ToDatetime(tzinfo=UTC)
                if d.HasField("update_time")
                else None,
                attempts_used=d.attempts_used,
                max_attempts=d.max_attempts,
                last_error=d.last_error,
                retry_after=d.retry_after.ToTimedelta() if d.HasField("retry_after") else None,
                idempotency_key=d.idempotency_key,
            )
            for d in message.deliveries
        ),
        next_page_token=message.next_page_token,
    )
