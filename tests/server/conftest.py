"""A real sidecar in this process: grpc.aio on a free loopback port, real channels."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest_asyncio

from sendonce.v1 import delivery_pb2_grpc
from sendonce_server.config import ReceiversFile, ServerSettings
from sendonce_server.server import Sidecar, start


@dataclass
class Running:
    sidecar: Sidecar
    channel: grpc.aio.Channel
    stub: delivery_pb2_grpc.DeliveryServiceAsyncStub

    @property
    def address(self) -> str:
        return self.sidecar.addresses[0]


StartSidecar = Callable[..., Awaitable[Running]]


@pytest_asyncio.fixture
async def start_sidecar() -> AsyncIterator[StartSidecar]:
    """Start a sidecar with the given receivers (the TOML file's structure, as a dict)."""
    running: list[Running] = []

    async def _start(receivers: dict[str, Any], **settings: Any) -> Running:
        config = ReceiversFile.model_validate(receivers)
        sidecar = await start(ServerSettings(listen="127.0.0.1:0", **settings), config)
        channel = grpc.aio.insecure_channel(sidecar.addresses[0])
        started = Running(sidecar, channel, delivery_pb2_grpc.DeliveryServiceStub(channel))
        running.append(started)
        return started

    yield _start
    for started in running:
        await started.channel.close(None)
        await started.sidecar.stop()
