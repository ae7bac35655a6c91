"""The load generator: many unary calls in flight on one grpc.aio channel, raw bytes both ways.

Two shapes:
- closed loop (`closed_loop`): `concurrency` workers, each sends its next call as soon as the
  last one answered; measures the most the pair client+server can do (RPS) and the latency at
  that load.
- fixed rate (`fixed_rate`): one call every 1/rate seconds whatever the answers do (open loop);
  latency counts from the moment a call was due, so a stall is not hidden (no coordinated
  omission). Used at 1000 RPS to compare with Dapr's published per-1000-RPS overhead.

Requests are serialised by the workload (bytes in, bytes out), so the client spends the same
on every scenario and the echo floor parses nothing. Server CPU is read from /proc around the
measured window only (after the warm-up).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

# The sendonce client's default Deliver deadline: the server computes its time budget from it.
CALL_TIMEOUT = 30.0


@dataclass(frozen=True)
class Workload:
    """What a scenario sends: the method, the i-th request, and a label for each answer."""

    method: str
    request: Callable[[int], bytes]
    label: Callable[[bytes], str]


@dataclass
class LoadResult:
    calls: int
    seconds: float
    latencies: list[float] = field(repr=False)
    outcomes: dict[str, int]
    errors: dict[str, int]
    server_cpu: float
    client_cpu: float
    extra_cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """Latency in ms at quantile q (nearest rank)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))
        return ordered[index] * 1000

    def server_cpu_per_1000(self) -> float:
        return self.server_cpu / self.calls * 1000 if self.calls else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.percentile(0.50), 3),
            "p90_ms": round(self.percentile(0.90), 3),
            "p99_ms": round(self.percentile(0.99), 3),
            "server_cpu_s": round(self.server_cpu, 3),
            "server_cpu_s_per_1000": round(self.server_cpu_per_1000(), 4),
            "client_cpu_s": round(self.client_cpu, 3),
            "client_cores": round(self.client_cpu / self.seconds, 2) if self.seconds else None,
            "server_cores": round(self.server_cpu / self.seconds, 2) if self.seconds else None,
            "extra_cpu_s": {name: round(value, 3) for name, value in self.extra_cpu.items()},
            "outcomes": self.outcomes,
            "errors": self.errors,
        }


CpuProbe = Callable[[], dict[str, float]]


def _client_cpu() -> float:
    times = os.times()
    return times.user + times.system


class _Window:
    """The measured window: CPU and time readings at its start and end."""

    def __init__(self, probe: CpuProbe) -> None:
        self.probe = probe
        self.open = False
        self.started = self.ended = 0.0
        self.cpu_start: dict[str, float] = {}
        self.cpu_end: dict[str, float] = {}
        self.client_start = self.client_end = 0.0

    def begin(self) -> None:
        self.cpu_start = self.probe()
        self.client_start = _client_cpu()
        self.started = time.perf_counter()
        self.open = True

    def end(self) -> None:
        self.open = False
        self.ended = time.perf_counter()
        self.client_end = _client_cpu()
        self.cpu_end = self.probe()

    def result(
        self, calls: int, latencies: list[float], outcomes: Counter[str], errors: Counter[str]
    ) -> LoadResult:
        cpu = {name: self.cpu_end[name] - self.cpu_start[name] for name in self.cpu_start}
        server = cpu.pop("server")
        return LoadResult(
            calls=calls,
            seconds=self.ended - self.started,
            latencies=latencies,
            outcomes=dict(outcomes),
            errors=dict(errors),
            server_cpu=server,
            client_cpu=self.client_end - self.client_start,
            extra_cpu=cpu,
        )


async def closed_loop(
    channel: grpc.aio.Channel,
    workload: Workload,
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    cpu: CpuProbe,
    first: int = 0,
) -> tuple[LoadResult, int]:
    """Run `concurrency` workers for warmup + duration seconds; returns the result and the
    number of calls sent in all (warm-up included), so request indices can go on from there."""
    call = channel.unary_unary(workload.method, None, None)  # bytes both ways
    counter = itertools.count(first)
    window = _Window(cpu)
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    stop = False

    async def worker() -> None:
        perf = time.perf_counter
        while not stop:
            request = workload.request(next(counter))
            started = perf()
            try:
                answer = await call(request, timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as error:
                if window.open:
                    errors[error.code().name] += 1
                continue
            if window.open:
                latencies.append(perf() - started)
                outcomes[workload.label(answer)] += 1

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(warmup)
        window.begin()
        await asyncio.sleep(duration)
        window.end()
    finally:
        stop = True
        await asyncio.gather(*workers, return_exceptions=True)
    sent = next(counter) - first
    return window.result(len(latencies), latencies, outcomes, errors), sent


async def fixed_rate(
    channel: grpc.aio.Channel,
    workload: Workload,
    *,
    rate: float,
    warmup: float,
    duration: float,
    cpu: CpuProbe,
    first: int = 0,
) -> tuple[LoadResult, int]:
    """Send `rate` calls per second, each when due; latency counts from when it was due."""
    call = channel.unary_unary(workload.method, None, None)
    window = _Window(cpu)
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    running: set[asyncio.Task[None]] = set()
    perf = time.perf_counter

    async def one(index: int, due: float, measured: bool) -> None:
        try:
            answer = await call(workload.request(index), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            if measured:
                errors[error.code().name] += 1
            return
        if measured:
            latencies.append(perf() - due)
            outcomes[workload.label(answer)] += 1

    start = perf()
    measure_from = start + warmup
    end = measure_from + duration
    sent = 0
    while True:
        now = perf()
        if not window.open and now >= measure_from:
            window.begin()
        if now >= end:
            break
        due = start + sent / rate
        while due <= now and due < end:  # every call that is due, even after a stall
            task = asyncio.create_task(one(first + sent, due, due >= measure_from))
            running.add(task)
            task.add_done_callback(running.discard)
            sent += 1
            due = start + sent / rate
        await asyncio.sleep(max(0.0, min(due, end) - perf()))
    # Measured calls still in flight are waited for: their latency counts, their CPU too.
    await asyncio.gather(*running, return_exceptions=True)
    window.end()
    result = window.result(len(latencies), latencies, outcomes, errors)
    result.seconds = duration  # calls were sent over `duration`; the tail only finishes them
    return result, sent
