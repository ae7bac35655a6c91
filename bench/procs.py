"""The processes a run measures: sendonce-server, the echo floor, redis-server; /proc readings."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DELIVERY_SERVICE = "sendonce.v1.DeliveryService"
ROOT = Path(__file__).resolve().parent.parent  # the repository, for `python -m bench.*`
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# A client that polls a server still starting: reconnect every few ms, not after gRPC's 1 s.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 5),
    ("grpc.min_reconnect_backoff_ms", 5),
    ("grpc.max_reconnect_backoff_ms", 20),
]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rpartition(")")[2].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without SENDONCE_* / OTEL_* (they would change what is measured)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SENDONCE_", "OTEL_"))
    }
    env.update(extra or {})
    return env


@dataclass
class Server:
    """A started server process and the address its clients use."""

    name: str
    process: subprocess.Popen[bytes]
    target: str
    started_at: float  # time.perf_counter() just before the process was spawned
    log_path: Path | None = None
    startup_seconds: float | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _spawn(args: Sequence[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(  # noqa: S603  (our own interpreter and scripts)
            list(args), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
        )


def sendonce_command() -> list[str]:
    """The installed console script next to this interpreter (what a container runs)."""
    script = Path(sys.executable).parent / "sendonce-server"
    return [str(script)] if script.exists() else [sys.executable, "-m", "sendonce_server"]


def sendonce_help() -> str:
    done = subprocess.run(  # noqa: S603
        [*sendonce_command(), "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    return done.stdout + done.stderr


def listen_args(transport: str, workdir: Path, name: str) -> tuple[list[str], str]:
    """Flags that make a server listen on one transport, and the clients' target."""
    if transport == "unix":
        path = workdir / f"{name}.sock"
        return ["--listen", "", "--unix-socket", str(path)], f"unix:{path}"
    port = free_port()
    return ["--listen", f"127.0.0.1:{port}"], f"127.0.0.1:{port}"


async def start_sendonce(
    name: str,
    transport: str,
    workdir: Path,
    *,
    store: str,
    config: Path,
    flags: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    command: Sequence[str] | None = None,
) -> Server:
    """Start sendonce-server (or `command`, taking its flags) and wait until it is SERVING."""
    listen, target = listen_args(transport, workdir, name)
    args = [
        *(command or sendonce_command()),
        *listen,
        "--config",
        str(config),
        "--store",
        store,
        "--shutdown-grace",
        "2",
        *flags,
    ]
    log_path = workdir / f"{name}.log"
    started = time.perf_counter()
    server = Server(name, _spawn(args, log_path, child_environment(env)), target, started, log_path)
    try:
        await _until_serving(server, DELIVERY_SERVICE, timeout)
    except BaseException:
        server.stop()
        raise
    return server


async def start_echo(
    name: str, transport: str, workdir: Path, *, otlp: bool = False, timeout: float = 30.0
) -> Server:
    """Start the echo floor (bench/echo_server.py) and wait until it answers health checks."""
    listen, target = listen_args(transport, workdir, name)
    args = [sys.executable, "-m", "bench.echo_server", *listen]
    if otlp:
        args.append("--otlp")
    log_path = workdir / f"{name}.log"
    started = time.perf_counter()
    env = child_environment({"PYTHONPATH": str(ROOT)})
    server = Server(name, _spawn(args, log_path, env), target, started, log_path)
    try:
        await _until_serving(server, "", timeout)
    except BaseException:
        server.stop()
        raise
    return server


async def _until_serving(server: Server, service: str, timeout: float) -> None:
    """Poll health until `service` is SERVING; record the time since the spawn."""
    deadline = time.perf_counter() + timeout
    async with grpc.aio.insecure_channel(server.target, options=FAST_RECONNECT) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"{server.name} exited with {server.process.returncode} before serving:\n"
                    f"{server.log_tail()}"
                )
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise RuntimeError(f"{server.name} not SERVING after {timeout}s")
            try:
                answer = await stub.Check(
                    health_pb2.HealthCheckRequest(service=service),
                    wait_for_ready=True,
                    timeout=min(remaining, 0.5),
                )
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.005)  # not listening yet, or the service not yet set
                continue
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                server.startup_seconds = time.perf_counter() - server.started_at
                return
            await asyncio.sleep(0.005)


@dataclass
class Redis:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def used_memory(self) -> int:
        with self._client() as client:
            return int(client.info("memory")["used_memory"])

    def keys(self) -> int:
        with self._client() as client:
            return int(client.dbsize())

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _client(self) -> Any:
        import redis  # the server's own dependency

        return redis.Redis(port=self.port, single_connection_client=True)


def start_redis(workdir: Path) -> Redis | None:
    """A redis-server of the run's own on a free port; None when it is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    process = subprocess.Popen(  # noqa: S603
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return Redis(process, port)
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise
        time.sleep(0.01)  # redis-server announces nothing to await
