"""Every row of cases.py against the pure model and every store (the Lua script on a single
Redis, a Cluster and a Sentinel included)."""

from __future__ import annotations

import pytest

from sendonce_server.engine.ports import Store

from .cases import CASES, Case
from .ops import KEY, T0, Run, apply, view
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


def test_case_names_are_unique() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))
