"""The contract every store keeps. Parametrised over the stores, so a new one proves itself here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from sendonce_server.engine.decisions import (
    ABANDONED_ERROR,
    Completion,
    Mismatch,
    Reserved,
    ReserveRequest,
    Running,
    Verdict,
)
from sendonce_server.engine.model import AttemptResult, Key, Outcome, Receipt, Status
from sendonce_server.engine.ports import Store
from tests.rules.stores import STORES, make_store

T0 = 1_800_000_000.0
KEY = Key("uid-1", "hook")
RETENTION = 3_600.0
GRACE = 60.0
LEASE = 10.0


def request(
    persisted: int = 0, max_attempts: int = 3, fingerprint: str = "fp-1", reservation: str = ""
) -> ReserveRequest:
    return ReserveRequest(
        fingerprint=fingerprint,
        max_attempts=max_attempts,
        persisted_attempts=persisted,
        lease_seconds=LEASE,
        reservation=reservation,
    )


@pytest_asyncio.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    store = make_store(request.param, request, tmp_path)
    yield store
    await store.close()


async def reserve(store: Store, now: float = T0, persisted: int = 0) -> Reserved:
    decision = await store.reserve(KEY, request(persisted), now)
    assert isinstance(decision, Reserved), decision
    return decision


def done(reserved: Reserved, result: AttemptResult, delay: float = 0.0) -> Completion:
    return Completion(
        attempt=reserved.lease.attempt,
        token=reserved.lease.token,
        result=result,
        error="" if result is AttemptResult.SUCCEEDED else "HTTP 500",
        receipt=Receipt("HTTP 200") if result is AttemptResult.SUCCEEDED else None,
        retry_delay=delay,
    )


async def test_first_reserve_counts_the_attempt_and_leases_it(store: Store) -> None:
    reserved = await reserve(store)
    record = await store.read(KEY, T0)

    assert (reserved.lease.attempt, reserved.lease.expires_at) == (1, T0 + LEASE)
    assert record is not None
    assert (record.attempts, record.status, record.lease) == (1, Status.OPEN, reserved.lease)
    assert [(e.number, e.result) for e in record.history] == [(1, AttemptResult.RUNNING)]


async def test_a_live_lease_makes_others_join(store: Store) -> None:
    reserved = await reserve(store)
    second = await store.reserve(KEY, request(), T0 + 1)

    assert isinstance(second, Running)
    assert second.lease == reserved.lease


async def test_success_is_final_and_never_undone(store: Store) -> None:
    reserved = await reserve(store)
    await store.complete(KEY, done(reserved, AttemptResult.SUCCEEDED), T0 + 1)
    stale_failure = done(reserved, AttemptResult.FAILED)
    await store.complete(KEY, stale_failure, T0 + 2)
    again = await store.reserve(KEY, request(), T0 + 3)

    assert isinstance(again, Verdict)
    assert again.outcome is Outcome.ALREADY_DELIVERED
    assert again.record.receipt == Receipt("HTTP 200")


async def test_a_stale_holder_cannot_change_the_status_but_its_late_success_counts(
    store: Store,
) -> None:
    first = await reserve(store)
    second = await reserve(store, now=T0 + LEASE + 1)  # the first lease expired
    await store.complete(KEY, done(first, AttemptResult.FAILED, delay=999), T0 + 12)
    record = await store.read(KEY, T0 + 12)
    assert record is not None
    assert (record.status, record.lease, record.next_attempt_at) == (
        Status.OPEN,
        second.lease,
        0.0,
    )

    await store.complete(KEY, done(first, AttemptResult.SUCCEEDED), T0 + 13)
    await store.complete(KEY, done(second, AttemptResult.FAILED), T0 + 14)
    record = await store.read(KEY, T0 + 14)
    assert record is not None
    assert record.status is Status.DELIVERED


async def test_tokens_increase_even_across_a_forced_clear(store: Store) -> None:
    first = await reserve(store)
    await store.clear(KEY.uid, [], True, T0 + 1)
    second = await reserve(store, now=T0 + 2)

    assert second.lease.token > first.lease.token
    assert second.lease.attempt == 1


async def test_payload_mismatch(store: Store) -> None:
    await reserve(store)
    decision = await store.reserve(KEY, request(fingerprint="fp-2"), T0 + 1)
    assert isinstance(decision, Mismatch)


async def test_budget_backoff_and_persisted_attempts(store: Store) -> None:
    first = await reserve(store, persisted=1)
    assert first.lease.attempt == 2
    await store.complete(KEY, done(first, AttemptResult.FAILED, delay=29), T0 + 1)

    early = await store.reserve(KEY, request(), T0 + 29)
    assert isinstance(early, Verdict)
    assert early.outcome is Outcome.RETRY_LATER
    last = await reserve(store, now=T0 + 30)
    assert last.lease.attempt == 3
    await store.complete(KEY, done(last, AttemptResult.FAILED, delay=60), T0 + 31)
    spent = await store.reserve(KEY, request(), T0 + 1_000)

    assert isinstance(spent, Verdict)
    assert (spent.outcome, spent.record.attempts) == (Outcome.EXHAUSTED, 3)


async def test_a_permanent_failure_is_final(store: Store) -> None:
    reserved = await reserve(store)
    await store.complete(KEY, done(reserved, AttemptResult.FAILED_PERMANENT), T0 + 1)
    again = await store.reserve(KEY, request(), T0 + 2)
    assert isinstance(again, Verdict)
    assert again.outcome is Outcome.FAILED_PERMANENT


async def test_an_expired_lease_stays_counted(store: Store) -> None:
    await reserve(store)
    later = T0 + LEASE + 1
    retried = await reserve(store, now=later)
    record = await store.read(KEY, later)

    assert retried.lease.attempt == 2
    assert record is not None
    assert [(e.number, e.result) for e in record.history] == [
        (1, AttemptResult.ABANDONED),
        (2, AttemptResult.RUNNING),
    ]
    assert record.history[0].error == ABANDONED_ERROR


async def test_default_clear_keeps_a_tombstone_until_the_grace_ends(store: Store) -> None:
    reserved = await reserve(store)
    await store.complete(KEY, done(reserved, AttemptResult.SUCCEEDED), T0 + 1)
    cleared, running = await store.clear(KEY.uid, [], False, T0 + 2)

    late = await store.reserve(KEY, request(), T0 + 3)
    assert (cleared, running) == (["hook"], [])
    assert isinstance(late, Verdict)
    assert late.outcome is Outcome.ALREADY_DELIVERED
    assert late.record.cleared
    assert await store.read(KEY, T0 + 2 + GRACE + 1) is None


async def test_clear_reports_running_attempts_and_their_result_still_lands(store: Store) -> None:
    reserved = await reserve(store)
    other = Key(KEY.uid, "mail")
    await store.reserve(other, request(), T0)

    cleared, running = await store.clear(KEY.uid, ["hook"], False, T0 + 1)
    await store.complete(KEY, done(reserved, AttemptResult.SUCCEEDED), T0 + 2)
    record = await store.read(KEY, T0 + 3)

    assert (cleared, running) == (["hook"], ["hook"])
    assert record is not None
    assert record.status is Status.DELIVERED
    assert await store.read(other, T0 + 3) is not None


async def test_records_expire_after_the_retention_from_the_lease_end(store: Store) -> None:
    await reserve(store)
    assert await store.read(KEY, T0 + LEASE + RETENTION - 1) is not None
    assert await store.read(KEY, T0 + LEASE + RETENTION + 1) is None
    assert await store.read(Key("never", "seen"), T0) is None


async def test_watch_sees_a_completion(store: Store) -> None:
    reserved = await reserve(store)
    async with store.watch(KEY) as changed:
        await store.complete(KEY, done(reserved, AttemptResult.SUCCEEDED), T0 + 1)
        await asyncio.wait_for(changed.wait(), timeout=5)


async def test_a_completion_from_before_a_forced_clear_leaves_the_new_attempt_alone(
    store: Store,
) -> None:
    old = await reserve(store)
    await store.clear(KEY.uid, [], True, T0 + 1)
    new = await reserve(store, now=T0 + 2)
    assert new.lease.attempt == old.lease.attempt

    await store.complete(KEY, done(old, AttemptResult.FAILED), T0 + 3)
    record = await store.read(KEY, T0 + 3)

    assert record is not None
    assert record.lease == new.lease
    assert [(e.number, e.result) for e in record.history] == [(1, AttemptResult.RUNNING)]


@pytest_asyncio.fixture(params=STORES)
async def short_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A store whose retention and clear grace are far shorter than a lease."""
    store = make_store(request.param, request, tmp_path, retention=1.0, grace=0.5)
    yield store
    await store.close()


