"""The SQLite store's group commit: batches, one step's failure, a failed commit, close.

Every test runs on a real file in tmp_path and checks what is on disk with a connection of
its own. To put steps into one batch for certain, `GatedStore.hold()` parks the writer thread
inside a reserve of `GATE`; whatever is submitted meanwhile queues up, and the next batch takes
it all once the gate opens.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Awaitable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sendonce_server.engine.decisions import (
    Completion,
    Decision,
    Reserved,
    ReserveRequest,
    Running,
)
from sendonce_server.engine.listing import DeliveryQuery, DeliveryState
from sendonce_server.engine.model import AttemptEntry, AttemptResult, Key, Record, Status
from sendonce_server.engine.ports import StateUnavailable
from sendonce_server.store import codec
from sendonce_server.store.sqlite import SqliteStore

T0 = 1_800_000_000.0
GATE = Key("gate", "hook")
WRITER = "sendonce-sqlite"
T = TypeVar("T")


def request() -> ReserveRequest:
    return ReserveRequest(
        fingerprint="fp-1", max_attempts=3, persisted_attempts=0, lease_seconds=10.0
    )


class GatedStore(SqliteStore):
    """Counts the COMMITs run on its connection; `hold()` parks the writer in a batch."""

    def __init__(self, path: Path, **settings: Any) -> None:
        super().__init__(path, **settings)
        self.commits = 0
        self.savepoints = 0
        self._open = threading.Event()
        self._holding: asyncio.Future[None] | None = None

    async def hold(self) -> asyncio.Task[Decision]:
        """Reserve GATE and return once the writer thread is blocked inside that step."""
        self._holding = asyncio.get_running_loop().create_future()
        held = asyncio.ensure_future(self.reserve(GATE, request(), T0))
        await self._holding
        return held

    def release_after_queued(self) -> None:
        """Open the gate once every task created so far has run up to its first await.

        Callbacks run in the order they were scheduled, and a new task's first step was
        scheduled when it was created: by the time the gate opens, their steps are queued.
        """
        asyncio.get_running_loop().call_soon(self._open.set)

    def _connect(self) -> sqlite3.Connection:
        db = super()._connect()
        db.set_trace_callback(self._traced)
        return db

    def _traced(self, statement: str) -> None:
        if statement == "COMMIT":
            self.commits += 1
        elif statement.startswith("SAVEPOINT"):
            self.savepoints += 1

    def _get(
        self, db: sqlite3.Connection, key: Key, now: float, *, delete_expired: bool = True
    ) -> Record | None:
        if key == GATE and self._holding is not None:
            holding, self._holding = self._holding, None
            holding.get_loop().call_soon_threadsafe(holding.set_result, None)
            # A bound only so that a failing test cannot hang the writer for ever.
            assert self._open.wait(timeout=30), "the gate was never opened"
        return super()._get(db, key, now, delete_expired=delete_expired)


class PoisonedCommitStore(GatedStore):
    """COMMIT fails for any transaction that wrote a uid starting with 'poison'.

    A trigger (in this connection's temp schema, so the file's schema is untouched) inserts a
    row that breaks a deferred foreign key: each statement succeeds, and SQLite refuses the
    COMMIT itself, leaving the transaction open, as a commit that fails for any reason does.
    """

    def _connect(self) -> sqlite3.Connection:
        db = super()._connect()
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(
            """
            CREATE TEMP TABLE parent (id INTEGER PRIMARY KEY);
            CREATE TEMP TABLE child (
                parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED
            );
            CREATE TEMP TRIGGER poison AFTER INSERT ON main.records
            WHEN NEW.uid LIKE 'poison%'
            BEGIN INSERT INTO child VALUES (1); END;
            """
        )
        return db


def on_disk(path: Path) -> dict[Key, str]:
    """Every committed row, read through a connection of its own."""
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT uid, channel, data FROM records").fetchall()
    return {Key(uid, channel): data for uid, channel, data in rows}


@contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Another connection (as another process would) holds the file's write lock."""
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")


def writer_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == WRITER}


async def settled(*calls: Awaitable[T]) -> list[T | BaseException]:
    async with asyncio.timeout(30):
        return await asyncio.gather(*calls, return_exceptions=True)


