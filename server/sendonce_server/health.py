"""Health follows the store: NOT_SERVING while it cannot be reached, SERVING when it is back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from .api import refusals
from .engine.ports import Store
from .status import Readiness

log = logging.getLogger("sendonce.health")


async def follow_store(
    store: Store,
    health: HealthServicer,
    services: Sequence[str],
    interval: float,
    readiness: Readiness,
) -> None:
    """Runs until cancelled; logs each change so an operator sees outages begin and end.

    `readiness` is what the admin port's /readyz and the store metrics read.
    """
    while True:
        await asyncio.sleep(interval)
        reachable = await store.ping()
        if not reachable:
            readiness.store_check_failures += 1
        if reachable == readiness.store_reachable:
            continue
        readiness.store_reachable = reachable
        status = health_pb2.HealthCheckResponse.SERVING
        if not reachable:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for service in services:
            await health.set(service, status)
        if reachable:
            log.info("store reachable again: serving")
        else:
            log.warning("store unreachable: not serving (Deliver answers UNAVAILABLE)")


class BoundedHealth(HealthServicer):  # type: ignore[misc]  # grpc_health ships no types
    """The standard health service, with at most `max_watchers` Watch streams open at once.

    Health is open to every peer (kubelet's probe sends no token), so a Watch stream, which
    lives until its caller leaves, is the one thing an unauthenticated peer could hold for
    ever. Check is never limited: probes must answer under any load.
    """

    def __init__(self, max_watchers: int) -> None:
        super().__init__()
        self.max_watchers = max_watchers
        self.watchers = 0

    async def Watch(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ],
    ) -> None:
        if self.watchers >= self.max_watchers:
            await refusals.abort(context, refusals.too_many_watchers(self.max_watchers))
        self.watchers += 1
        try:
            await super().Watch(request, context)
        finally:
            self.watchers -= 1

    async def List(
        self,
        request: health_pb2.HealthListRequest,
        context: grpc.aio.ServicerContext[
            health_pb2.HealthListRequest, health_pb2.HealthListResponse
        ],
    ) -> health_pb2.HealthListResponse:
        """Every service's status. grpc_health's asyncio servicer lacks List: the generated
        stub it inherits is synchronous and raises, logging a traceback per call."""
        return health_pb2.HealthListResponse(
            statuses={
                service: health_pb2.HealthCheckResponse(status=status)
                for service, status in self._server_status.items()
            }
        )
