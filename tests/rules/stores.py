"""Every implementation of the rules, built the same way for the contract, table and model tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from sendonce_server.engine.ports import Store
from sendonce_server.store.memory import MemoryStore
from sendonce_server.store.redis import RedisStore
from sendonce_server.store.sqlite import SqliteStore

from .model import ModelStore
from .ops import GRACE, RETENTION

STORES = ["memory", "sqlite", "redis", "redis-cluster", "redis-sentinel"]
REDIS_URL_FIXTURES = {
    "redis": "redis_url",
    "redis-cluster": "redis_cluster_url",
    "redis-sentinel": "redis_sentinel_url",
}


def make_store(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    retention: float = RETENTION,
    grace: float = GRACE,
) -> Store:
    if kind == "model":
        return ModelStore(retention=retention, clear_grace=grace)
    if kind == "memory":
        return MemoryStore(retention=retention, clear_grace=grace)
    if kind == "sqlite":
        return SqliteStore(
            tmp_path / f"state-{uuid.uuid4().hex}.db", retention=retention, clear_grace=grace
        )
    # The tests' clock runs ahead of Redis's, so the scripts take the tests' time.
    url = request.getfixturevalue(REDIS_URL_FIXTURES[kind])
    return RedisStore(
        url,
        retention=retention,
        clear_grace=grace,
        prefix=f"test-{uuid.uuid4().hex}:",
        server_time=False,
    )


@pytest_asyncio.fixture(params=["model", *STORES])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The pure model and every store: each row of the tables runs against each."""
    store = make_store(request.param, request, tmp_path)
    yield store
    await store.close()
