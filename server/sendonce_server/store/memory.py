"""The embedded default store: fastest, and its state dies with the process.

Memory per record is what limits it (a sidecar may hold a million records for the retention
week), so records at rest are packed: one `bytes` object per key in a dict keyed by uid, about
350 bytes a record with the dict's own share, where a record as Python objects (dataclasses,
a list, floats, a key tuple) took over 800. Packed bytes are also invisible to the garbage
collector, whose full collections would otherwise walk every record. A record with an attempt
in flight stays an object until the attempt completes: it changes again soon.
"""

from __future__ import annotations

import asyncio
import marshal
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

from ..engine import decisions, defaults
from ..engine.decisions import Completion, Decision, ReserveRequest
from ..engine.listing import DeliveryPage, DeliveryQuery, select
from ..engine.model import AttemptEntry, AttemptResult, Key, Lease, Receipt, Record, Status
from .watchers import KeyWatchers

# Expired records swept per write: amortised O(1), so no background task is needed.
_SWEEP_PER_WRITE = 4

_STATUSES = tuple(Status)
_STATUS_INDEX = {status: index for index, status in enumerate(_STATUSES)}
_RESULTS = tuple(AttemptResult)
_RESULT_INDEX = {result: index for index, result in enumerate(_RESULTS)}

# The records of one uid at rest: packed bytes for its one channel (the usual case), or a dict
# by channel when it has several.
_Packed = bytes | dict[str, bytes]


def pack(channel: str, record: Record) -> bytes:
    """A record as marshalled builtins (C speed both ways); the channel travels with it."""
    lease = record.lease
    receipt = record.receipt
    return marshal.dumps(
        (
            channel,
            record.fingerprint,
            record.max_attempts,
            record.attempts,
            _STATUS_INDEX[record.status],
            None
            if lease is None
            else (lease.attempt, lease.token, lease.expires_at, lease.reservation),
            record.next_attempt_at,
            record.last_error,
            None if receipt is None else (receipt.reference, tuple(receipt.details.items())),
            tuple(
                (e.number, e.started_at, _RESULT_INDEX[e.result], e.finished_at, e.error, e.token)
                for e in record.history
            ),
            record.fence,
            record.cleared,
            record.expires_at,
        )
    )


def unpack(data: bytes) -> tuple[str, Record]:
    (
        channel,
        fingerprint,
        max_attempts,
        attempts,
        status,
        lease,
        next_attempt_at,
        last_error,
        receipt,
        history,
        fence,
        cleared,
        expires_at,
    ) = marshal.loads(data)  # noqa: S302  # bytes this process packed, never input
    return channel, Record(
        fingerprint=fingerprint,
        max_attempts=max_attempts,
        attempts=attempts,
        status=_STATUSES[status],
        lease=None if lease is None else Lease(*lease),
        next_attempt_at=next_attempt_at,
        last_error=last_error,
        receipt=None if receipt is None else Receipt(receipt[0], dict(receipt[1])),
        history=[
            AttemptEntry(number, started, _RESULTS[result], finished, error, token)
            for number, started, result, finished, error, token in history
        ],
        fence=fence,
        cleared=cleared,
        expires_at=expires_at,
    )


