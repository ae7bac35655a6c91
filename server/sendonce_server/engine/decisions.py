"""The decisions on a key's record, as pure functions.

Every store applies these atomically (under its lock, in one transaction, or ported to a
server-side script), so the promises are written down once:

- reserve: payload mismatch, success, permanent failure, running attempt, budget, backoff, then
  reserve a new attempt (counted now, with a lease and a fencing token).
- complete: record an attempt's result; a stale token never un-does a success.
- clear: keep a tombstone or forget the key.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .model import (
    AttemptEntry,
    AttemptResult,
    KeyState,
    Lease,
    Outcome,
    Receipt,
    Record,
    Status,
)

ABANDONED_ERROR = "lease expired before the attempt reported; its outcome is unknown"


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    fingerprint: str
    max_attempts: int
    persisted_attempts: int
    lease_seconds: float
    # The receiver's circuit breaker refuses a new attempt now (nothing else is affected).
    blocked: bool = False


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The key was first delivered with another payload."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """No attempt now: ALREADY_DELIVERED, FAILED_PERMANENT, EXHAUSTED or RETRY_LATER."""

    outcome: Outcome
    record: Record


@dataclass(frozen=True, slots=True)
class Running:
    """Another holder's attempt is in flight; join it by waiting for its result."""

    lease: Lease
    record: Record


@dataclass(frozen=True, slots=True)
class Reserved:
    """An attempt was reserved for the caller, who must send and then complete it."""

    lease: Lease
    record: Record


Decision = Mismatch | Verdict | Running | Reserved


@dataclass(frozen=True, slots=True)
class Completion:
    attempt: int
    token: int
    result: AttemptResult
    error: str = ""
    receipt: Receipt | None = None
    # Seconds until the next attempt may start, if this one failed retryably. Relative, so a
    # store that keeps time itself (Redis) measures it with its own clock.
    retry_delay: float = 0.0


def new_record(fingerprint: str, max_attempts: int, now: float) -> Record:
    return Record(fingerprint=fingerprint, max_attempts=max_attempts, fence=int(now * 1_000_000))


def reap_expired_lease(record: Record, now: float) -> bool:
    """An expired lease means the holder crashed or hung: its attempt stays counted.

    The next attempt may start at once: the lease itself already spaced the attempts.
    """
    lease = record.lease
    if lease is None or lease.expires_at > now:
        return False
    record.lease = None
    entry = record.entry(lease.attempt, lease.token)
    if entry is not None and entry.result is AttemptResult.RUNNING:
        entry.result = AttemptResult.ABANDONED
        entry.error = ABANDONED_ERROR
    if record.status is Status.OPEN:
        record.last_error = ABANDONED_ERROR
        if record.attempts >= record.max_attempts:
            record.status = Status.EXHAUSTED
    return True


def decide(
    record: Record | None, request: ReserveRequest, now: float, retention: float
) -> tuple[Decision, bool]:
    """Decide what a Deliver call may do. Returns the decision and whether the record changed.

    The record is modified in place (a new one is created when None); the store persists
    ``decision.record`` when the flag is set.
    """
    changed = False
    if record is None:
        record = new_record(request.fingerprint, request.max_attempts, now)
        record.expires_at = now + retention
        changed = True
    elif record.fingerprint != request.fingerprint:
        return Mismatch(), False

    if record.status is Status.DELIVERED:
        return Verdict(Outcome.ALREADY_DELIVERED, record), changed
    if record.status is Status.FAILED_PERMANENT:
        return Verdict(Outcome.FAILED_PERMANENT, record), changed

    changed |= reap_expired_lease(record, now)
    if record.lease is not None:
        return Running(record.lease, record), changed

    if record.status is Status.OPEN:
        used = max(record.attempts, request.persisted_attempts)
        if used != record.attempts or record.max_attempts != request.max_attempts:
            record.attempts = used
            record.max_attempts = request.max_attempts
            changed = True
        if used >= record.max_attempts:
            record.status = Status.EXHAUSTED
            changed = True
    if record.status is Status.EXHAUSTED:
        return Verdict(Outcome.EXHAUSTED, record), changed

    if now < record.next_attempt_at:
        return Verdict(Outcome.RETRY_LATER, record), changed
    if request.blocked:
        return Verdict(Outcome.CIRCUIT_OPEN, record), changed

    record.attempts += 1
    record.fence += 1
    expires_at = now + request.lease_seconds
    lease = Lease(attempt=record.attempts, token=record.fence, expires_at=expires_at)
    record.lease = lease
    record.history.append(AttemptEntry(lease.attempt, now, token=lease.token))
    # A key delivered again after a default clear is a live record once more.
    record.cleared = False
    record.expires_at = max(record.expires_at, now + retention)
    return Reserved(lease, record), True


