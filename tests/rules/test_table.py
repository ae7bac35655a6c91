"""Every row of cases.py against the pure model and every store (the Lua script on a single
Redis, a Cluster and a Sentinel included)."""

from __future__ import annotations

import pytest

from sendonce_server.engine.ports import Store

from .cases import CASES, Case
from .ops import KEY, T0, Complete, Reserve, Run, apply, view
from .stores import any_store

__all__ = ["any_store"]


@pytest.mark.parametrize("case", [pytest.param(case, id=case.name) for case in CASES])
async def test_rule(any_store: Store, case: Case) -> None:
    run = Run()
    for op in case.before:
        await apply(any_store, run, op)
    answer = await apply(any_store, run, case.then)
    record = view(await any_store.read(KEY, T0 + case.then.at))

    assert answer == case.answer
    if case.gone:
        assert record is None
    else:
        assert record is not None, "no record after the operation"
        assert {name: record[name] for name in case.after} == case.after


async def test_clear_passes_over_a_record_at_its_expiry_before_its_ttl_fired(
    any_store: Store,
) -> None:
    """Redis drops a key when its TTL fires, rounded up to the millisecond: at its `exp` the
    record may still be there, and is gone for Clear all the same (the script checks `exp`)."""
    run = Run()
    await apply(any_store, run, Reserve(0))
    await apply(any_store, run, Complete(1))
    record = await any_store.read(KEY, T0 + 2)
    assert record is not None

    assert await any_store.clear(KEY.uid, [], False, record.expires_at) == ([], [])


def test_case_names_are_unique() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))
