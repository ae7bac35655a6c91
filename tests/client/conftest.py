"""A fake sidecar for the client's tests: a real grpc.aio server with a scripted servicer.

The server runs on its own event loop in a background thread, so the blocking `Client`, the
`AsyncClient` (on the test's loop), the in-process CLI and a subprocess can all call it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import pytest
from google.protobuf.message import Message

from sendonce import (
    AsyncClient,
    AttemptCountResult,
    ClearResult,
    Client,
    DeliverResult,
    Notification,
)
from sendonce.v1 import delivery_pb2, delivery_pb2_grpc

M = TypeVar("M", bound=Message)
Context = grpc.aio.ServicerContext[Any, Any]


@pytest.fixture(autouse=True)
def _no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The clients read $SENDONCE_TOKEN: a value from the caller's shell must not leak in."""
    monkeypatch.delenv("SENDONCE_TOKEN", raising=False)


@dataclass(frozen=True)
class Call:
    """What the servicer saw of one RPC attempt."""

    method: str
    request: Message
    metadata: dict[str, str | bytes]
    time_remaining: float | None


class FakeServicer(delivery_pb2_grpc.DeliveryServiceServicer):
    """Records every call and answers with the canned responses, after the scripted aborts."""

    def __init__(self) -> None:
        self.deliver_response = delivery_pb2.DeliverResponse()
        self.attempt_count_response = delivery_pb2.AttemptCountResponse()
        self.clear_response = delivery_pb2.ClearResponse()
        # Served one per call, before any answer: e.g. two UNAVAILABLE then the response.
        self.aborts: list[tuple[grpc.StatusCode, str]] = []
        # Trailing metadata sent with the aborts (e.g. grpc-status-details-bin).
        self.abort_trailer: tuple[tuple[str, str | bytes], ...] = ()
        # Never answer: the client's deadline has to end the call.
        self.hang = False
        self.calls: list[Call] = []

    def last(self, kind: type[M]) -> M:
        """The request of the most recent call of this request type."""
        for call in reversed(self.calls):
            if isinstance(call.request, kind):
                return call.request
        raise AssertionError(f"no {kind.__name__} received")

    async def Deliver(
        self, request: delivery_pb2.DeliverRequest, context: Context
    ) -> delivery_pb2.DeliverResponse:
        await self._serve("Deliver", request, context)
        return self.deliver_response

    async def AttemptCount(
        self, request: delivery_pb2.AttemptCountRequest, context: Context
    ) -> delivery_pb2.AttemptCountResponse:
        await self._serve("AttemptCount", request, context)
        return self.attempt_count_response

    async def Clear(
        self, request: delivery_pb2.ClearRequest, context: Context
    ) -> delivery_pb2.ClearResponse:
        await self._serve("Clear", request, context)
        return self.clear_response

    async def _serve(self, method: str, request: Message, context: Context) -> None:
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        self.calls.append(Call(method, request, metadata, context.time_remaining()))
        if self.aborts:
            code, details = self.aborts.pop(0)
            await context.abort(code, details, trailing_metadata=self.abort_trailer)
        if self.hang:
            await asyncio.Event().wait()


def assert_deadline(remaining: float | None, timeout: float) -> None:
    """The servicer saw a deadline of about `timeout` seconds (gRPC rounds it up slightly)."""
    assert remaining is not None
    assert timeout - 2 < remaining <= timeout + 0.1


@dataclass
class RunningServer:
    address: str
    servicer: FakeServicer = field(repr=False)


@contextmanager
def serve(
    address: str, credentials: grpc.ServerCredentials | None = None
) -> Iterator[RunningServer]:
    """Run a FakeServicer on `address` (port 0 picks a free one) in a background thread."""
    servicer = FakeServicer()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-sidecar", daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        delivery_pb2_grpc.add_DeliveryServiceServicer_to_server(servicer, server)
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    bound = address if address.startswith("unix:") else f"{address.rsplit(':', 1)[0]}:{port}"
    try:
        yield RunningServer(bound, servicer)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with serve("127.0.0.1:0") as running:
        yield running


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[RunningServer]:
    with serve(f"unix:{tmp_path / 'sendonce.sock'}") as running:
        yield running


class Twin:
    """Drives a Client or an AsyncClient through one awaitable interface.

    Parametrising over both proves the twins share one vocabulary: same calls, same results.
    """

    def __init__(self, client: Client | AsyncClient) -> None:
        self.client = client

    async def deliver(
        self, uid: str, channel: str, notification: Notification, **kwargs: Any
    ) -> DeliverResult:
        if isinstance(self.client, AsyncClient):
            return await self.client.deliver(uid, channel, notification, **kwargs)
        return self.client.deliver(uid, channel, notification, **kwargs)

    async def attempt_count(self, uid: str, channel: str, **kwargs: Any) -> AttemptCountResult:
        if isinstance(self.client, AsyncClient):
            return await self.client.attempt_count(uid, channel, **kwargs)
        return self.client.attempt_count(uid, channel, **kwargs)

    async def clear(self, uid: str, *channels: str, **kwargs: Any) -> ClearResult:
        if isinstance(self.client, AsyncClient):
            return await self.client.clear(uid, channels, **kwargs)
        return self.client.clear(uid, channels, **kwargs)


Connect = Callable[..., Twin]


@pytest.fixture(params=["sync", "async"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Connect]:
    """A factory of Twins of one kind (Client or AsyncClient), closed after the test."""
    opened: list[Client | AsyncClient] = []

    def factory(*args: Any, **kwargs: Any) -> Twin:
        kind = Client if request.param == "sync" else AsyncClient
        client = kind(*args, **kwargs)
        opened.append(client)
        return Twin(client)

    yield factory
    for client in opened:
        if isinstance(client, AsyncClient):
            await client.close()
        else:
            client.close()


@pytest.fixture
def twin(connect: Connect, server: RunningServer) -> Twin:
    return connect(server.address)
