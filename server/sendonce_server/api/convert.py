"""Protobuf messages to engine objects and back. No protobuf type goes past this module."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from sendonce.v1 import delivery_pb2 as pb

from ..engine.model import (
    AttemptResult,
    CircuitState,
    ClearResult,
    DeliveryResult,
    KeyState,
    Link,
    Notification,
    Outcome,
    Priority,
    Receipt,
)
from ..engine.policy import MAX_ATTEMPTS, MIN_ATTEMPTS, PolicyError, RetryPolicy
from . import validation
from .validation import InvalidInput, Limits

_PRIORITY = {
    pb.PRIORITY_UNSPECIFIED: Priority.UNSPECIFIED,
    pb.PRIORITY_LOW: Priority.LOW,
    pb.PRIORITY_NORMAL: Priority.NORMAL,
    pb.PRIORITY_HIGH: Priority.HIGH,
    pb.PRIORITY_CRITICAL: Priority.CRITICAL,
}
_OUTCOME = {
    Outcome.DELIVERED: pb.OUTCOME_DELIVERED,
    Outcome.ALREADY_DELIVERED: pb.OUTCOME_ALREADY_DELIVERED,
    Outcome.FAILED: pb.OUTCOME_FAILED,
    Outcome.FAILED_PERMANENT: pb.OUTCOME_FAILED_PERMANENT,
    Outcome.EXHAUSTED: pb.OUTCOME_EXHAUSTED,
    Outcome.RETRY_LATER: pb.OUTCOME_RETRY_LATER,
    Outcome.IN_PROGRESS: pb.OUTCOME_IN_PROGRESS,
    Outcome.CIRCUIT_OPEN: pb.OUTCOME_CIRCUIT_OPEN,
}
_CIRCUIT = {
    CircuitState.CLOSED: pb.CIRCUIT_STATE_CLOSED,
    CircuitState.OPEN: pb.CIRCUIT_STATE_OPEN,
    CircuitState.HALF_OPEN: pb.CIRCUIT_STATE_HALF_OPEN,
}
_ATTEMPT_RESULT = {
    AttemptResult.RUNNING: pb.ATTEMPT_RESULT_RUNNING,
    AttemptResult.SUCCEEDED: pb.ATTEMPT_RESULT_SUCCEEDED,
    AttemptResult.FAILED: pb.ATTEMPT_RESULT_FAILED,
    AttemptResult.FAILED_PERMANENT: pb.ATTEMPT_RESULT_FAILED_PERMANENT,
    AttemptResult.ABANDONED: pb.ATTEMPT_RESULT_ABANDONED,
}


_MAX_NANOS = 999_999_999


def _priority(value: pb.Priority.ValueType) -> Priority:
    """A value this sidecar does not know (added to the proto after it was built) is UNSPECIFIED.

    Priority is an open enum: a newer client may send a value an older sidecar has no name
    for. Refusing it would fail the whole delivery over a hint. UNSPECIFIED is the honest
    reading (the sidecar cannot tell what the sender meant), and it is what the channels render
    and what the payload fingerprint holds, so a retry with the same raw value matches. (A
    value mapped here and known by a later sidecar is fingerprinted differently: replicas of
    mixed versions sharing a store would see a payload mismatch for such a key.)
    """
    return _PRIORITY.get(value, Priority.UNSPECIFIED)


def notification(message: pb.Notification, limits: Limits) -> Notification:
    validation.check_subject(message.subject)
    validation.check_body(message.body, limits)
    metadata = dict(message.metadata)
    validation.check_metadata(metadata)
    validation.check_links(len(message.links))
    for index, link in enumerate(message.links):
        validation.check_link(link.title, link.url, index)
    return Notification(
        subject=message.subject,
        body=message.body,
        priority=_priority(message.priority),
        metadata=metadata,
        links=tuple(Link(link.title, link.url) for link in message.links) if message.links else (),
    )


def _seconds(duration: Duration, field: str) -> float:
    """A Duration as seconds; its range is the engine's (`RetryPolicy`) to check."""
    if duration.seconds < 0 or duration.nanos < 0:
        raise InvalidInput(field, "must not be negative")
    if duration.nanos > _MAX_NANOS:
        # A valid Duration's nanos are below one second (google/protobuf/duration.proto).
        raise InvalidInput(
            f"{field}.nanos", f"must be between 0 and {_MAX_NANOS}, got {duration.nanos}"
        )
    # Not ToTimedelta: it overflows (a timedelta ends at 999999999 days); a float does not.
    return duration.seconds + duration.nanos / 1e9


def retry_policy(request: pb.DeliverRequest, base: RetryPolicy) -> RetryPolicy:
    """The receiver's policy with the request's overrides; unset fields keep the receiver's."""
    if not request.HasField("retry_policy"):
        return base
    message = request.retry_policy
    if message.max_attempts and not MIN_ATTEMPTS <= message.max_attempts <= MAX_ATTEMPTS:
        raise InvalidInput(
            "retry_policy.max_attempts",
            f"must be between {MIN_ATTEMPTS} and {MAX_ATTEMPTS}, got {message.max_attempts}",
        )
    try:
        return base.merged(
            max_attempts=message.max_attempts or None,
            initial_backoff=(
                _seconds(message.initial_backoff, "retry_policy.initial_backoff")
                if message.HasField("initial_backoff")
                else None
            ),
            multiplier=message.multiplier or None,
            max_backoff=(
                _seconds(message.max_backoff, "retry_policy.max_backoff")
                if message.HasField("max_backoff")
                else None
            ),
            jitter=message.jitter if message.HasField("jitter") else None,
        )
    except PolicyError as error:
        raise InvalidInput(f"retry_policy.{error.field}", error.reason) from None


def _duration(seconds: float | None) -> Duration | None:
    if seconds is None:
        return None
    duration = Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _receipt(receipt: Receipt | None) -> pb.Receipt | None:
    if receipt is None:
        return None
    return pb.Receipt(reference=receipt.reference, details=dict(receipt.details))


def deliver_response(result: DeliveryResult) -> pb.DeliverResponse:
    return pb.DeliverResponse(
        outcome=_OUTCOME[result.outcome],
        attempt=result.attempt,
        attempts_used=result.attempts_used,
        max_attempts=result.max_attempts,
        retry_after=_duration(result.retry_after),
        last_error=result.last_error,
        shared=result.shared,
        final=result.final,
        receipt=_receipt(result.receipt),
    )


def attempt_count_response(state: KeyState) -> pb.AttemptCountResponse:
    history = []
    for entry in state.history:
        start = Timestamp()
        start.FromNanoseconds(round(entry.started_at * 1e9))
        duration = None
        if entry.finished_at is not None:
            duration = _duration(max(0.0, entry.finished_at - entry.started_at))
        history.append(
            pb.Attempt(
                number=entry.number,
                start_time=start,
                duration=duration,
                result=_ATTEMPT_RESULT[entry.result],
                error=entry.error,
            )
        )
    return pb.AttemptCountResponse(
        attempts_used=state.attempts_used,
        max_attempts=state.max_attempts,
        remaining=state.remaining,
        in_flight=state.in_flight,
        succeeded=state.succeeded,
        final=state.final,
        retry_after=_duration(state.retry_after),
        last_error=state.last_error,
        history=history,
        found=state.found,
        cleared=state.cleared,
        circuit=_CIRCUIT[state.circuit],
    )


def clear_response(result: ClearResult) -> pb.ClearResponse:
    return pb.ClearResponse(
        cleared_channels=list(result.cleared), running_channels=list(result.running)
    )
