"""Health follows the store: NOT_SERVING while it cannot be reached, SERVING when it is back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from .engine.ports import Store

log = logging.getLogger("sendonce.health")


async def follow_store(
    store: Store,
    health: HealthServicer,
    services: Sequence[str],
    interval: float,
    serving: bool = True,
) -> None:
    """Runs until cancelled; logs each change so an operator sees outages begin and end."""
    while True:
        await asyncio.sleep(interval)
        reachable = await store.ping()
        if reachable == serving:
            continue
        serving = reachable
        status = health_pb2.HealthCheckResponse.SERVING
        if not reachable:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for service in services:
            await health.set(service, status)
        if reachable:
            log.info("store reachable again: serving")
        else:
            log.warning("store unreachable: not serving (Deliver answers UNAVAILABLE)")
