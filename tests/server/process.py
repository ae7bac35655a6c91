"""The real `sendonce-server` and `sendonce` commands as child processes, for tests.

    async with Children() as children:
        sidecar = await children.sidecar("--listen", "", "--unix-socket", str(path))
        await sidecar.until_serving()                       # a health check, wait_for_ready
        sidecar.process.send_signal(signal.SIGTERM)
        await sidecar.stderr.wait_for("shutting down")      # a log line, as it is written
        assert await sidecar.exit_code() == 0

        replica = await children.replica("--store", redis_url)  # a free TCP port, serving
        async with replica.stub() as stub: ...               # a DeliveryService stub
        health = HealthWatch(replica.target, "sendonce.v1.DeliveryService")  # a Watch stream
        await health.reached(NOT_SERVING)                    # a status it sent, as it arrives

Both output streams are read as they are written, so a child never blocks on a full pipe and a
test can await a line instead of sleeping. Every child still running at the end is killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sendonce.v1 import delivery_pb2_grpc

# Generous: a child first imports grpc, pydantic and protobuf, on a possibly busy CI machine.
STARTUP_TIMEOUT = 20.0
EXIT_TIMEOUT = 20.0


class Lines:
    """Every line a child writes on one stream, collected by a reader task as it arrives."""

    def __init__(self, stream: asyncio.StreamReader | None) -> None:
        assert stream is not None, "the stream must be a pipe"
        self.lines: list[str] = []
        self.ended = False
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read(stream))

    @property
    def text(self) -> str:
        return "".join(f"{line}\n" for line in self.lines)

    async def wait_for(self, text: str, timeout: float = 10.0) -> str:
        """The first line containing `text`, once written; fails if the stream ends without it."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: self.ended or self._find(text) is not None)
        except TimeoutError:
            raise AssertionError(f"no line with {text!r} after {timeout}s:\n{self.text}") from None
        line = self._find(text)
        if line is None:
            raise AssertionError(f"the stream ended without a line with {text!r}:\n{self.text}")
        return line

    async def end(self) -> None:
        """Return once the child has closed the stream (it always does when it exits)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.ended)

    def stop(self) -> None:
        self._reader.cancel()

    def _find(self, text: str) -> str | None:
        return next((line for line in self.lines if text in line), None)

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.readline():
            async with self._changed:
                self.lines.append(chunk.decode(errors="replace").rstrip("\r\n"))
                self._changed.notify_all()
        async with self._changed:
            self.ended = True
            self._changed.notify_all()


@dataclass
class Child:
    """A started child process with its output collected line by line."""

    process: asyncio.subprocess.Process
    stdout: Lines
    stderr: Lines

    async def exit_code(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Wait for the child to exit and its output to be read to the end."""
        try:
            async with asyncio.timeout(timeout):
                code = await self.process.wait()
                await self.stdout.end()
                await self.stderr.end()
        except TimeoutError:
            raise AssertionError(
                f"still running after {timeout}s; stderr so far:\n{self.stderr.text}"
            ) from None
        return code

    async def terminate(self, timeout: float = EXIT_TIMEOUT) -> int:
        """SIGTERM, then the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return await self.exit_code(timeout)

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self.stdout.stop()
        self.stderr.stop()


@dataclass
class Sidecar(Child):
    """A `sendonce-server` child; `target` is the gRPC address a channel connects to."""

    target: str = ""

    async def until_serving(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Return once the health service answers SERVING; fail at once if the child exits."""
        async with grpc.aio.insecure_channel(self.target) as channel:
            check = asyncio.ensure_future(
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""),
                    wait_for_ready=True,
                    timeout=timeout,
                )
            )
            exited = asyncio.ensure_future(self.process.wait())
            await asyncio.wait({check, exited}, return_when=asyncio.FIRST_COMPLETED)
            exited.cancel()
            if not check.done():
                check.cancel()
                await self.stderr.end()
                raise AssertionError(
                    f"sendonce-server exited with {self.process.returncode} before serving:\n"
                    f"{self.stderr.text}"
                )
            answer = await check
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    @asynccontextmanager
    async def stub(self) -> AsyncIterator[delivery_pb2_grpc.DeliveryServiceAsyncStub]:
        """A DeliveryService stub on a channel of its own, closed when the block ends."""
        async with grpc.aio.insecure_channel(self.target) as channel:
            yield delivery_pb2_grpc.DeliveryServiceStub(channel)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthWatch:
    """Follows a sidecar's health with the Watch stream, so a test awaits a change, not a poll.

    `statuses` lists every status the stream sent. Close it (or use it as an async context
    manager) to end the stream.
    """

    def __init__(self, target: str, service: str = "") -> None:
        self.statuses: list[int] = []
        self._changed = asyncio.Condition()
        self._channel = grpc.aio.insecure_channel(target)
        request = health_pb2.HealthCheckRequest(service=service)
        self._task = asyncio.create_task(self._follow(request))

    async def reached(self, status: int, after: int = 0, timeout: float = 10.0) -> int:
        """Wait until the stream sent `status` at an index >= `after`; returns that index."""

        def found() -> int | None:
            return next(
                (i for i, seen in enumerate(self.statuses) if i >= after and seen == status), None
            )

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: found() is not None or self._task.done())
        except TimeoutError:
            raise AssertionError(
                f"health never reached {status} after {timeout}s: {self.statuses}"
            ) from None
        index = found()
        if index is None:
            raise AssertionError(f"the health stream ended before {status}: {self.statuses}")
        return index

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _follow(self, request: health_pb2.HealthCheckRequest) -> None:
        try:
            stream = health_pb2_grpc.HealthStub(self._channel).Watch(request, wait_for_ready=True)
            async for answer in stream:
                async with self._changed:
                    self.statuses.append(answer.status)
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self._changed.notify_all()


