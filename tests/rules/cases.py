"""The rules' cases, written once as data and run against every implementation (test_table.py).

A row: the operations that build the record before (each at its time, seconds after T0), the
operation under test, its expected answer, and the expected fields of the record read right
after it (`gone=True`: no record). Adding a case is adding a line. The defaults: lease 10 s,
retention 3600 s, clear grace 60 s, max_attempts 3, fingerprint fp-1 (see ops.py).

Answers: a reserve answers `reserved N` / `running N` (N the attempt), an outcome
(`exhausted`, `retry_later`, `already_delivered`, `failed_permanent`, `circuit_open`) or
`mismatch`; a complete `ok` or `gone`; a clear `cleared <channels>; running <channels>`; a
read `found` or `none`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sendonce_server.engine.decisions import ABANDONED_ERROR

from .ops import Clear, Complete, Count, Op, Read, Release, Reserve

R, C, X = Reserve, Complete, Clear
OK = "succeeded"
FAIL = "failed"
PERMANENT = "failed_permanent"
CLEARED = "cleared hook; running -"


@dataclass(frozen=True)
class Case:
    name: str
    before: tuple[Op, ...]
    then: Op
    answer: str
    after: dict[str, Any] = field(default_factory=dict)
    gone: bool = False


def case(
    name: str,
    before: list[Op],
    then: Op,
    answer: str,
    *,
    gone: bool = False,
    **after: Any,
) -> Case:
    return Case(name, tuple(before), then, answer, after, gone)


# Two attempts used and failed, the third one free (max_attempts 3).
TWO_FAILED: list[Op] = [R(0), C(1), R(2), C(3)]
# Every attempt of the budget used and failed.
SPENT: list[Op] = [*TWO_FAILED, R(4), C(5)]

# fmt: off
# One line a case where it fits: name, before, operation, answer, fields of the record after.
CASES = [
    # Reserve: a new key.
    case("first reserve counts attempt 1 and leases it", [], R(0), "reserved 1",
         attempts=1, status="open", lease=(1, 10.0), expires_at=3610.0,
         history=[(1, 0.0, "running", None, "")]),
    case("persisted attempts below max count first", [], R(0, persisted=2), "reserved 3",
         attempts=3, lease=(3, 10.0)),
    case("persisted == max: no attempt", [], R(0, persisted=3), "exhausted",
         attempts=3, status="exhausted", lease=None, history=[]),
    case("persisted > max: no attempt, the count kept", [], R(0, persisted=5), "exhausted",
         attempts=5, status="exhausted", lease=None),
    case("max_attempts 1: the one attempt", [], R(0, max_attempts=1), "reserved 1",
         attempts=1, max_attempts=1),
    case("a blocked receiver on a new key: no attempt", [], R(0, blocked=True), "circuit_open",
         attempts=0, status="open", lease=None),
    # Reserve: the budget on a record.
    case("the last attempt of the budget", TWO_FAILED, R(4), "reserved 3",
         attempts=3, status="open", lease=(3, 14.0)),
    case("after the last attempt failed: never attempt max+1", SPENT, R(100), "exhausted",
         attempts=3, status="exhausted", lease=None),
    case("persisted == max on an open record", [R(0), C(1)], R(2, persisted=3), "exhausted",
         attempts=3, status="exhausted"),
    case("persisted > max on an open record", [R(0), C(1)], R(2, persisted=7), "exhausted",
         attempts=7, status="exhausted"),
    case("persisted below the record's count changes nothing", TWO_FAILED, R(4, persisted=1),
         "reserved 3", attempts=3),
    case("a lowered max_attempts to the count exhausts", TWO_FAILED, R(4, max_attempts=2),
         "exhausted", attempts=2, max_attempts=2, status="exhausted"),
    case("a lowered max_attempts below the count exhausts", TWO_FAILED, R(4, max_attempts=1),
         "exhausted", attempts=2, max_attempts=1, status="exhausted"),
    case("a raised max_attempts on an open record gives more", TWO_FAILED, R(4, max_attempts=5),
         "reserved 3", max_attempts=5),
    case("a raised max_attempts never reopens an exhausted key", SPENT, R(6, max_attempts=5),
         "exhausted", max_attempts=3, status="exhausted"),
    # Reserve: leases.
    case("a live lease: join it", [R(0)], R(9), "running 1", attempts=1, lease=(1, 10.0)),
    # Reserve: a joiner's count (promise 1 counts every caller's).
    case("a joiner's count at the attempt in flight is that attempt", [R(0)], R(1, persisted=1),
         "running 1", attempts=1),
    case("a joiner's count above the attempt in flight: that attempt on top", [R(0)],
         R(1, persisted=4), "running 1", attempts=5, lease=(1, 10.0), status="open"),
    case("a joiner's count equal to the folded count: on top again",
         [R(0), R(1, persisted=4)], R(2, persisted=5), "running 1", attempts=6),
    case("a joiner's count below the folded count changes nothing",
         [R(0), R(1, persisted=4)], R(2, persisted=4), "running 1", attempts=5),
    case("a folded count exhausts when the attempt fails", [R(0), R(1, persisted=4)], C(2),
         "ok", attempts=5, status="exhausted", lease=None),
    # Reserve: the caller's own reservation, asked again after a lost reply.
    case("a lost reply asked again: the same reservation", [R(0, reservation="a")],
         R(1, reservation="a"), "reserved 1", attempts=1, lease=(1, 10.0),
         history=[(1, 0.0, "running", None, "")]),
    case("another reservation id joins", [R(0, reservation="a")], R(1, reservation="b"),
         "running 1", attempts=1),
    case("asked again at its lease's end: a new attempt", [R(0, reservation="a")],
         R(10, reservation="a"), "reserved 2", attempts=2, lease=(2, 20.0)),
    case("asked again after a success: delivered", [R(0, reservation="a"), C(1, OK)],
         R(2, reservation="a"), "already_delivered", attempts=1),
    case("a lease expired at its end: attempt 2", [R(0)], R(10), "reserved 2",
         attempts=2, lease=(2, 20.0),
         history=[(1, 0.0, "abandoned", None, ABANDONED_ERROR), (2, 10.0, "running", None, "")]),
    case("the last attempt abandoned exhausts", [*TWO_FAILED, R(4)], R(14), "exhausted",
         attempts=3, status="exhausted", lease=None, last_error=ABANDONED_ERROR),
    case("the last attempt abandoned, then a raised max_attempts: still exhausted",
         [*TWO_FAILED, R(4)], R(14, max_attempts=5), "exhausted", attempts=3, max_attempts=3,
         status="exhausted"),
    case("a blocked receiver after the lease ended: the attempt recorded abandoned", [R(0)],
         R(10, blocked=True), "circuit_open", attempts=1, lease=None,
         last_error=ABANDONED_ERROR, history=[(1, 0.0, "abandoned", None, ABANDONED_ERROR)]),
    case("an abandoned attempt with budget left: retry at once", [R(0), C(1, delay=50)], R(51),
         "reserved 2"),
    case("the last attempt abandoned, then its late failure", [*TWO_FAILED, R(4), R(14)],
         C(15), "ok", status="exhausted", last_error=ABANDONED_ERROR),
    case("the last attempt abandoned, then its late success", [*TWO_FAILED, R(4), R(14)],
         C(15, OK), "ok", status="delivered", receipt=("HTTP 200", {"id": "r-1"})),
    # Reserve: backoff, breaker, payload, final statuses.
    case("before the backoff ends: retry later", [R(0), C(1, delay=20)], R(20.5), "retry_later",
         attempts=1, next_attempt_at=21.0),
    case("at the backoff's end: the next attempt", [R(0), C(1, delay=20)], R(21), "reserved 2"),
    case("a blocked receiver: no attempt", [R(0), C(1)], R(2, blocked=True), "circuit_open",
         attempts=1, lease=None),
    case("blocked and exhausted: exhausted", SPENT, R(6, blocked=True), "exhausted"),
    case("blocked and backing off: retry later", [R(0), C(1, delay=20)], R(2, blocked=True),
         "retry_later"),
    case("another payload: mismatch, nothing changes", [R(0)], R(1, fingerprint="fp-2"),
         "mismatch", attempts=1, lease=(1, 10.0)),
    case("another payload after success: mismatch", [R(0), C(1, OK)], R(2, fingerprint="fp-2"),
         "mismatch"),
    case("after a success: already delivered", [R(0), C(1, OK)], R(2), "already_delivered",
         attempts=1, status="delivered"),
    case("after success the budget is not consulted", [R(0), C(1, OK)], R(2, persisted=9),
         "already_delivered", attempts=1),
    case("after a permanent failure: final", [R(0), C(1, PERMANENT)], R(2), "failed_permanent",
         status="failed_permanent", last_error="HTTP 400"),
    # Complete.
    case("a success delivers", [R(0)], C(1, OK), "ok", status="delivered", lease=None,
         receipt=("HTTP 200", {"id": "r-1"}), expires_at=3610.0,
         history=[(1, 0.0, "succeeded", 1.0, "")]),
    case("a retryable failure sets the backoff", [R(0)], C(1, delay=30), "ok",
         status="open", lease=None, next_attempt_at=31.0, last_error="HTTP 503"),
    case("a permanent failure is final", [R(0)], C(1, PERMANENT), "ok",
         status="failed_permanent", lease=None),
    case("the last attempt failing exhausts", [*TWO_FAILED, R(4)], C(5), "ok",
         attempts=3, status="exhausted", lease=None, last_error="HTTP 503"),
    case("the last attempt failing permanently", [*TWO_FAILED, R(4)], C(5, PERMANENT), "ok",
         status="failed_permanent"),
    case("the last attempt succeeding", [*TWO_FAILED, R(4)], C(5, OK), "ok",
         attempts=3, status="delivered"),
    case("a completion with its joiners' count: the attempt on top", [R(0)], C(1, persisted=4),
         "ok", attempts=5, status="exhausted", lease=None),
    case("a completion with its joiners' count at the attempt", [R(0)], C(1, persisted=1),
         "ok", attempts=1, status="open"),
    case("a completion's joiners' count below the folded count", [R(0), R(1, persisted=4)],
         C(2, persisted=4), "ok", attempts=5),
    case("a stale completion's joiners' count is not taken", [R(0), R(11)],
         C(12, of=0, persisted=5), "ok", attempts=2, lease=(2, 21.0)),
    case("a stale failure after a success changes no status", [R(0), C(1, OK)], C(2, of=0),
         "ok", status="delivered"),
    case("a stale holder's failure leaves the new lease", [R(0), R(11)], C(12, delay=99, of=0),
         "ok", status="open", lease=(2, 21.0), next_attempt_at=0.0),
    case("a stale holder's success still delivers", [R(0), R(11)], C(12, OK, of=0), "ok",
         status="delivered"),
    case("a success after a Clear lands on the tombstone", [R(0), X(1)], C(2, OK), "ok",
         status="delivered", cleared=True, expires_at=70.0),
    case("a failure after a Clear keeps the tombstone", [R(0), X(1)], C(2, delay=5), "ok",
         status="open", cleared=True, expires_at=70.0, next_attempt_at=7.0),
    case("a completion after a forced Clear: gone", [R(0), X(1, force=True)], C(2, OK), "gone",
         gone=True),
    case("fencing: an old failure after a forced Clear", [R(0), X(1, force=True), R(2)],
         C(3, of=0), "ok", attempts=1, status="open", lease=(1, 12.0),
         history=[(1, 2.0, "running", None, "")]),
    case("fencing: an old success after a forced Clear does not deliver the new key",
         [R(0), X(1, force=True), R(2)], C(3, OK, of=0), "ok", status="open",
         lease=(1, 12.0)),
    # The new record's first token in the microsecond of the Clear: never the cleared one's.
    case("fencing: an old failure in the instant of a forced Clear",
         [R(0), X(0, force=True), R(0)], C(1, of=0), "ok", status="open", lease=(1, 10.0),
         history=[(1, 0.0, "running", None, "")]),
    case("fencing: an old success in the instant of a forced Clear",
         [R(0), X(0, force=True), R(0)], C(1, OK, of=0), "ok", status="open",
         lease=(1, 10.0)),
    case("a forgotten attempt's late completion changes nothing, not even the expiry",
         [R(0), X(1, force=True), R(2)], C(13, of=0), "ok", expires_at=3612.0, lease=(1, 12.0),
         history=[(1, 2.0, "running", None, "")]),
    # A holder paused past the record's retention: its token is not the next record's (on
    # Redis while the key's counter lives, the retention after its last lease: the runner
    # expires records, never counters).
    case("fencing: an expired record's late success does not deliver the next record",
         [R(0), R(3611)], C(3612, OK, of=0), "ok", status="open", lease=(1, 3621.0),
         history=[(1, 3611.0, "running", None, "")]),
    case("a completion after the record expired: gone", [R(0), C(1)], C(3611, OK, of=0), "gone",
         gone=True),
    # Release: a reservation never sent is given back, by its id.
    case("a reservation given back is not counted", [R(0, reservation="a")],
         Release(1, "a"), "ok", attempts=0, lease=None, history=[], status="open"),
    case("a reservation given back keeps the attempts before",
         [*TWO_FAILED, R(4, reservation="a")], Release(5, "a"), "ok", attempts=2, lease=None,
         history=[(1, 0.0, "failed", 1.0, "HTTP 503"), (2, 2.0, "failed", 3.0, "HTTP 503")]),
    case("another id gives nothing back", [R(0, reservation="a")], Release(1, "b"), "ok",
         attempts=1, lease=(1, 10.0)),
    case("no id gives nothing back", [R(0)], Release(1, ""), "ok", attempts=1, lease=(1, 10.0)),
    case("a completed reservation is not given back", [R(0, reservation="a"), C(1)],
         Release(2, "a"), "ok", attempts=1, lease=None, last_error="HTTP 503"),
    case("given back on an unknown key: gone", [], Release(0, "a"), "gone", gone=True),
    case("after a reservation given back: the same attempt again",
         [R(0, reservation="a"), Release(1, "a")], R(2), "reserved 1", attempts=1,
         lease=(1, 12.0)),
    case("a given-back token stays spent: its late success delivers nothing",
         [R(0, reservation="a"), Release(1, "a"), R(2)], C(3, OK, of=0), "ok",
         status="open", lease=(1, 12.0), history=[(1, 2.0, "running", None, "")]),
    # Clear.
    case("clear keeps a tombstone for the grace", [R(0), C(1, OK)], X(2), CLEARED,
         cleared=True, status="delivered", expires_at=62.0,
         history=[(1, 0.0, "succeeded", 1.0, "")]),
    case("clear keeps the count and drops failed history", [R(0), C(1)], X(2), CLEARED,
         attempts=1, cleared=True, history=[]),
    case("clear reports a running attempt", [R(0)], X(1), "cleared hook; running hook",
         history=[(1, 0.0, "running", None, "")], lease=(1, 10.0)),
    case("clear after the lease expired: not running", [R(0)], X(10), CLEARED),
    case("forced clear forgets the key", [R(0), C(1)], X(2, force=True), CLEARED, gone=True),
    case("clear of an unknown key", [], X(0), "cleared -; running -", gone=True),
    case("clear of an expired record", [R(0), C(1)], X(3611), "cleared -; running -",
         gone=True),
    case("a tombstone's late caller is answered", [R(0), C(1, OK), X(2)], R(61),
         "already_delivered", cleared=True),
    case("a reserve after clear counts on", [R(0), C(1), X(2)], R(3), "reserved 2",
         attempts=2, cleared=False, expires_at=3613.0),
    case("a tombstone expiring forgets the key", [R(0), C(1, OK), X(2)], Read(62), "none",
         gone=True),
    case("after a tombstone expired: attempt 1 again", [R(0), C(1, OK), X(2)], R(62),
         "reserved 1", attempts=1, status="open", cleared=False),
    case("after a forced clear: attempt 1 again", [R(0), C(1), X(2, force=True)], R(3),
         "reserved 1", attempts=1),
    # Count: the AttemptCount view of the record, as read from each store.
    case("count of an unknown key: the caller's count", [], Count(0, persisted=2),
         "unknown 2/3", gone=True),
    case("count of an unknown key at the budget: final", [], Count(0, persisted=3),
         "unknown 3/3; final", gone=True),
    case("count during the lease: in flight", [R(0)], Count(9.5),
         "found 1/3; in flight; history running"),
    case("count at the lease's end: abandoned", [R(0)], Count(10),
         "found 1/3; error abandoned; history abandoned"),
    case("count after a failure, then a running attempt", [R(0), C(1), R(2)], Count(3),
         "found 2/3; in flight; error HTTP 503; history failed,running"),
    case("count after a failure, then an abandoned attempt", [R(0), C(1), R(2)], Count(12),
         "found 2/3; error abandoned; history failed,abandoned"),
    case("count takes the caller's higher count", [R(0), C(1)], Count(2, persisted=2),
         "found 2/3; error HTTP 503; history failed"),
    case("count with the caller's count at the budget: final", [R(0), C(1)],
         Count(2, persisted=3), "found 3/3; final; error HTTP 503; history failed"),
    case("count while the last attempt runs: not final", [*TWO_FAILED, R(4)], Count(5),
         "found 3/3; in flight; error HTTP 503; history failed,failed,running"),
    case("count after the last attempt was abandoned: final", [*TWO_FAILED, R(4)], Count(14),
         "found 3/3; final; error abandoned; history failed,failed,abandoned"),
    case("count during the backoff: retry after", [R(0), C(1, delay=20)], Count(5),
         "found 1/3; retry after 16; error HTTP 503; history failed"),
    case("count at the backoff's end: no wait", [R(0), C(1, delay=20)], Count(21),
         "found 1/3; error HTTP 503; history failed"),
    case("count of an exhausted key: final, no wait", [*TWO_FAILED, R(4), C(5, delay=20)],
         Count(6), "found 3/3; final; error HTTP 503; history failed,failed,failed"),
    case("count of a delivered key", [R(0), C(1, OK)], Count(2),
         "found 1/3; delivered; final; history succeeded"),
    case("count of a tombstone", [R(0), C(1, OK), X(2)], Count(3),
         "found 1/3; delivered; final; cleared; history succeeded"),
    case("count of a key delivered by a late success while a lease ran out",
         [R(0), C(1), R(2), C(3, OK, of=0)], Count(12),
         "found 2/3; delivered; final; error HTTP 503; history succeeded,abandoned"),
    # Retention.
    # The retention runs from the lease's end (10 s), so a short one never expires a lease.
    case("a record lives its retention", [R(0), C(1)], Read(3609.5), "found"),
    case("a record expires after its retention", [R(0), C(1)], Read(3611), "none", gone=True),
    case("after retention: attempt 1 again", [R(0), C(1)], R(3611), "reserved 1", attempts=1),
]
# fmt: on
