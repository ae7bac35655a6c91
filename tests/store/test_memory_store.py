"""What the memory store does beyond the contract: packed records, uids with several channels,
the sweep, and its memory budget."""

from __future__ import annotations

import tracemalloc

from sendonce_server.engine.decisions import Completion, Reserved, ReserveRequest
from sendonce_server.engine.model import (
    AttemptEntry,
    AttemptResult,
    Key,
    Lease,
    Receipt,
    Record,
    Status,
)
from sendonce_server.store.memory import MemoryStore, pack, unpack

T0 = 1_800_000_000.0
RETENTION = 3_600.0


def request(fingerprint: str = "fp-1") -> ReserveRequest:
    return ReserveRequest(
        fingerprint=fingerprint, max_attempts=5, persisted_attempts=0, lease_seconds=10.0
    )


async def deliver(store: MemoryStore, key: Key, now: float = T0) -> None:
    reserved = await store.reserve(key, request(), now)
    assert isinstance(reserved, Reserved)
    lease = reserved.lease
    done = Completion(lease.attempt, lease.token, AttemptResult.SUCCEEDED, receipt=Receipt("ok"))
    await store.complete(key, done, now)


def test_a_packed_record_unpacks_to_an_equal_record() -> None:
    record = Record(
        fingerprint="9f86d081884c7d659a2feaa0c55ad015",
        max_attempts=7,
        attempts=3,
        status=Status.OPEN,
        lease=Lease(attempt=3, token=1_800_000_000_000_003, expires_at=T0 + 15.5),
        next_attempt_at=T0 + 2.25,
        last_error="HTTP 503: ünavailable",
        receipt=Receipt("HTTP 200", {"status_code": "200", "id": "m-1"}),
        history=[
            AttemptEntry(1, T0, AttemptResult.FAILED, T0 + 0.5, "HTTP 503", 1_800_000_000_000_001),
            AttemptEntry(2, T0 + 1, AttemptResult.ABANDONED, None, "lease expired", 2),
            AttemptEntry(3, T0 + 2, AttemptResult.RUNNING, None, "", 1_800_000_000_000_003),
        ],
        fence=1_800_000_000_000_003,
        cleared=True,
        expires_at=T0 + RETENTION,
    )
    for status in Status:
        record.status = status
        assert unpack(pack("hook", record)) == ("hook", record)


async def test_channels_of_one_uid_are_kept_apart_and_cleared_together() -> None:
    store = MemoryStore(retention=RETENTION)
    for channel in ("mail", "hook", "chat"):
        await deliver(store, Key("uid-1", channel))
    await deliver(store, Key("uid-2", "hook"))
    assert len(store) == 4
    for channel in ("mail", "hook", "chat"):
        record = await store.read(Key("uid-1", channel), T0)
        assert record is not None
        assert record.status is Status.DELIVERED
    assert await store.read(Key("uid-1", "pager"), T0) is None

    assert await store.clear("uid-1", ["hook"], True, T0) == (["hook"], [])
    assert await store.read(Key("uid-1", "hook"), T0) is None
    assert await store.clear("uid-1", [], True, T0) == (["chat", "mail"], [])
    assert len(store) == 1
    assert await store.read(Key("uid-2", "hook"), T0) is not None


async def test_a_running_attempt_is_found_by_clear() -> None:
    store = MemoryStore(retention=RETENTION)
    await deliver(store, Key("uid-1", "mail"))
    await store.reserve(Key("uid-1", "hook"), request(), T0)  # leased, not completed
    assert await store.clear("uid-1", [], False, T0) == (["hook", "mail"], ["hook"])


async def test_len_counts_every_record_as_records_come_and_go() -> None:
    # len() is what the records gauge reads, from the metrics thread: kept as a count.
    store = MemoryStore(retention=RETENTION)
    keys = [Key(uid, channel) for uid in ("u1", "u2") for channel in ("hook", "mail", "chat")]

    async def present() -> int:
        return sum([await store.read(key, T0) is not None for key in keys])

    for key in keys[:4]:
        await deliver(store, key)
        assert len(store) == await present()
    # An attempt in flight is an object, not packed; it fails, then a retry takes it out again.
    for _ in range(2):
        leased = await store.reserve(keys[4], request(), T0)
        assert isinstance(leased, Reserved)
        assert len(store) == await present() == 5
        lease = leased.lease
        failed = Completion(lease.attempt, lease.token, AttemptResult.FAILED)
        await store.complete(keys[4], failed, T0)
        assert len(store) == await present() == 5
    await store.clear("u1", ["mail"], True, T0)  # a uid of three channels down to two
    assert len(store) == await present() == 4
    await store.clear("u1", [], False, T0)  # tombstones are records too
    assert len(store) == await present() == 4
    await store.clear("u2", [], True, T0)
    assert len(store) == await present() == 2


async def test_writes_sweep_the_records_past_their_retention() -> None:
    store = MemoryStore(retention=RETENTION)
    for index in range(100):
        await deliver(store, Key(f"old-{index}", "hook"))
    later = T0 + 10.0 + RETENTION + 1  # the retention runs from the lease's end
    for index in range(30):
        await deliver(store, Key(f"new-{index}", "hook"), now=later)
    # Each write sweeps up to 4 expired records: the 100 old ones are gone after 25 writes.
    assert len(store) == 30
    assert await store.read(Key("old-0", "hook"), later) is None


async def test_a_record_at_rest_takes_less_than_400_bytes() -> None:
    # The budget (RSS per record, measured by bench.memory over a million records);
    # here the store's own allocations, counted by tracemalloc, with 36-character uids.
    store = MemoryStore(retention=RETENTION)
    count = 20_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(count):
            # The uid is made here, so that its string is counted: the store keeps it.
            await deliver(store, Key(f"{index:08x}-0000-4000-8000-000000000000", "hook"))
        per_record = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    assert len(store) == count
    assert per_record < 400, per_record
