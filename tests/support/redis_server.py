"""A real Redis for the tests: SENDONCE_TEST_REDIS_URL, or a redis-server started on a free port.

Under CI=true a missing Redis fails the run instead of skipping: the Redis suite must run there.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000) is valid and free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@dataclass
class RedisServer:
    """A redis-server process this test run owns; it can be stopped and started again."""

    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    # Log every write to an append-only file, fsynced before Redis answers it, so a kill -9
    # and a start() on the same workdir lose no acknowledged write.
    durable: bool = False
    # A node of a Redis Cluster (its config file lives in the workdir).
    cluster: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--dir",
                str(self.workdir),
                *self._persistence(),
                *(["--cluster-enabled", "yes"] if self.cluster else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server on port {self.port} exited with {self.process.returncode}"
                    ) from None
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.01)  # a process starting up announces nothing to await

    def _persistence(self) -> list[str]:
        if not self.durable:
            return ["--appendonly", "no"]
        return ["--appendonly", "yes", "--appendfsync", "always"]

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"Redis is required under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis URL shared by the session; tests isolate themselves with key prefixes."""
    if url := os.environ.get("SENDONCE_TEST_REDIS_URL"):
        yield url
        return
    if shutil.which("redis-server") is None:
        _missing("redis-server is not on PATH and SENDONCE_TEST_REDIS_URL is not set")
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop and restart it."""
    if shutil.which("redis-server") is None:
        _missing("redis-server is not on PATH")
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """As `own_redis`, with every acknowledged write on disk: its state survives stop/start."""
    if shutil.which("redis-server") is None:
        _missing("redis-server is not on PATH")
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(free_port(), workdir, durable=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A three-master Redis Cluster of this test run, as a redis+cluster:// URL."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        _missing("redis-server and redis-cli are needed for a Redis Cluster")
    nodes = [
        RedisServer(free_cluster_port(), tmp_path_factory.mktemp(f"cluster-{n}"), cluster=True)
        for n in range(3)
    ]
    try:
        for node in nodes:
            node.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 20
        # Every node, not the first only: a node that has not heard of all the slots yet
        # answers CLUSTERDOWN to the first test that reaches it.
        for node in nodes:
            while (
                b"cluster_state:ok"
                not in subprocess.run(
                    ["redis-cli", "-p", str(node.port), "cluster", "info"],
                    capture_output=True,
                    check=True,
                ).stdout
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Redis Cluster node {node.port} is not cluster_state:ok")
                time.sleep(0.05)  # the nodes gossip the new slots; nothing announces the end
        yield f"redis+cluster://127.0.0.1:{nodes[0].port}"
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="session")
def redis_sentinel_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis master watched by one Sentinel, as a redis+sentinel:// URL."""
    if shutil.which("redis-server") is None:
        _missing("redis-server is needed for a Redis Sentinel")
    master = RedisServer(free_port(), tmp_path_factory.mktemp("sentinel-master"))
    workdir = tmp_path_factory.mktemp("sentinel")
    port = free_port()
    config = workdir / "sentinel.conf"  # Sentinel rewrites its own configuration file
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor sendonce 127.0.0.1 {master.port} 1\n"
    )
    sentinel = None
    try:
        master.start()
        sentinel = subprocess.Popen(
            ["redis-server", str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        asked = ["redis-cli", "-p", str(port), "sentinel", "get-master-addr-by-name", "sendonce"]
        while str(master.port).encode() not in subprocess.run(asked, capture_output=True).stdout:
            if time.monotonic() > deadline:
                raise TimeoutError("the Sentinel did not come to know its master")
            time.sleep(0.05)  # a starting sentinel announces nothing to await
        yield f"redis+sentinel://127.0.0.1:{port}/sendonce"
    finally:
        if sentinel is not None:
            sentinel.kill()
            sentinel.wait()
        master.stop()
