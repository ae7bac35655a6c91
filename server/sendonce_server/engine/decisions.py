"""The decisions on a key's record, as pure functions.

Every store applies these atomically (under its lock, in one transaction, or ported to a
server-side script), so the promises are written down once:

- reserve: payload mismatch, success, permanent failure, the caller's own reservation again,
  running attempt, budget, backoff, then reserve a new attempt (counted now, with a lease and a
  fencing token).
- complete: record an attempt's result, or release a reservation never sent; a stale token never
  un-does a success.
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
    # Unique per flight, the same on each try of one flight: asked again after a lost reply,
    # the store answers with the reservation it already made instead of a second one.
    reservation: str = ""


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
    # The highest `persisted_attempts` of the callers that joined this attempt.
    persisted_attempts: int = 0
    # With result RELEASED: the reservation given back (its token may never have reached us).
    reservation: str = ""


def new_record(fingerprint: str, max_attempts: int, now: float, fence_floor: int) -> Record:
    """A record whose tokens come after every token handed out for its key before.

    Those of a record forgotten by a forced clear are at most `fence_floor`; those of a record
    that expired are below the clock's microseconds (it expired retention after its last lease).
    """
    fence = max(int(now * 1_000_000), fence_floor)
    return Record(fingerprint=fingerprint, max_attempts=max_attempts, fence=fence)


def count_known_attempts(record: Record, persisted: int, in_flight: int) -> bool:
    """Fold a caller's count into a record whose attempt number `in_flight` it joined.

    Promise 1 counts max(record, persisted_attempts) for every caller, joiners included. A
    count a caller learned from this record is at most the number of the attempt in flight
    (what IN_PROGRESS told it); a higher one comes from elsewhere, so the attempt in flight
    comes on top of it. Returns whether the record changed.
    """
    if persisted <= in_flight or record.attempts > persisted:
        return False
    record.attempts = persisted + 1
    return True


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
    record: Record | None,
    request: ReserveRequest,
    now: float,
    retention: float,
    fence_floor: int,
) -> tuple[Decision, bool]:
    """Decide what a Deliver call may do. Returns the decision and whether the record changed.

    The record is modified in place (a new one is created when None, its tokens above
    `fence_floor`: see `forget`); the store persists ``decision.record`` when the flag is set.
    """
    changed = False
    if record is None:
        record = new_record(request.fingerprint, request.max_attempts, now, fence_floor)
        record.expires_at = now + retention
        changed = True
    elif record.fingerprint != request.fingerprint:
        return Mismatch(), False

    if record.status is Status.DELIVERED:
        return Verdict(Outcome.ALREADY_DELIVERED, record), changed
    if record.status is Status.FAILED_PERMANENT:
        return Verdict(Outcome.FAILED_PERMANENT, record), changed

    lease = record.lease
    if (
        lease is not None
        and request.reservation
        and lease.reservation == request.reservation
        and lease.expires_at > now
    ):
        return Reserved(lease, record), False

    changed |= reap_expired_lease(record, now)
    if record.lease is not None:
        changed |= count_known_attempts(record, request.persisted_attempts, record.lease.attempt)
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
    lease = Lease(record.attempts, record.fence, expires_at, request.reservation)
    record.lease = lease
    record.history.append(AttemptEntry(lease.attempt, now, token=lease.token))
    # A key delivered again after a default clear is a live record once more.
    record.cleared = False
    # Kept for `retention` after the attempt may last report, however short the retention: a
    # record that expired under its lease would let a second attempt start.
    record.expires_at = max(record.expires_at, expires_at + retention)
    return Reserved(lease, record), True


def complete(record: Record | None, completion: Completion, now: float, retention: float) -> bool:
    """Record an attempt's result. Returns whether the record changed.

    With the current token the result decides the key's status. A stale token (the lease
    expired and was reaped, or the key was cleared since) only fills in that attempt's history,
    except that a late success is still recorded: it must stop any further delivery.
    """
    if record is None:
        return False
    lease = record.lease
    if completion.result is AttemptResult.RELEASED:
        ours = lease is not None and lease.reservation == completion.reservation
        return bool(completion.reservation) and ours and release(record)
    current = lease is not None and lease.token == completion.token
    entry = record.entry(completion.attempt, completion.token)
    if entry is not None:
        entry.result = completion.result
        entry.error = completion.error
        entry.finished_at = now
    if current:
        record.lease = None
        count_known_attempts(record, completion.persisted_attempts, completion.attempt)
    succeeded = completion.result is AttemptResult.SUCCEEDED
    if succeeded and entry is not None and record.status is not Status.DELIVERED:
        # A success always wins, even from a stale holder: promise 2 outranks the budget. Only
        # an attempt of this record: one from before a forced clear belongs to a forgotten key.
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
    elif not current and entry is None:
        return False
    if not record.cleared:
        record.expires_at = max(record.expires_at, now + retention)
    return True


def release(record: Record) -> bool:
    """Give back the current reservation: its attempt was never sent, so it is not counted.

    The fencing token stays spent, so a late completion of it changes nothing.
    """
    lease = record.lease
    if lease is None:
        return False
    record.lease = None
    record.history = [e for e in record.history if e.token != lease.token]
    record.attempts -= 1
    return True


def tombstone(record: Record, now: float, grace: float) -> None:
    """Shrink a record to what a late caller or holder needs: count, status, fingerprint, lease.

    A tombstone outlives the lease it keeps: gone earlier, it would let a second attempt start.
    """
    record.cleared = True
    # An abandoned attempt may still report a success: its entry lets that success count.
    keep = (AttemptResult.RUNNING, AttemptResult.SUCCEEDED, AttemptResult.ABANDONED)
    record.history = [entry for entry in record.history if entry.result in keep]
    lease_end = record.lease.expires_at if record.lease is not None else now
    record.expires_at = max(now, lease_end) + grace


def forget(record: Record, fence_floor: int) -> int:
    """A forced clear: the store drops `record` and keeps the returned floor for new records.

    A holder of the forgotten record may still complete: a new record's tokens must never
    repeat one of its tokens, or that completion would land on the new record's attempt.
    """
    return max(fence_floor, record.fence)


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