async def test_a_retention_shorter_than_the_lease_never_expires_a_running_attempt(
    short_store: Store,
) -> None:
    first = await reserve(short_store)
    second = await short_store.reserve(KEY, request(), T0 + LEASE - 1)

    assert isinstance(second, Running)
    assert second.lease == first.lease
    assert await short_store.read(KEY, T0 + LEASE + 0.5) is not None
    assert await short_store.read(KEY, T0 + LEASE + 1.5) is None


async def test_a_tombstone_outlives_the_lease_it_keeps(short_store: Store) -> None:
    first = await reserve(short_store)
    await short_store.clear(KEY.uid, [], False, T0 + 1)
    late = await short_store.reserve(KEY, request(), T0 + LEASE - 1)

    assert isinstance(late, Running)
    assert late.lease == first.lease


@pytest.mark.parametrize("short_store", ["redis", "redis-cluster"], indirect=True)
async def test_tokens_increase_across_a_forced_clear_past_a_short_retention(
    short_store: Store,
) -> None:
    # Redis keeps the fencing counter in a key with a TTL of real time: it must outlive every
    # record and lease it numbered, however short the retention.
    first = await reserve(short_store)
    await short_store.clear(KEY.uid, [], True, T0 + 1)
    await asyncio.sleep(1.2)  # the passage of the 1 s retention in Redis's own time
    second = await reserve(short_store, now=T0 + 2)

    assert second.lease.token > first.lease.token


