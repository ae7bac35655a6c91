"""The pure model: the rules of engine/decisions.py over a plain dict, and nothing else.

Every store is compared with this, so it holds no optimisation of its own: a record is copied
in and out of each decision, as a store that persists it would.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from sendonce_server.engine import decisions
from sendonce_server.engine.decisions import Completion, Decision, ReserveRequest
from sendonce_server.engine.listing import DeliveryPage, DeliveryQuery, select
from sendonce_server.engine.model import Key, Record


class ModelStore:
    def __init__(self, retention: float, clear_grace: float) -> None:
        self.retention = retention
        self.clear_grace = clear_grace
        self.records: dict[Key, Record] = {}
        self.fence_floor = 0

    def _get(self, key: Key, now: float) -> Record | None:
        record = self.records.get(key)
        if record is None or record.expires_at <= now:
            self.records.pop(key, None)
            return None
        return copy.deepcopy(record)

    async def reserve(self, key: Key, request: ReserveRequest, now: float) -> Decision:
        decision, changed = decisions.decide(
            self._get(key, now), request, now, self.retention, self.fence_floor
        )
        if changed and not isinstance(decision, decisions.Mismatch):
            self.records[key] = copy.deepcopy(decision.record)
        return decision

    async def complete(self, key: Key, completion: Completion, now: float) -> Record | None:
        record = self._get(key, now)
        if record is not None and decisions.complete(record, completion, now, self.retention):
            self.records[key] = copy.deepcopy(record)
        return record

    async def read(self, key: Key, now: float) -> Record | None:
        return self._get(key, now)

    async def list_deliveries(self, query: DeliveryQuery, now: float) -> DeliveryPage:
        return select(list(self.records.items()), query, now)

    async def clear(
        self, uid: str, channels: Sequence[str], force: bool, now: float
    ) -> tuple[list[str], list[str]]:
        cleared: list[str] = []
        running: list[str] = []
        for key in sorted(k for k in self.records if k.uid == uid):
            record = self._get(key, now)
            if record is None or (channels and key.channel not in channels):
                continue
            cleared.append(key.channel)
            if record.lease is not None and record.lease.expires_at > now:
                running.append(key.channel)
            if force:
                self.fence_floor = decisions.forget(record, self.fence_floor)
                del self.records[key]
            else:
                decisions.tombstone(record, now, self.clear_grace)
                self.records[key] = record
        return cleared, running

    @asynccontextmanager
    async def watch(self, key: Key) -> AsyncIterator[asyncio.Event]:
        yield asyncio.Event()  # the rule tests never wait

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None
