"""The operations the rule tables and the differential test apply, and how a store applies them.

Every implementation of the rules is reached through the `Store` port: the pure model
(tests/rules/model.py), the memory and SQLite stores (the Python rules) and the Redis store (the
Lua script) on a single Redis, a Cluster and a Sentinel. A test's clock is virtual: times are
seconds after T0, and the Redis store takes them as its `now` (`server_time=False`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sendonce_server.engine import decisions
from sendonce_server.engine.decisions import (
    ABANDONED_ERROR,
    Completion,
    Decision,
    Mismatch,
    Reserved,
    ReserveRequest,
    Running,
    Verdict,
)
from sendonce_server.engine.model import AttemptResult, Key, KeyState, Receipt, Record
from sendonce_server.engine.ports import Store
from sendonce_server.store import codec
from sendonce_server.store.redis import RedisStore

T0 = 1_800_000_000.0
KEY = Key("uid-1", "hook")
LEASE = 10.0
RETENTION = 3_600.0
GRACE = 60.0


@dataclass(frozen=True)
class Reserve:
    at: float
    persisted: int = 0
    max_attempts: int = 3
    fingerprint: str = "fp-1"
    blocked: bool = False
    reservation: str = ""  # the flight's id; asked again after a lost reply, the same


@dataclass(frozen=True)
class Complete:
    """The result of a reservation: `of` indexes the run's reservations (-1: the last)."""

    at: float
    result: str = "failed"  # an AttemptResult value
    of: int = -1
    delay: float = 0.0
    persisted: int = 0  # the highest count of the callers that joined the attempt


@dataclass(frozen=True)
class Release:
    """Give back a reservation never sent, by its id alone: its reply may never have come."""

    at: float
    reservation: str


@dataclass(frozen=True)
class Clear:
    at: float
    force: bool = False


@dataclass(frozen=True)
class Read:
    at: float


@dataclass(frozen=True)
class Count:
    """The AttemptCount view (decisions.state_of) of the record the store holds."""

    at: float
    persisted: int = 0
    max_attempts: int = 3


Op = Reserve | Complete | Release | Clear | Read | Count


@dataclass
class Run:
    """What one sequence of operations has reserved so far (completions refer to it)."""

    reserved: list[Reserved] = field(default_factory=list)


def describe(decision: Decision) -> str:
    """A decision as the tables write it: `reserved 2`, `running 1`, `exhausted`, `mismatch`."""
    if isinstance(decision, Mismatch):
        return "mismatch"
    if isinstance(decision, Reserved | Running):
        kind = "reserved" if isinstance(decision, Reserved) else "running"
        return f"{kind} {decision.lease.attempt}"
    assert isinstance(decision, Verdict)
    return decision.outcome.value


def completion(reserved: Reserved, op: Complete) -> Completion:
    result = AttemptResult(op.result)
    succeeded = result is AttemptResult.SUCCEEDED
    return Completion(
        attempt=reserved.lease.attempt,
        token=reserved.lease.token,
        result=result,
        error="" if succeeded else f"HTTP {400 if op.result == 'failed_permanent' else 503}",
        receipt=Receipt("HTTP 200", {"id": "r-1"}) if succeeded else None,
        retry_delay=op.delay,
        persisted_attempts=op.persisted,
    )


async def apply(store: Store, run: Run, op: Op, key: Key = KEY) -> str:
    """Apply one operation at its time; returns its answer as the tables write it."""
    now = T0 + op.at
    await expire_by_ttl(store, key, now)
    if isinstance(op, Reserve):
        request = ReserveRequest(
            fingerprint=op.fingerprint,
            max_attempts=op.max_attempts,
            persisted_attempts=op.persisted,
            lease_seconds=LEASE,
            blocked=op.blocked,
            reservation=op.reservation,
        )
        decision = await store.reserve(key, request, now)
        if isinstance(decision, Reserved):
            run.reserved.append(decision)
        return describe(decision)
    if isinstance(op, Complete | Release):
        if isinstance(op, Complete):
            done = completion(run.reserved[op.of], op)
        else:
            done = Completion(0, 0, AttemptResult.RELEASED, reservation=op.reservation)
        record = await store.complete(key, done, now)
        return "gone" if record is None else "ok"
    if isinstance(op, Clear):
        cleared, running = await store.clear(key.uid, [], op.force, now)
        return f"cleared {','.join(cleared) or '-'}; running {','.join(running) or '-'}"
    if isinstance(op, Count):
        record = await store.read(key, now)
        return describe_state(decisions.state_of(record, op.persisted, op.max_attempts, now))
    return "none" if await store.read(key, now) is None else "found"


def describe_state(state: KeyState) -> str:
    """A read view as the tables write it: `found 1/3; in flight; history running`."""
    parts = [f"{'found' if state.found else 'unknown'} {state.attempts_used}/{state.max_attempts}"]
    flags = {
        "in flight": state.in_flight,
        "delivered": state.succeeded,
        "final": state.final,
        "cleared": state.cleared,
    }
    parts += [flag for flag, on in flags.items() if on]
    if state.retry_after is not None:
        parts.append(f"retry after {state.retry_after:g}")
    if state.last_error:
        abandoned = state.last_error == ABANDONED_ERROR
        parts.append(f"error {'abandoned' if abandoned else state.last_error}")
    if state.history:
        parts.append("history " + ",".join(e.result.value for e in state.history))
    return "; ".join(parts)


async def expire_by_ttl(store: Store, key: Key, now: float) -> None:
    """Drop what Redis's TTL would have dropped by the virtual `now`.

    The script trusts Redis to expire a record at its `exp` (it sets the TTL so), and reads
    what GET returns. Under a test clock that runs ahead of Redis's, the TTL has not fired
    yet: the runner fires it, so the script sees what it sees in production.
    """
    if not isinstance(store, RedisStore):
        return
    record_key, _, index_key = store._keys(key)
    raw = await store._redis.get(record_key)
    if raw is not None and record_of(raw).expires_at <= now:
        await store._redis.delete(record_key)
        await store._redis.srem(index_key, key.channel)


def record_of(raw: bytes | str) -> Record:
    return codec.loads(raw.decode() if isinstance(raw, bytes) else raw)


def view(record: Record | None) -> dict[str, Any] | None:
    """The fields of a record the rules decide, times relative to T0; tokens left out.

    Tokens differ by design (the Python stores derive the first from the clock, Redis counts
    with INCR): the tables check them by their effect (a stale completion changes nothing).
    """
    if record is None:
        return None
    lease = record.lease
    receipt = record.receipt
    return {
        "attempts": record.attempts,
        "max_attempts": record.max_attempts,
        "status": record.status.value,
        "lease": None if lease is None else (lease.attempt, lease.expires_at - T0),
        "next_attempt_at": max(0.0, record.next_attempt_at - T0),
        "last_error": record.last_error,
        "receipt": None if receipt is None else (receipt.reference, dict(receipt.details)),
        "history": [
            (
                e.number,
                e.started_at - T0,
                e.result.value,
                None if e.finished_at is None else e.finished_at - T0,
                e.error,
            )
            for e in record.history
        ],
        "cleared": record.cleared,
        "expires_at": record.expires_at - T0,
    }