class MemoryStore:
    """Records in dicts. Each method runs without awaiting, so it is atomic on the event loop."""

    def __init__(
        self, *, retention: float = defaults.RETENTION, clear_grace: float = defaults.CLEAR_GRACE
    ) -> None:
        self.retention = retention
        self.clear_grace = clear_grace
        # By uid, ordered by last write: the oldest sits in front for the sweep. A tombstone's
        # shorter grace breaks that order; reads never see it expired, and its (smaller) bytes
        # go when the sweep reaches them.
        self._at_rest: OrderedDict[str, _Packed] = OrderedDict()
        # Records with a lease, as objects; each key is in one of the two, never both.
        self._leased: dict[Key, Record] = {}
        # Records in `_at_rest`, kept as they come and go: len() is read by the metrics
        # scrape on another thread, which must neither walk nor race the dict.
        self._packed = 0
        # The uid in front of `_at_rest` when last swept, and until when it lives.
        self._front: tuple[str | None, float] = (None, 0.0)
        # Above every token of a record a forced clear forgot (decisions.forget).
        self._fence_floor = 0
        self._watchers = KeyWatchers[Key]()

    def __len__(self) -> int:
        return len(self._leased) + self._packed

    async def reserve(self, key: Key, request: ReserveRequest, now: float) -> Decision:
        decision, changed = decisions.decide(
            self._get(key, now), request, now, self.retention, self._fence_floor
        )
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
                self._fence_floor = decisions.forget(record, self._fence_floor)
                self._delete(key)
            else:
                decisions.tombstone(record, now, self.clear_grace)
                self._put(key, record, now)
            self._watchers.notify(key)
        return cleared, running

    async def list_deliveries(self, query: DeliveryQuery, now: float) -> DeliveryPage:
        # One uid: its few records. Otherwise every record of this process is looked at (about
        # a second per million): the memory store serves one process, its operator's queries
        # are rare, and an index would cost every Deliver.
        return select(self._records(query.uid), query, now)

    def _records(self, uid: str | None) -> list[tuple[Key, Record]]:
        records = [(key, record) for key, record in self._leased.items() if uid in (None, key.uid)]
        if uid is not None:
            rest = self._at_rest.get(uid)
            items = [] if rest is None else [(uid, rest)]
        else:
            items = list(self._at_rest.items())
        for at, packed in items:
            for data in [packed] if isinstance(packed, bytes) else packed.values():
                channel, record = unpack(data)
                records.append((Key(at, channel), record))
        return records

    def watch(self, key: Key) -> AbstractAsyncContextManager[asyncio.Event]:
        return self._watchers.watch(key)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    def _get(self, key: Key, now: float) -> Record | None:
        record = self._leased.get(key)
        if record is None:
            rest = self._at_rest.get(key.uid)
            if rest is None:
                return None
            if isinstance(rest, bytes):
                channel, record = unpack(rest)
                if channel != key.channel:
                    return None
            else:
                data = rest.get(key.channel)
                if data is None:
                    return None
                record = unpack(data)[1]
        if record.expires_at <= now:
            self._delete(key)
            return None
        return record

    def _put(self, key: Key, record: Record, now: float) -> None:
        if record.lease is not None:
            self._remove_at_rest(key)
            self._leased[key] = record
        else:
            self._leased.pop(key, None)
            data = pack(key.channel, record)
            rest = self._at_rest.get(key.uid)
            if rest is None:
                self._at_rest[key.uid] = data
                self._packed += 1
            elif isinstance(rest, bytes):
                channel = unpack(rest)[0]
                if channel == key.channel:
                    self._at_rest[key.uid] = data
                else:
                    self._at_rest[key.uid] = {channel: rest, key.channel: data}
                    self._packed += 1
            else:
                if key.channel not in rest:
                    self._packed += 1
                rest[key.channel] = data
            self._at_rest.move_to_end(key.uid)
        self._watchers.notify(key)
        self._sweep(now)

    def _delete(self, key: Key) -> None:
        self._leased.pop(key, None)
        self._remove_at_rest(key)

    def _remove_at_rest(self, key: Key) -> None:
        rest = self._at_rest.get(key.uid)
        if rest is None:
            return
        if isinstance(rest, bytes):
            if unpack(rest)[0] == key.channel:
                del self._at_rest[key.uid]
                self._packed -= 1
        elif rest.pop(key.channel, None) is not None:
            self._packed -= 1
            if len(rest) == 1:
                self._at_rest[key.uid] = next(iter(rest.values()))

    def _channels(self, uid: str) -> set[str]:
        known = {key.channel for key in self._leased if key.uid == uid}
        rest = self._at_rest.get(uid)
        if isinstance(rest, bytes):
            known.add(unpack(rest)[0])
        elif rest is not None:
            known.update(rest)
        return known

    def _sweep(self, now: float) -> None:
        for _ in range(_SWEEP_PER_WRITE):
            if not self._at_rest:
                return
            uid, rest = next(iter(self._at_rest.items()))
            front, until = self._front
            if uid is front and now < until:
                return  # the oldest record is known to live on: nothing to unpack
            packed = [rest] if isinstance(rest, bytes) else list(rest.values())
            records = [unpack(data) for data in packed]
            live = [record.expires_at for _, record in records if record.expires_at > now]
            if live:
                # The sweep stops at the oldest uid still alive; its expired channels go.
                for channel, record in records:
                    if record.expires_at <= now:
                        self._remove_at_rest(Key(uid, channel))
                self._front = (uid, max(live))
                return
            del self._at_rest[uid]
            self._packed -= len(records)