async def test_concurrent_reserves_share_commits_and_all_are_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = GatedStore(path)
    assert await store.ping()  # opens the file, so every COMMIT below is a batch's
    keys = [Key(f"uid-{n}", "hook") for n in range(64)]

    decisions = await settled(*(store.reserve(key, request(), T0) for key in keys))
    commits, savepoints = store.commits, store.savepoints
    await store.close()

    assert all(isinstance(decision, Reserved) for decision in decisions), decisions
    assert 1 <= commits <= len(keys) // 4
    assert savepoints == 0  # a batch whose steps all succeed runs them straight
    assert set(on_disk(path)) == set(keys)
    reopened = SqliteStore(path)
    records = [await reopened.read(key, T0) for key in keys]
    await reopened.close()
    assert all(r is not None and r.attempts == 1 for r in records)


async def test_a_failing_step_fails_only_its_caller_and_the_rest_of_its_batch_commits(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    store = GatedStore(path)
    good = [Key("good-1", "hook"), Key("good-2", "hook")]
    corrupt = Key("corrupt", "hook")
    mixed = [Key("mixed", "a"), Key("mixed", "b")]
    for key in [corrupt, *mixed]:
        assert isinstance(await store.reserve(key, request(), T0), Reserved)
    with closing(sqlite3.connect(path)) as db, db:
        for key in (corrupt, mixed[1]):
            db.execute(
                "UPDATE records SET data = '{not json' WHERE uid = ? AND channel = ?",
                (key.uid, key.channel),
            )
    before = on_disk(path)

    held = await store.hold()
    commits, savepoints = store.commits, store.savepoints
    calls = [
        asyncio.ensure_future(store.reserve(good[0], request(), T0)),
        # Fails reading its row.
        asyncio.ensure_future(store.reserve(corrupt, request(), T0)),
        # Tombstones mixed/a, then fails reading mixed/b: its first write must go too.
        asyncio.ensure_future(store.clear("mixed", [], False, T0)),
        asyncio.ensure_future(store.reserve(good[1], request(), T0)),
    ]
    store.release_after_queued()
    first, bad_reserve, bad_clear, second = await settled(*calls)
    await held
    batch_commits = store.commits - commits
    batch_savepoints = store.savepoints - savepoints
    after = on_disk(path)
    await store.close()

    assert batch_commits == 2  # the gate's batch, then one for all four steps
    assert batch_savepoints == 4  # run again with a savepoint a step, once a step failed
    assert isinstance(first, Reserved)
    assert isinstance(second, Reserved)
    assert isinstance(bad_reserve, json.JSONDecodeError)
    assert isinstance(bad_clear, json.JSONDecodeError)
    assert good[0] in after
    assert good[1] in after
    for key in [corrupt, *mixed]:
        assert after[key] == before[key], key
    assert json.loads(after[mixed[0]])["cl"] is False


async def test_steps_of_one_batch_run_in_order_and_see_each_others_writes(
    tmp_path: Path,
) -> None:
    store = GatedStore(tmp_path / "state.db")
    key = Key("uid-1", "hook")

    held = await store.hold()
    commits = store.commits
    calls = [asyncio.ensure_future(store.reserve(key, request(), T0 + n)) for n in range(3)]
    store.release_after_queued()
    answers = await settled(*calls)
    await held
    batch_commits = store.commits - commits
    await store.close()

    assert batch_commits == 2  # the gate's batch, then one for the three steps
    first, *others = answers
    assert isinstance(first, Reserved)
    assert [type(answer) for answer in others] == [Running, Running]
    assert all(isinstance(a, Running) and a.lease == first.lease for a in others)


async def test_a_read_sees_only_committed_state_and_is_answered_before_the_commit(
    tmp_path: Path,
) -> None:
    store = GatedStore(tmp_path / "state.db")
    key = Key("uid-1", "hook")
    answered: list[str] = []

    held = await store.hold()
    write = asyncio.ensure_future(store.reserve(key, request(), T0))
    read = asyncio.ensure_future(store.read(key, T0))
    write.add_done_callback(lambda _: answered.append("write"))
    read.add_done_callback(lambda _: answered.append("read"))
    store.release_after_queued()
    reserved, record = await settled(write, read)
    await held
    await store.close()

    assert isinstance(reserved, Reserved)
    assert record is None  # the reserve queued before it was not committed yet
    assert answered == ["read", "write"]


async def test_a_lock_held_past_the_busy_timeout_fails_the_batch_and_writes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path, busy_timeout=0.05)
    assert await store.ping()
    keys = [Key(f"uid-{n}", "hook") for n in range(8)]

    with write_lock(path):
        answers = await settled(*(store.reserve(key, request(), T0) for key in keys))
    later = await store.reserve(keys[0], request(), T0)
    await store.close()

    assert all(isinstance(answer, StateUnavailable) for answer in answers), answers
    assert all(str(path) in str(a) and "database is locked" in str(a) for a in answers)
    assert isinstance(later, Reserved)
    assert later.lease.attempt == 1
    assert set(on_disk(path)) == {keys[0]}


