"""The store named by the --store setting."""

from __future__ import annotations

from pathlib import Path

from ..engine.ports import Store
from .memory import MemoryStore
from .urls import parse_store_url


def build_store(url: str, *, retention: float, clear_grace: float) -> Store:
    """The store for a --store value; StoreUrlError if the value is not one (see urls.SCHEMES)."""
    parsed = parse_store_url(url)
    kind = parsed.scheme.store
    if kind == "memory":
        return MemoryStore(retention=retention, clear_grace=clear_grace)
    # Imported on use: the Redis client alone adds a quarter second to every start.
    if kind == "sqlite":
        from .sqlite import SqliteStore

        path = Path(url.removeprefix(parsed.scheme.prefix))
        return SqliteStore(path, retention=retention, clear_grace=clear_grace)
    from .redis import RedisStore

    return RedisStore(url, retention=retention, clear_grace=clear_grace)
