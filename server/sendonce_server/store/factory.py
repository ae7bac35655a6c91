"""The store named by the --store setting."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ..config import SQLITE_PREFIX
from .base import Store
from .memory import MemoryStore


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


def display_url(url: str) -> str:
    """The store URL fit for logs and errors: a password in it is replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))
