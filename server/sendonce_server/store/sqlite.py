"""A SQLite file: state survives a sidecar crash or restart (e.g. on an emptyDir volume).

WAL mode with `synchronous=FULL`. One writer thread owns the connection, so the event loop never
blocks and the decisions of this process are serialised; the file lock serialises them across
processes too.

Group commit: each decision (read, decide, write) is a step queued for the writer. The writer
takes every step queued while it was busy (at most `_BATCH_MAX`) and runs them, in the order they
were submitted, in one `BEGIN IMMEDIATE` transaction. If a step raises, the batch is rolled back
and run again with each step inside its own `SAVEPOINT`: the failing step is rolled back alone
and fails only its own caller. One `COMMIT`, so one fsync,
serves the whole batch, and no caller hears its answer before that commit returned: a
reservation is on disk before its attempt is sent. When BEGIN or COMMIT fails, the batch is
rolled back and every one of its callers gets `StateUnavailable`. The answers of a batch reach
the event loop in one hand-off.

Reads (`read`, `ping`) go through the same writer, outside any transaction: they see only
committed state and are answered before the batch they arrived with is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..engine import decisions, defaults
from ..engine.decisions import Completion, Decision, ReserveRequest
from ..engine.listing import DeliveryPage, DeliveryQuery, Position, stored_state, updated_at
from ..engine.model import Key, Record
from ..engine.ports import StateUnavailable
from . import codec
from .watchers import KeyWatchers

log = logging.getLogger("sendonce.store")

_SWEEP_PER_WRITE = 4
# Most steps one transaction takes: bounds how long a batch holds the file's write lock.
_BATCH_MAX = 256
# `state` and `updated_at` (engine/listing.py) serve ListDeliveries through `records_state`.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    uid TEXT NOT NULL,
    channel TEXT NOT NULL,
    data TEXT NOT NULL,
    expires_at REAL NOT NULL,
    state TEXT,
    updated_at REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (uid, channel)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_expiry ON records (expires_at);
-- One row: above every token of a record a forced clear forgot (decisions.forget).
CREATE TABLE IF NOT EXISTS fence_floor (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    floor INTEGER NOT NULL
);
"""
_STATE_INDEX = (
    "CREATE INDEX IF NOT EXISTS records_state ON records (state, updated_at, channel, uid)"
)

T = TypeVar("T")
Step = Callable[[sqlite3.Connection], T]


class _Kind(enum.Enum):
    READ = "read"
    WRITE = "write"
    STOP = "stop"


@dataclass(slots=True)
class _Job:
    """One call waiting for the writer: its step and the future its caller awaits."""

    kind: _Kind
    step: Step[Any]
    future: asyncio.Future[Any]


# A job's answer: its future, and either an error or a value.
_Answer = tuple["asyncio.Future[Any]", BaseException | None, Any]


