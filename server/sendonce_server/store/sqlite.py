"""A SQLite file: state survives a sidecar crash or restart (e.g. on an emptyDir volume).

WAL mode; each decision is one `BEGIN IMMEDIATE` transaction (read, decide, write), run on one
worker thread so the event loop never blocks and decisions of this process are serialised; the
file lock serialises them across processes too.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TypeVar

from ..engine import decisions
from ..engine.decisions import Completion, Decision, ReserveRequest
from ..engine.model import Key, Record
from . import codec
from .base import StoreUnavailable
from .watchers import KeyWatchers

log = logging.getLogger("sendonce.store")

DAY = 86_400.0
_SWEEP_PER_WRITE = 4
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    uid TEXT NOT NULL,
    channel TEXT NOT NULL,
    data TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (uid, channel)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_expiry ON records (expires_at);
"""

T = TypeVar("T")


class SqliteStore:
    def __init__(self, path: Path, *, retention: float = 7 * DAY, clear_grace: float = 600.0):
        self.path = path
        self.retention = retention
        self.clear_grace = clear_grace
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sendonce-sqlite")
        self._db: sqlite3.Connection | None = None
        self._watchers = KeyWatchers[Key]()

    async def reserve(self, key: Key, request: ReserveRequest, now: float) -> Decision:
        def step(db: sqlite3.Connection) -> Decision:
            decision, changed = decisions.decide(
                self._get(db, key, now), request, now, self.retention
            )
            if changed and not isinstance(decision, decisions.Mismatch):
                self._put(db, key, decision.record, now)
            return decision

        decision = await self._transaction(step)
        self._watchers.notify(key)
        return decision

    async def complete(self, key: Key, completion: Completion, now: float) -> Record | None:
        def step(db: sqlite3.Connection) -> Record | None:
            record = self._get(db, key, now)
            if decisions.complete(record, completion, now, self.retention) and record is not None:
                self._put(db, key, record, now)
            return record

        record = await self._transaction(step)
        self._watchers.notify(key)
        return record

    async def read(self, key: Key, now: float) -> Record | None:
        return await self._run(lambda db: self._get(db, key, now, delete_expired=False))

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
                    db.execute("DELETE FROM records WHERE uid = ? AND channel = ?", (uid, channel))
                else:
                    decisions.tombstone(record, now, self.clear_grace)
                    self._put(db, Key(uid, channel), record, now)
            return cleared, running

        cleared, running = await self._transaction(step)
        for channel in cleared:
            self._watchers.notify(Key(uid, channel))
        return cleared, running

    def watch(self, key: Key) -> AbstractAsyncContextManager[asyncio.Event]:
        return self._watchers.watch(key)

    async def ping(self) -> bool:
        try:
            await self._run(lambda db: db.execute("SELECT 1").fetchone())
        except StoreUnavailable as error:
            log.warning("%s", error)
            return False
        return True

    async def close(self) -> None:
        def shut(_: sqlite3.Connection) -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        if self._db is not None:
            await self._run(shut)
        self._executor.shutdown(wait=True)

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
            "INSERT INTO records (uid, channel, data, expires_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (uid, channel) DO UPDATE SET "
            "data = excluded.data, expires_at = excluded.expires_at",
            (key.uid, key.channel, codec.dumps(record), record.expires_at),
        )
        # Amortised expiry: a few expired rows go with each write, so no sweeper is needed.
        db.execute(
            "DELETE FROM records WHERE (uid, channel) IN "
            "(SELECT uid, channel FROM records WHERE expires_at <= ? LIMIT ?)",
            (now, _SWEEP_PER_WRITE),
        )

    async def _transaction(self, step: Callable[[sqlite3.Connection], T]) -> T:
        def run(db: sqlite3.Connection) -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = step(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return await self._run(run)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            try:
                return work(self._connection())
            except sqlite3.Error as error:
                # The file path is configuration, not a secret; the SQL error says what broke.
                raise StoreUnavailable(f"sqlite {self.path}: {error}") from None

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _connection(self) -> sqlite3.Connection:
        """Opened on the worker thread, the only one that ever uses it."""
        if self._db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a reservation is on disk before its attempt is sent, even if the node loses
            # power (NORMAL would only survive a process crash).
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db