def complete(record: Record | None, completion: Completion, now: float, retention: float) -> bool:
    """Record an attempt's result. Returns whether the record changed.

    With the current token the result decides the key's status. A stale token (the lease
    expired and was reaped, or the key was cleared since) only fills in that attempt's history,
    except that a late success is still recorded: it must stop any further delivery.
    """
    if record is None:
        return False
    entry = record.entry(completion.attempt, completion.token)
    if entry is not None:
        entry.result = completion.result
        entry.error = completion.error
        entry.finished_at = now
    current = record.lease is not None and record.lease.token == completion.token
    if current:
        record.lease = None
    succeeded = completion.result is AttemptResult.SUCCEEDED
    if succeeded and record.status is not Status.DELIVERED:
        # A success always wins, even from a stale holder: promise 2 outranks the budget.
        record.status = Status.DELIVERED
        record.receipt = completion.receipt
    elif current and record.status is Status.OPEN:
        record.last_error = completion.error
        if completion.result is AttemptResult.FAILED_PERMANENT:
            record.status = Status.FAILED_PERMANENT
        else:
            record.next_attempt_at = now + completion.retry_delay
            if record.attempts >= record.max_attempts:
                record.status = Status.EXHAUSTED
    elif not current and entry is None and not succeeded:
        return False
    if not record.cleared:
        record.expires_at = max(record.expires_at, now + retention)
    return True


def tombstone(record: Record, now: float, grace: float) -> None:
    """Shrink a record to what a late caller needs: attempts used, status, fingerprint, lease."""
    record.cleared = True
    keep = (AttemptResult.RUNNING, AttemptResult.SUCCEEDED)
    record.history = [entry for entry in record.history if entry.result in keep]
    record.expires_at = now + grace


def state_of(
    record: Record | None, persisted_attempts: int, max_attempts: int, now: float
) -> KeyState:
    """The read view of a key, without changing the record (an expired lease shows abandoned)."""
    if record is None:
        used = persisted_attempts
        return KeyState(
            found=False, attempts_used=used, max_attempts=max_attempts, final=used >= max_attempts
        )
    lease = record.lease
    live = lease is not None and lease.expires_at > now
    history = tuple(
        AttemptEntry(
            e.number, e.started_at, AttemptResult.ABANDONED, None, ABANDONED_ERROR, e.token
        )
        if e.result is AttemptResult.RUNNING and not live
        else replace(e)
        for e in record.history
    )
    used = max(record.attempts, persisted_attempts)
    final = record.final or (not live and used >= record.max_attempts)
    retry_after = None
    if not final and not live and record.next_attempt_at > now:
        retry_after = record.next_attempt_at - now
    last_error = record.last_error
    if lease is not None and not live and record.status is Status.OPEN:
        last_error = ABANDONED_ERROR
    return KeyState(
        found=True,
        attempts_used=used,
        max_attempts=record.max_attempts,
        in_flight=live,
        succeeded=record.status is Status.DELIVERED,
        final=final,
        retry_after=retry_after,
        last_error=last_error,
        history=history,
        cleared=record.cleared,
    )