class SqliteStore:
    def __init__(
        self,
        path: Path,
        *,
        retention: float = defaults.RETENTION,
        clear_grace: float = defaults.CLEAR_GRACE,
        busy_timeout: float = 5.0,
    ):
        self.path = path
        self.retention = retention
        self.clear_grace = clear_grace
        # How long a transaction waits for another process's write lock before it fails.
        self.busy_timeout = busy_timeout
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._closed = False
        # Used on the writer thread only: the connection, and what the batch's writes let expire.
        self._db: sqlite3.Connection | None = None
        self._sweep_quota = 0
        self._sweep_until = -math.inf
        self._watchers = KeyWatchers[Key]()

    async def reserve(self, key: Key, request: ReserveRequest, now: float) -> Decision:
        def step(db: sqlite3.Connection) -> Decision:
            record = self._get(db, key, now)
            floor = 0 if record is not None else _fence_floor(db)
            decision, changed = decisions.decide(record, request, now, self.retention, floor)
            if changed and not isinstance(decision, decisions.Mismatch):
                self._put(db, key, decision.record, now)
            return decision

        decision: Decision = await self._submit(_Kind.WRITE, step)
        self._watchers.notify(key)
        return decision

    async def complete(self, key: Key, completion: Completion, now: float) -> Record | None:
        def step(db: sqlite3.Connection) -> Record | None:
            record = self._get(db, key, now)
            if decisions.complete(record, completion, now, self.retention) and record is not None:
                self._put(db, key, record, now)
            return record

        record: Record | None = await self._submit(_Kind.WRITE, step)
        self._watchers.notify(key)
        return record

    async def read(self, key: Key, now: float) -> Record | None:
        def step(db: sqlite3.Connection) -> Record | None:
            return self._get(db, key, now, delete_expired=False)

        record: Record | None = await self._submit(_Kind.READ, step)
        return record

    async def clear(
        self, uid: str, channels: Sequence[str], force: bool, now: float
    ) -> tuple[list[str], list[str]]:
        def step(db: sqlite3.Connection) -> tuple[list[str], list[str]]:
            rows = db.execute(
                "SELECT channel, data FROM records WHERE uid = ? AND expires_at > ? "
                "ORDER BY channel",
                (uid, now),
            ).fetchall()
            cleared: list[str] = []
            running: list[str] = []
            for channel, data in rows:
                if channels and channel not in channels:
                    continue
                record = codec.loads(data)
                cleared.append(channel)
                if record.lease is not None and record.lease.expires_at > now:
                    running.append(channel)
                if force:
                    db.execute(
                        "INSERT INTO fence_floor (id, floor) VALUES (0, ?) "
                        "ON CONFLICT (id) DO UPDATE SET floor = max(floor, excluded.floor)",
                        (decisions.forget(record, 0),),
                    )
                    db.execute("DELETE FROM records WHERE uid = ? AND channel = ?", (uid, channel))
                else:
                    decisions.tombstone(record, now, self.clear_grace)
                    self._put(db, Key(uid, channel), record, now)
            return cleared, running

        cleared: list[str]
        running: list[str]
        cleared, running = await self._submit(_Kind.WRITE, step)
        for channel in cleared:
            self._watchers.notify(Key(uid, channel))
        return cleared, running

    async def list_deliveries(self, query: DeliveryQuery, now: float) -> DeliveryPage:
        def step(db: sqlite3.Connection) -> DeliveryPage:
            return _list(db, query, now)

        page: DeliveryPage = await self._submit(_Kind.READ, step)
        return page

    def watch(self, key: Key) -> AbstractAsyncContextManager[asyncio.Event]:
        return self._watchers.watch(key)

    async def ping(self) -> bool:
        try:
            await self._submit(_Kind.READ, lambda db: db.execute("SELECT 1").fetchone())
        except StateUnavailable as error:
            log.warning("%s", error)
            return False
        return True

    async def close(self) -> None:
        """Let the writer finish what is queued, close the file and stop the writer thread.

        Calls made after this raise `StateUnavailable`.
        """
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is None:
            return
        stopped = asyncio.get_running_loop().create_future()
        self._jobs.put(_Job(_Kind.STOP, _nothing, stopped))
        await stopped  # answered after every job queued before it, as the writer's last act
        writer.join()

    def _get(
        self, db: sqlite3.Connection, key: Key, now: float, *, delete_expired: bool = True
    ) -> Record | None:
        row = db.execute(
            "SELECT data, expires_at FROM records WHERE uid = ? AND channel = ?",
            (key.uid, key.channel),
        ).fetchone()
        if row is None:
            return None
        if row[1] <= now:
            if delete_expired:
                db.execute(
                    "DELETE FROM records WHERE uid = ? AND channel = ?", (key.uid, key.channel)
                )
            return None
        return codec.loads(row[0])

    def _put(self, db: sqlite3.Connection, key: Key, record: Record, now: float) -> None:
        db.execute(
            "INSERT INTO records (uid, channel, data, expires_at, state, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (uid, channel) DO UPDATE SET "
            "data = excluded.data, expires_at = excluded.expires_at, "
            "state = excluded.state, updated_at = excluded.updated_at",
            (
                key.uid,
                key.channel,
                codec.dumps(record),
                record.expires_at,
                _state_value(record),
                updated_at(record),
            ),
        )
        # Amortised expiry: a few expired rows go with each write (deleted once per batch, by
        # `_sweep`), so no sweeper is needed.
        self._sweep_quota += _SWEEP_PER_WRITE
        self._sweep_until = max(self._sweep_until, now)

    def _sweep(self, db: sqlite3.Connection) -> None:
        """Delete the expired rows the batch's writes earned, in one statement."""
        if self._sweep_quota:
            db.execute(
                "DELETE FROM records WHERE (uid, channel) IN "
                "(SELECT uid, channel FROM records WHERE expires_at <= ? LIMIT ?)",
                (self._sweep_until, self._sweep_quota),
            )

    # --- the event loop's side ------------------------------------------------------------------

    def _submit(self, kind: _Kind, step: Step[Any]) -> asyncio.Future[Any]:
        """Queue a step for the writer; the future is answered on the caller's loop."""
        if self._closed:
            raise StateUnavailable(f"sqlite {self.path}: the store is closed")
        future = asyncio.get_running_loop().create_future()
        self._jobs.put(_Job(kind, step, future))
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_loop,
                name="sendonce-sqlite",
                # Never holds up the interpreter's exit when the store was not closed: SQLite
                # recovers a transaction cut short like a crash.
                daemon=True,
            )
            self._writer.start()
        return future

    # --- the writer thread ----------------------------------------------------------------------

    def _write_loop(self) -> None:
        stop: _Job | None = None
        while stop is None:
            batch = [self._jobs.get()]
            while len(batch) < _BATCH_MAX and batch[-1].kind is not _Kind.STOP:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            if batch[-1].kind is _Kind.STOP:
                stop = batch.pop()
            reads = [job for job in batch if job.kind is _Kind.READ]
            writes = [job for job in batch if job.kind is _Kind.WRITE]
            # Reads first, answered at once: they need no commit, so they do not wait for one.
            if reads:
                _hand_off(self._guarded(self._run_reads, reads))
            if writes:
                _hand_off(self._guarded(self._run_writes, writes))
        self._drop_connection()
        # close() refuses calls before they queue; one that got in all the same is refused here.
        refused: list[_Answer] = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            closed = StateUnavailable(f"sqlite {self.path}: the store is closed")
            refused.append((job.future, closed, None))
        _hand_off([*refused, (stop.future, None, None)])

    def _guarded(
        self, run: Callable[[list[_Job]], list[_Answer]], jobs: list[_Job]
    ) -> list[_Answer]:
        """Every job gets an answer, even if the writer itself has a bug."""
        try:
            return run(jobs)
        except Exception as error:
            log.exception("sqlite writer failed")
            return [(job.future, self._unavailable(error), None) for job in jobs]

    def _run_reads(self, jobs: list[_Job]) -> list[_Answer]:
        try:
            db = self._connection()
        except sqlite3.Error as error:
            return [(job.future, self._unavailable(error), None) for job in jobs]
        answers: list[_Answer] = []
        for job in jobs:
            try:
                answers.append((job.future, None, job.step(db)))
            except sqlite3.Error as error:
                answers.append((job.future, self._unavailable(error), None))
            except Exception as error:
                answers.append((job.future, error, None))
        return answers

    def _run_writes(self, jobs: list[_Job]) -> list[_Answer]:
        """One transaction, one commit.

        Optimistic: the steps run one after the other, with no savepoints (they cost a tenth of
        the writer's time). If one raises, the batch is rolled back and run again with a
        savepoint per step, so that only that step fails.
        """
        try:
            db = self._connection()
            answers = self._transaction(db, jobs, isolated=False)
            if answers is None:
                answers = self._transaction(db, jobs, isolated=True)
                assert answers is not None
        except sqlite3.Error as error:
            # Nothing of the batch is on disk: every caller hears so, none is told it succeeded.
            return [(job.future, self._unavailable(error), None) for job in jobs]
        return answers

    def _transaction(
        self, db: sqlite3.Connection, jobs: list[_Job], *, isolated: bool
    ) -> list[_Answer] | None:
        """Run the steps in one transaction and commit; None: a step raised, nothing is kept."""
        self._sweep_quota, self._sweep_until = 0, -math.inf
        db.execute("BEGIN IMMEDIATE")
        try:
            if isolated:
                answers = [self._run_step(db, job) for job in jobs]
            else:
                answers = []
                for job in jobs:
                    try:
                        answers.append((job.future, None, job.step(db)))
                    except Exception:
                        self._roll_back(db)
                        return None
            self._sweep(db)
            db.execute("COMMIT")
        except BaseException:
            self._roll_back(db)
            raise
        return answers

    def _run_step(self, db: sqlite3.Connection, job: _Job) -> _Answer:
        db.execute("SAVEPOINT step")
        try:
            value = job.step(db)
        except Exception as error:
            if not db.in_transaction:
                # SQLite rolled the whole transaction back itself (I/O error, disk full, ...):
                # the steps before this one are lost too, so the batch fails.
                raise
            db.execute("ROLLBACK TO step")
            db.execute("RELEASE step")
            failed = self._unavailable(error) if isinstance(error, sqlite3.Error) else error
            return (job.future, failed, None)
        db.execute("RELEASE step")
        return (job.future, None, value)

    def _roll_back(self, db: sqlite3.Connection) -> None:
        if not db.in_transaction:
            return
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error as error:
            # Closing the connection rolls back too; the next batch opens a new one.
            log.warning("sqlite %s: rollback failed (%s); reopening the file", self.path, error)
            self._drop_connection()

    def _unavailable(self, error: BaseException) -> StateUnavailable:
        # The file path is configuration, not a secret; the SQL error says what broke.
        return StateUnavailable(f"sqlite {self.path}: {error}")

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._connect()
        return self._db

    def _connect(self) -> sqlite3.Connection:
        """Open and set up the file (on the writer thread, the only one that uses it)."""
        db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a reservation is on disk before its attempt is sent, even if the node loses
            # power (NORMAL would only survive a process crash).
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            _add_state_columns(db)
            db.execute(_STATE_INDEX)
        except BaseException:
            db.close()
            raise
        return db

    def _drop_connection(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            try:
                db.close()
            except sqlite3.Error as error:
                log.warning("sqlite %s: close failed (%s)", self.path, error)


def _fence_floor(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT floor FROM fence_floor WHERE id = 0").fetchone()
    return 0 if row is None else int(row[0])


def _nothing(db: sqlite3.Connection) -> None:
    return None


def _state_value(record: Record) -> str | None:
    state = stored_state(record)
    return None if state is None else state.value


def _add_state_columns(db: sqlite3.Connection) -> None:
    """A file written before ListDeliveries gets the two columns, filled from its records."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(records)")}
    if "state" in columns:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("ALTER TABLE records ADD COLUMN state TEXT")
        db.execute("ALTER TABLE records ADD COLUMN updated_at REAL NOT NULL DEFAULT 0")
        rows = db.execute("SELECT uid, channel, data FROM records").fetchall()
        for uid, channel, data in rows:
            record = codec.loads(data)
            db.execute(
                "UPDATE records SET state = ?, updated_at = ? WHERE uid = ? AND channel = ?",
                (_state_value(record), updated_at(record), uid, channel),
            )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _list(db: sqlite3.Connection, query: DeliveryQuery, now: float) -> DeliveryPage:
    """Rows in list order through `records_state`, each checked against its record."""
    states = [state.value for state in query.states()]
    where = [f"state IN ({', '.join('?' * len(states))})", "expires_at > ?"]
    args: list[object] = [*states, now]
    for column, value in (("channel", query.channel), ("uid", query.uid)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if query.since is not None:
        where.append("updated_at >= ?")
        args.append(query.since)
    if query.until is not None:
        where.append("updated_at < ?")
        args.append(query.until)
    # Only fixed conditions are joined in; every value is a parameter.
    sql = (
        f"SELECT uid, channel, data, updated_at FROM records WHERE {' AND '.join(where)} "  # noqa: S608
        "AND (? IS NULL OR (updated_at, channel, uid) < (?, ?, ?)) "
        "ORDER BY updated_at DESC, channel DESC, uid DESC LIMIT ?"
    )
    entries: list[tuple[Key, Record]] = []
    after = query.after
    while True:
        # A row the check drops (a FAILED query meets live leases filed as in flight) is
        # replaced by reading on: fetched in chunks of the page's size.
        chunk = query.limit + 1
        cursor = (None, None, None, None) if after is None else (1, *_fields(after))
        rows = db.execute(sql, (*args, *cursor, chunk)).fetchall()
        for uid, channel, data, at in rows:
            key, record = Key(uid, channel), codec.loads(data)
            after = Position(at, channel, uid)
            if not query.admits(key, record, now):
                continue
            if len(entries) == query.limit:
                return DeliveryPage(entries, Position.of(*entries[-1]))
            entries.append((key, record))
        if len(rows) < chunk:
            return DeliveryPage(entries, None)


def _fields(position: Position) -> tuple[float, str, str]:
    return position.updated_at, position.channel, position.uid


def _hand_off(answers: list[_Answer]) -> None:
    """Send answers to their event loops: one wake-up per loop, not one per answer."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
    for answer in answers:
        by_loop.setdefault(answer[0].get_loop(), []).append(answer)
    for loop, mine in by_loop.items():
        # A closed loop raises RuntimeError: nobody waits for these answers any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, mine)


def _settle(answers: list[_Answer]) -> None:
    """On the loop: resolve the futures (a caller that was cancelled has given up on its own)."""
    for future, error, value in answers:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
