"""Random sequences of reserve, complete, lease expiry, clear, forced clear and read, applied to
each store and to the pure model with the same times, compared step by step: the answers, and
every key's record as the rules see it (ops.view)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sendonce_server.engine.model import Key
from sendonce_server.engine.ports import Store

from .model import ModelStore
from .ops import (
    GRACE,
    LEASE,
    RETENTION,
    T0,
    Clear,
    Complete,
    Op,
    Read,
    Reserve,
    Run,
    apply,
    expire_by_ttl,
    view,
)
from .stores import STORES, make_store

KEYS = [Key("uid-a", "hook"), Key("uid-a", "mail"), Key("uid-b", "hook")]
# Few examples for Redis (a round trip per step), more for the in-process stores.
EXAMPLES = {"memory": 100, "sqlite": 40, "redis": 25, "redis-cluster": 15, "redis-sentinel": 15}
T = TypeVar("T")


class Differential(RuleBasedStateMachine):
    """One store and the pure model, driven with the same operations at the same times."""

    make: Any = None  # set per store by the test: () -> Store

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store: Store = self.run(self._open())
        self.model = ModelStore(retention=RETENTION, clear_grace=GRACE)
        self.now = 0.0
        self.runs = {key: (Run(), Run()) for key in KEYS}  # (store's, model's) reservations

    async def _open(self) -> Store:
        store: Store = type(self).make()
        return store

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def both(self, key: Key, op: Op) -> None:
        store_run, model_run = self.runs[key]
        for other in KEYS:  # Redis's TTLs, fired at the virtual time (see ops.expire_by_ttl)
            self.run(expire_by_ttl(self.store, other, T0 + self.now))
        expected = self.run(apply(self.model, model_run, op, key))
        answer = self.run(apply(self.store, store_run, op, key))
        assert answer == expected, (op, key)

    @rule(
        key=st.sampled_from(KEYS),
        persisted=st.sampled_from([0, 0, 0, 1, 2, 3, 5]),
        max_attempts=st.integers(1, 4),
        other_payload=st.sampled_from([False, False, False, False, True]),
        blocked=st.sampled_from([False, False, False, True]),
    )
    def reserve(
        self, key: Key, persisted: int, max_attempts: int, other_payload: bool, blocked: bool
    ) -> None:
        fingerprint = "fp-2" if other_payload else "fp-1"
        self.both(key, Reserve(self.now, persisted, max_attempts, fingerprint, blocked))

    @precondition(lambda self: any(run.reserved for run, _ in self.runs.values()))
    @rule(
        data=st.data(),
        result=st.sampled_from(["succeeded", "failed", "failed", "failed_permanent"]),
        delay=st.sampled_from([0.0, 5.0, 30.0]),
    )
    def complete(self, data: st.DataObject, result: str, delay: float) -> None:
        key = data.draw(st.sampled_from([k for k in KEYS if self.runs[k][0].reserved]))
        count = len(self.runs[key][0].reserved)
        which = data.draw(st.integers(0, count - 1))
        self.both(key, Complete(self.now, result, which, delay))

    @rule(seconds=st.sampled_from([1.0, 5.0, LEASE, 30.0, GRACE, RETENTION]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule(key=st.sampled_from(KEYS), force=st.booleans())
    def clear(self, key: Key, force: bool) -> None:
        self.both(key, Clear(self.now, force))

    @rule(key=st.sampled_from(KEYS))
    def read(self, key: Key) -> None:
        self.both(key, Read(self.now))

    @invariant()
    def every_record_agrees(self) -> None:
        now = T0 + self.now
        for key in KEYS:
            expected = view(self.run(self.model.read(key, now)))
            assert view(self.run(self.store.read(key, now))) == expected, key

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()


@pytest.mark.parametrize("kind", STORES)
def test_every_store_follows_the_model(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if kind.startswith("redis"):
        make_store(kind, request, tmp_path)  # start the Redis fixtures outside the machine

    class Machine(Differential):
        @staticmethod
        def make() -> Store:
            return make_store(kind, request, tmp_path)

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=EXAMPLES[kind],
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
