"""A real HTTP receiver on 127.0.0.1 for tests: records every request, replies as programmed.

    async with HttpReceiver() as receiver:                  # answers 200 to everything
        receiver.respond(Reply(503, headers={"Retry-After": "7"}))
        receiver.respond(500, 500, 200)                     # a sequence; the last one repeats
        receiver.hold()                                     # requests wait until release()
        ...                                                 # point a channel at receiver.url
        await receiver.wait_for_hits(1)                     # arrived (held ones included)
        receiver.release()
        assert receiver.hits == 1 and receiver.requests[0].json()["uid"] == "u1"

Requests are recorded when they arrive, before any delay or hold, so `wait_for_hits` is the way to
know that an attempt is in flight. No sleeps are needed to synchronise with it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import pytest_asyncio
from aiohttp import web


@dataclass(frozen=True, slots=True)
class Reply:
    """What the receiver answers: status, extra headers, body, and a delay before answering."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | str = b""
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as it arrived. Header names are lower-cased; `path` excludes the query."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    arrived_at: float  # time.monotonic()
    client_port: int  # the same port for two requests means a reused connection

    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver:
    """A real HTTP server on a free port of 127.0.0.1; use it as an async context manager."""

    def __init__(self, *replies: Reply | int) -> None:
        self.requests: list[RecordedRequest] = []
        self._replies: list[Reply] = [Reply()]
        self._choose: Callable[[RecordedRequest], Reply | int] | None = None
        self.respond(*replies or (200,))
        self._gate = asyncio.Event()
        self._gate.set()
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:41234 (any path is accepted)."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def hits(self) -> int:
        """How many requests have arrived so far (including those still held or delayed)."""
        return len(self.requests)

    def respond(self, *replies: Reply | int) -> None:
        """Answer every following request with these replies in turn; the last one repeats."""
        if not replies:
            raise ValueError("respond() needs at least one reply")
        self._replies = [Reply(reply) if isinstance(reply, int) else reply for reply in replies]

    def respond_with(self, choose: Callable[[RecordedRequest], Reply | int]) -> None:
        """Answer every following request with what `choose` says of it."""
        self._choose = choose

    def hold(self) -> None:
        """Keep requests that arrive from now on waiting, unanswered, until `release()`."""
        self._gate.clear()

    def release(self) -> None:
        """Let every held request (and every later one) get its reply."""
        self._gate.set()

    async def wait_for_hits(self, count: int, timeout: float = 10.0) -> None:
        """Return once at least `count` requests have arrived; TimeoutError after `timeout`."""
        try:
            async with asyncio.timeout(timeout), self._arrived:
                await self._arrived.wait_for(lambda: self.hits >= count)
        except TimeoutError:
            raise TimeoutError(f"expected {count} requests, {self.hits} arrived") from None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        self.release()  # held handlers finish instead of stalling the shutdown
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers={name.lower(): value for name, value in request.headers.items()},
            body=await request.read(),
            arrived_at=time.monotonic(),
            client_port=peer[1] if peer else 0,
        )
        # A sequence is consumed one reply per request, in order of arrival.
        reply = self._replies[0]
        if len(self._replies) > 1:
            self._replies = self._replies[1:]
        if self._choose is not None:
            chosen = self._choose(recorded)
            reply = Reply(chosen) if isinstance(chosen, int) else chosen
        async with self._arrived:
            self.requests.append(recorded)
            self._arrived.notify_all()
        await self._gate.wait()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        body = reply.body.encode() if isinstance(reply.body, str) else reply.body
        return web.Response(status=reply.status, headers=dict(reply.headers), body=body)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens, so connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest_asyncio.fixture
async def http_receiver() -> AsyncIterator[HttpReceiver]:
    """A started HttpReceiver answering 200; list this module in `pytest_plugins` to use it."""
    async with HttpReceiver() as receiver:
        yield receiver