async def test_asking_again_with_the_same_reservation_finds_it(store: Store) -> None:
    first = await store.reserve(KEY, request(reservation="r-1"), T0)
    again = await store.reserve(KEY, request(reservation="r-1"), T0 + 1)
    other = await store.reserve(KEY, request(reservation="r-2"), T0 + 1)

    assert isinstance(first, Reserved)
    assert isinstance(again, Reserved)
    assert again.lease == first.lease
    assert again.record.attempts == 1
    assert isinstance(other, Running)


async def test_a_reservation_found_again_after_its_lease_is_not_handed_out(store: Store) -> None:
    await store.reserve(KEY, request(reservation="r-1"), T0)
    late = await store.reserve(KEY, request(reservation="r-1"), T0 + LEASE + 1)

    assert isinstance(late, Reserved)
    assert late.lease.attempt == 2  # the first counts as abandoned; this is a new attempt


def release(reservation: str) -> Completion:
    return Completion(0, 0, AttemptResult.RELEASED, reservation=reservation)


async def test_a_released_reservation_is_not_counted_and_its_token_stays_spent(
    store: Store,
) -> None:
    first = await store.reserve(KEY, request(reservation="r-1"), T0)
    assert isinstance(first, Reserved)
    await store.complete(KEY, release("r-2"), T0 + 1)  # not the holder's: changes nothing
    held = await store.read(KEY, T0 + 1)
    assert held is not None
    assert (held.attempts, held.lease) == (1, first.lease)
    await store.complete(KEY, release("r-1"), T0 + 1)
    after = await store.read(KEY, T0 + 1)
    assert after is not None
    assert (after.attempts, after.lease, after.history) == (0, None, [])
    second = await store.reserve(KEY, request(reservation="r-3"), T0 + 2)

    assert isinstance(second, Reserved)
    assert second.lease.attempt == 1
    assert second.lease.token > first.lease.token


async def test_a_joiner_count_above_the_attempt_in_flight_counts_on_top(store: Store) -> None:
    first = await reserve(store)
    joined = await store.reserve(KEY, request(persisted=2), T0 + 1)
    await store.complete(KEY, done(first, AttemptResult.FAILED), T0 + 2)
    record = await store.read(KEY, T0 + 2)

    assert isinstance(joined, Running)
    assert joined.record.attempts == 3
    assert record is not None
    assert (record.attempts, record.status) == (3, Status.EXHAUSTED)


async def test_a_joiner_count_equal_to_the_attempt_in_flight_is_that_attempt(
    store: Store,
) -> None:
    await reserve(store)
    joined = await store.reserve(KEY, request(persisted=1), T0 + 1)

    assert isinstance(joined, Running)
    assert joined.record.attempts == 1


