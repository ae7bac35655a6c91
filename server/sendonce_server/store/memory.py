"""The embedded default store: fastest, and its state dies with the process."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

from ..engine import decisions
from ..engine.decisions import Completion, Decision, ReserveRequest
from ..engine.model import Key, Record
from .watchers import KeyWatchers

DAY = 86_400.0
# Expired records swept per write: amortised O(1), so no background task is needed.
_SWEEP_PER_WRITE = 4


class MemoryStore:
    """Records in dicts. Each method runs without awaiting, so it is atomic on the event loop."""

    def __init__(self, *, retention: float = 7 * DAY, clear_grace: float = 600.0) -> None:
        self.retention = retention
        self.clear_grace = clear_grace
        # Ordered by last write, so the oldest (first to expire) sits in front. Tombstones live
        # apart because their shorter grace would break that order.
        self._live: OrderedDict[Key, Record] = OrderedDict()
        self._tombstones: OrderedDict[Key, Record] = OrderedDict()
        # Most uids have one channel: then the channel itself stands for the set (a set costs
        # about 200 bytes a record).
        self._channels_by_uid: dict[str, str | set[str]] = {}
        self._watchers = KeyWatchers[Key]()

    def __len__(self) -> int:
        return len(self._live) + len(self._tombstones)

    async def reserve(self, key: Key, request: ReserveRequest, now: float) -> Decision:
        decision, changed = decisions.decide(self._get(key, now), request, now, self.retention)
        if changed and not isinstance(decision, decisions.Mismatch):
            self._put(key, decision.record, now)
        return decision

    async def complete(self, key: Key, completion: Completion, now: float) -> Record | None:
        record = self._get(key, now)
        if decisions.complete(record, completion, now, self.retention) and record is not None:
            self._put(key, record, now)
        return record

    async def read(self, key: Key, now: float) -> Record | None:
        return self._get(key, now)

    async def clear(
        self, uid: str, channels: Sequence[str], force: bool, now: float
    ) -> tuple[list[str], list[str]]:
        known = self._channels(uid)
        targets = sorted(known.intersection(channels) if channels else known)
        cleared: list[str] = []
        running: list[str] = []
        for channel in targets:
            key = Key(uid, channel)
            record = self._get(key, now)
            if record is None:
                continue
            cleared.append(channel)
            if record.lease is not None and record.lease.expires_at > now:
                running.append(channel)
            if force:
                self._delete(key)
            else:
                decisions.tombstone(record, now, self.clear_grace)
                self._put(key, record, now)
            self._watchers.notify(key)
        return cleared, running

    def watch(self, key: Key) -> AbstractAsyncContextManager[asyncio.Event]:
        return self._watchers.watch(key)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    def _get(self, key: Key, now: float) -> Record | None:
        record = self._live.get(key) or self._tombstones.get(key)
        if record is not None and record.expires_at <= now:
            self._delete(key)
            return None
        return record

    def _put(self, key: Key, record: Record, now: float) -> None:
        home, other = (
            (self._tombstones, self._live) if record.cleared else (self._live, self._tombstones)
        )
        other.pop(key, None)
        home[key] = record
        home.move_to_end(key)
        known = self._channels_by_uid.get(key.uid)
        if known is None:
            self._channels_by_uid[key.uid] = key.channel
        elif isinstance(known, str):
            if known != key.channel:
                self._channels_by_uid[key.uid] = {known, key.channel}
        else:
            known.add(key.channel)
        self._watchers.notify(key)
        self._sweep(now)

    def _delete(self, key: Key) -> None:
        self._live.pop(key, None)
        self._tombstones.pop(key, None)
        known = self._channels_by_uid.get(key.uid)
        if known == key.channel:
            del self._channels_by_uid[key.uid]
        elif isinstance(known, set):
            known.discard(key.channel)
            if len(known) == 1:
                self._channels_by_uid[key.uid] = known.pop()

    def _channels(self, uid: str) -> set[str]:
        known = self._channels_by_uid.get(uid)
        if known is None:
            return set()
        return {known} if isinstance(known, str) else set(known)

    def _sweep(self, now: float) -> None:
        for records in (self._live, self._tombstones):
            for _ in range(_SWEEP_PER_WRITE):
                if not records:
                    break
                key, record = next(iter(records.items()))
                if record.expires_at > now:
                    break
                self._delete(key)