async def test_a_failed_commit_fails_every_caller_of_the_batch_and_is_rolled_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    store = PoisonedCommitStore(path)
    good = [Key("good-1", "hook"), Key("good-2", "hook")]

    held = await store.hold()
    calls = [
        asyncio.ensure_future(store.reserve(good[0], request(), T0)),
        asyncio.ensure_future(store.reserve(Key("poison-1", "hook"), request(), T0)),
        asyncio.ensure_future(store.reserve(good[1], request(), T0)),
    ]
    store.release_after_queued()
    answers = await settled(*calls)
    await held
    lost = on_disk(path)
    # The transaction was rolled back, not left open: the next batch begins and commits.
    again = await store.reserve(good[0], request(), T0 + 1)
    await store.close()

    assert all(isinstance(answer, StateUnavailable) for answer in answers), answers
    assert all(str(path) in str(a) and "FOREIGN KEY" in str(a) for a in answers)
    assert set(lost) == {GATE}
    assert isinstance(again, Reserved)
    assert again.lease.attempt == 1
    assert set(on_disk(path)) == {GATE, good[0]}


async def test_close_finishes_the_queued_steps_and_stops_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = GatedStore(path)
    keys = [Key(f"uid-{n}", "hook") for n in range(16)]
    before = writer_threads()

    held = await store.hold()
    (writer,) = writer_threads() - before
    calls = [asyncio.ensure_future(store.reserve(key, request(), T0)) for key in keys]
    closed = asyncio.ensure_future(store.close())
    store.release_after_queued()
    *answers, closed_answer = await settled(*calls, closed)
    await held

    assert all(isinstance(answer, Reserved) for answer in answers), answers
    assert closed_answer is None
    assert not writer.is_alive()
    assert writer not in threading.enumerate()
    with pytest.raises(StateUnavailable, match="closed"):
        await store.reserve(Key("late", "hook"), request(), T0)
    assert await store.ping() is False
    assert set(on_disk(path)) == {GATE, *keys}


async def test_a_caller_cancelled_while_queued_fails_no_one_else(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = GatedStore(path)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    gone, kept = Key("gone", "hook"), Key("kept", "hook")

    held = await store.hold()
    cancelled = asyncio.ensure_future(store.reserve(gone, request(), T0))
    answered = asyncio.ensure_future(store.reserve(kept, request(), T0))
    loop.call_soon(cancelled.cancel)  # after both steps are queued
    store.release_after_queued()
    lost, reserved = await settled(cancelled, answered)
    await held
    assert isinstance(reserved, Reserved)
    completion = Completion(reserved.lease.attempt, reserved.lease.token, AttemptResult.SUCCEEDED)
    record = await store.complete(kept, completion, T0 + 1)
    await store.close()

    assert isinstance(lost, asyncio.CancelledError)
    assert record is not None
    assert record.status is Status.DELIVERED
    assert errors == []
    # The cancelled caller's step ran all the same (the engine counts a reserve as done).
    assert set(on_disk(path)) == {GATE, gone, kept}


async def test_a_file_from_before_list_deliveries_gets_its_state_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    failed = Record(
        fingerprint="fp",
        max_attempts=3,
        attempts=1,
        last_error="HTTP 503",
        history=[AttemptEntry(1, 100.0, AttemptResult.FAILED, 100.5, "HTTP 503", 1)],
        expires_at=10_000.0,
    )
    delivered = Record(
        fingerprint="fp",
        max_attempts=3,
        attempts=1,
        status=Status.DELIVERED,
        history=[AttemptEntry(1, 200.0, AttemptResult.SUCCEEDED, 200.5, "", 1)],
        expires_at=10_000.0,
    )
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE records (uid TEXT NOT NULL, channel TEXT NOT NULL, data TEXT NOT NULL, "
            "expires_at REAL NOT NULL, PRIMARY KEY (uid, channel)) WITHOUT ROWID"
        )
        for uid, record in (("u-failed", failed), ("u-delivered", delivered)):
            db.execute(
                "INSERT INTO records VALUES (?, 'hook', ?, ?)",
                (uid, codec.dumps(record), record.expires_at),
            )
    store = SqliteStore(path)
    try:
        page = await store.list_deliveries(DeliveryQuery(), 300.0)
        only_failed = await store.list_deliveries(DeliveryQuery(state=DeliveryState.FAILED), 300.0)
    finally:
        await store.close()

    assert [key.uid for key, _ in page.entries] == ["u-delivered", "u-failed"]
    assert [key.uid for key, _ in only_failed.entries] == ["u-failed"]