def child_environment() -> dict[str, str]:
    """This process's environment without SENDONCE_* variables, which would change the flags.

    PYTHONUNBUFFERED goes too: a line the sidecar forgets to flush must stay unseen, as it would
    in a container where nobody set it.
    """
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SENDONCE_") and name != "PYTHONUNBUFFERED"
    }


def free_tcp_port() -> int:
    """A port of 127.0.0.1 that was free a moment ago (bound to port 0, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Children:
    """Starts children and kills whichever are still running when the block ends."""

    def __init__(self) -> None:
        self._started: list[Child] = []

    async def run(self, module: str, *args: str) -> Child:
        """Start `python -m module args...` (stdin closed, stdout and stderr collected)."""
        process = await self._spawn(module, args)
        child = Child(process, Lines(process.stdout), Lines(process.stderr))
        self._started.append(child)
        return child

    async def sidecar(self, *args: str, target: str) -> Sidecar:
        """Start `sendonce-server args...`; `target` is where its gRPC service will be."""
        process = await self._spawn("sendonce_server", args)
        child = Sidecar(process, Lines(process.stdout), Lines(process.stderr), target)
        self._started.append(child)
        return child

    async def replica(self, *args: str) -> Sidecar:
        """A serving `sendonce-server --listen 127.0.0.1:0 args...`: the port it logs is used.

        The kernel picks the port, so replicas started side by side never race for one.
        """
        sidecar = await self.sidecar("--listen", "127.0.0.1:0", *args, target="")
        line = await sidecar.stderr.wait_for("serving on ", timeout=STARTUP_TIMEOUT)
        sidecar.target = line.split("serving on ", 1)[1].split(";")[0].split(" and ")[0]
        await sidecar.until_serving()
        return sidecar

    async def cli(self, *args: str) -> tuple[int, str, str]:
        """Run `sendonce args...` to its end: exit code, stdout, stderr."""
        child = await self.run("sendonce", *args)
        code = await child.exit_code()
        return code, child.stdout.text, child.stderr.text

    async def kill_all(self) -> None:
        for child in self._started:
            await child.kill()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.kill_all()

    @staticmethod
    async def _spawn(module: str, args: Sequence[str]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_environment(),
        )