async def test_a_completion_carries_its_joiners_count(store: Store) -> None:
    first = await reserve(store)
    failed = Completion(
        attempt=first.lease.attempt,
        token=first.lease.token,
        result=AttemptResult.FAILED,
        error="HTTP 500",
        persisted_attempts=2,
    )
    record = await store.complete(KEY, failed, T0 + 1)

    assert record is not None
    assert (record.attempts, record.status) == (3, Status.EXHAUSTED)


async def test_a_success_from_before_a_forced_clear_does_not_deliver_the_new_record(
    store: Store,
) -> None:
    old = await reserve(store)
    await store.clear(KEY.uid, [], True, T0 + 1)
    new = await reserve(store, now=T0 + 2)
    await store.complete(KEY, done(old, AttemptResult.SUCCEEDED), T0 + 3)
    record = await store.read(KEY, T0 + 3)

    assert record is not None
    assert (record.status, record.lease, record.receipt) == (Status.OPEN, new.lease, None)


async def test_a_tombstone_keeps_an_abandoned_attempt_whose_late_success_counts(
    store: Store,
) -> None:
    first = await reserve(store)
    second = await reserve(store, now=T0 + LEASE + 1)  # the first was abandoned
    await store.complete(KEY, done(second, AttemptResult.FAILED), T0 + LEASE + 2)
    await store.clear(KEY.uid, [], False, T0 + LEASE + 3)
    await store.complete(KEY, done(first, AttemptResult.SUCCEEDED), T0 + LEASE + 4)
    late = await store.reserve(KEY, request(), T0 + LEASE + 5)

    assert isinstance(late, Verdict)
    assert late.outcome is Outcome.ALREADY_DELIVERED


async def test_a_reservation_asked_again_after_a_success_is_not_handed_out(store: Store) -> None:
    first = await store.reserve(KEY, request(reservation="r-1"), T0)
    assert isinstance(first, Reserved)
    second = await store.reserve(KEY, request(reservation="r-2"), T0 + LEASE + 1)
    assert isinstance(second, Reserved)
    await store.complete(KEY, done(first, AttemptResult.SUCCEEDED), T0 + LEASE + 2)
    again = await store.reserve(KEY, request(reservation="r-2"), T0 + LEASE + 3)

    assert isinstance(again, Verdict)
    assert again.outcome is Outcome.ALREADY_DELIVERED


# Uids that play with a Redis Cluster hash tag `{uid}`: one starting with `}` would leave the tag
# empty (the key hashed whole, so a script's keys fall in different slots); the others must keep
# their records apart from each other's.
BRACE_UIDS = ["}", "}x", "}}{{", "{", "{}", "{x}", "a}b", "a{b}c", "}:r:hook"]


@pytest.mark.parametrize("uid", BRACE_UIDS)
async def test_any_valid_uid_is_delivered_read_and_cleared(store: Store, uid: str) -> None:
    hook, mail = Key(uid, "hook"), Key(uid, "mail")
    reserved = await store.reserve(hook, request(), T0)
    assert isinstance(reserved, Reserved), reserved
    await store.reserve(mail, request(), T0)
    await store.complete(hook, done(reserved, AttemptResult.SUCCEEDED), T0 + 1)

    record = await store.read(hook, T0 + 1)
    again = await store.reserve(hook, request(), T0 + 2)
    cleared, running = await store.clear(uid, [], False, T0 + 3)

    assert record is not None
    assert record.status is Status.DELIVERED
    assert isinstance(again, Verdict)
    assert again.outcome is Outcome.ALREADY_DELIVERED
    assert (sorted(cleared), running) == (["hook", "mail"], ["mail"])
    assert await store.read(KEY, T0 + 3) is None  # another uid saw none of it


async def test_uids_that_differ_only_around_braces_keep_separate_records(store: Store) -> None:
    uids = ["}x", "x", "}}x", "{x", "{}x", "}x}"]
    for n, uid in enumerate(uids):
        reserved = await store.reserve(Key(uid, "hook"), request(fingerprint=f"fp-{n}"), T0)
        assert isinstance(reserved, Reserved), (uid, reserved)

    for n, uid in enumerate(uids):
        record = await store.read(Key(uid, "hook"), T0)
        assert record is not None
        assert record.fingerprint == f"fp-{n}"
