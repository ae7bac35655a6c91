"""The store named by the --store setting."""

from __future__ import annotations

from pathlib import Path

from ..engine.ports import Store
from .memory import MemoryStore
from .urls import SQLITE_PREFIX


def build_store(url: str, *, retention: float, clear_grace: float) -> Store:
    if url == "memory":
        return MemoryStore(retention=retention, clear_grace=clear_grace)
    # Imported on use: the Redis client alone adds a quarter second to every start.
    if url.startswith(SQLITE_PREFIX):
        from .sqlite import SqliteStore

        path = Path(url.removeprefix(SQLITE_PREFIX))
        return SqliteStore(path, retention=retention, clear_grace=clear_grace)
    from .redis import RedisStore

    return RedisStore(url, retention=retention, clear_grace=clear_grace)
