"""The answers to Deliver, each built from one record so that every field tells one state."""

from __future__ import annotations

from .model import AttemptResult, DeliveryResult, Lease, Outcome, Record, Status

# What a finished attempt answers, by the status of the key's record after it. The status, not
# the attempt's own result: a caller that waited while a later attempt succeeded is told the
# key is delivered, never that the attempt it waited for failed.
_AFTER_ATTEMPT = {
    Status.DELIVERED: Outcome.DELIVERED,
    Status.FAILED_PERMANENT: Outcome.FAILED_PERMANENT,
    Status.EXHAUSTED: Outcome.EXHAUSTED,
    Status.OPEN: Outcome.FAILED,
}


def answer(
    record: Record,
    now: float,
    outcome: Outcome | None = None,
    *,
    shared: bool = False,
    idempotency_key: str = "",
) -> DeliveryResult:
    """The answer that `record` gives: `outcome` for a verdict, else that of its last attempt.

    `attempt` is the attempt the answer refers to: the one that succeeded for a delivered key,
    else the last one the record holds. When it holds none (a count from `persisted_attempts`,
    or a tombstone), the count stands in, capped at the budget: attempts made elsewhere have no
    number here, and no answer names an attempt beyond the budget that sendonce never made.
    """
    if outcome is None:
        outcome = _AFTER_ATTEMPT[record.status]
    if record.history:
        attempt = record.history[-1].number
    else:
        attempt = min(record.attempts, record.max_attempts)
    delivered = record.status is Status.DELIVERED
    if delivered:
        attempt = next(
            (e.number for e in record.history if e.result is AttemptResult.SUCCEEDED), attempt
        )
    retry_after = None
    if record.status is Status.OPEN and record.next_attempt_at > now:
        retry_after = record.next_attempt_at - now
    return DeliveryResult(
        outcome=outcome,
        attempt=attempt,
        attempts_used=record.attempts,
        max_attempts=record.max_attempts,
        retry_after=retry_after,
        # A delivered key has no error to act on, whatever an earlier attempt met.
        last_error="" if delivered else record.last_error,
        shared=shared,
        final=record.final,
        receipt=record.receipt if delivered else None,
        idempotency_key=idempotency_key,
    )


def in_progress(
    lease: Lease | None,
    attempts_used: int,
    max_attempts: int,
    now: float,
    longest_wait: float,
    idempotency_key: str = "",
) -> DeliveryResult:
    """The answer to a caller whose deadline came while an attempt was still running."""
    retry_after = longest_wait
    if lease is not None:
        retry_after = max(0.0, min(retry_after, lease.expires_at - now))
    return DeliveryResult(
        outcome=Outcome.IN_PROGRESS,
        attempt=lease.attempt if lease else 0,
        attempts_used=attempts_used,
        max_attempts=max_attempts,
        retry_after=retry_after,
        shared=True,
        idempotency_key=idempotency_key,
    )
