"""The scenarios of issue 6: their servers, their workloads, and the rounds that measure them.

Every server is started once, one at a time (so each start is timed on a quiet machine), and
stays up for the whole run; idle servers cost nothing measurable. The load then visits every
scenario in turn, for several rounds: a burst of load from another process on a shared machine
then lands on one round of each scenario, not on one scenario. A row shows the least disturbed
round (closed loop: the highest RPS; fixed rate: the lowest p90); the JSON keeps every round.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from . import load, profile, report, workloads
from .procs import (
    Redis,
    Server,
    child_environment,
    free_port,
    sendonce_help,
    start_echo,
    start_redis,
    start_sendonce,
)

ROOT = Path(__file__).resolve().parent.parent  # the repository
RESULTS = ROOT / "bench" / "results"
RECEIVERS = """\
# Written by the bench: one receiver that succeeds at once and sends nothing.
[[receivers]]
name = "noop"
type = "noop"
"""
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ATTEMPT_COUNT_KEYS = 1000


@dataclass
class Options:
    concurrency: int = 64
    duration: float = 3.0
    warmup: float = 1.0
    rounds: int = 2
    rate: float = 200
    hot_keys: int = 8
    records: int = 1_000_000
    transports: tuple[str, ...] = ("tcp", "unix")
    only: tuple[str, ...] = ()
    settle: float = 0.0
    profile: float = 0.0
    output: Path = RESULTS / "latest.json"


@dataclass
class Item:
    """One row of the table: a server, what is sent to it, and the rounds measured so far."""

    row: report.Row
    server: Server
    workload: load.Workload
    rate: float | None = None
    redis: Redis | None = None
    next_index: int = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def best(self) -> dict[str, Any] | None:
        if not self.rounds:
            return None
        if self.rate is None:
            return max(self.rounds, key=lambda r: r["rps"])
        return min(self.rounds, key=lambda r: r["p90_ms"])


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _CLOCK_TICKS


async def busy_elsewhere(seconds: float = 0.5) -> float:
    """Cores the machine is busy with, on average over `seconds` (this process is idle)."""
    before = machine_busy()
    await asyncio.sleep(seconds)
    return (machine_busy() - before) / seconds


def _run_id() -> int:
    return random.getrandbits(32)


class Bench:
    def __init__(self, options: Options, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.config = workdir / "receivers.toml"
        self.config.write_text(RECEIVERS)
        self.rows: list[report.Row] = []
        self.items: list[Item] = []
        self.servers: list[Server] = []
        self.summary: list[report.Row] = []
        self.startups: dict[str, list[float]] = {}
        self.notes: list[str] = []
        self.profile_text = ""
        self.redis: Redis | None = None
        self.sink: Server | None = None
        self.finishers: list[Callable[[], Awaitable[None]]] = []
        self.help_text = ""

    def wanted(self, name: str) -> bool:
        return not self.options.only or any(name.startswith(o) for o in self.options.only)

    # --- rows and servers ----------------------------------------------------------------

    def row(
        self, scenario: str, store: str, transport: str, rate: float | None = None, key: str = ""
    ) -> report.Row:
        shape = "closed" if rate is None else "fixed"
        base = key or (scenario if scenario == "echo" else f"{scenario}/{store}")
        row: report.Row = {
            "id": f"{base}/{transport}" + ("" if rate is None else f"@{rate:g}"),
            "scenario": scenario,
            "store": store,
            "transport": transport,
            "shape": shape,
            "rate": rate,
            "load": f"{self.options.concurrency} in flight" if rate is None else f"{rate:g}/s",
        }
        self.rows.append(row)
        return row

    def add(self, row: report.Row, server: Server, workload: load.Workload, **kw: Any) -> None:
        self.items.append(Item(row, server, workload, **kw))

    @contextlib.asynccontextmanager
    async def guarded(self, *rows: report.Row) -> AsyncIterator[None]:
        """A scenario that fails to set up becomes rows that say so; the run goes on."""
        try:
            yield
        except Exception as error:  # reported in the table, never hidden
            for row in rows:
                row["error"] = f"error: {type(error).__name__}"
            self.notes.append(f"{rows[0]['id']}: {type(error).__name__}: {error}".strip()[:600])

    async def sendonce(self, name: str, transport: str, store: str = "memory", **kw: Any) -> Server:
        server = await start_sendonce(
            name, transport, self.workdir, store=store, config=self.config, **kw
        )
        self.servers.append(server)
        assert server.startup_seconds is not None
        self.startups.setdefault(store.split(":")[0], []).append(server.startup_seconds)
        return server

    async def echo_server(self, name: str, transport: str, **kw: Any) -> Server:
        server = await start_echo(name, transport, self.workdir, **kw)
        self.servers.append(server)
        return server

    # --- set-up of each scenario -----------------------------------------------------------

    async def setup_echo(self) -> None:
        for transport in self.options.transports:
            rows = [self.row("echo", "—", transport)]
            if transport == "tcp":
                rows.append(self.row("echo", "—", transport, self.options.rate))
                rows.append(
                    self.row("typed echo (protobuf in and out)", "—", transport, key="typed-echo")
                )
            async with self.guarded(*rows):
                server = await self.echo_server(f"echo-{transport}", transport)
                self.add(rows[0], server, workloads.echo(_run_id()))
                if len(rows) > 1:
                    self.add(rows[1], server, workloads.echo(_run_id()), rate=self.options.rate)
                    self.add(rows[2], server, workloads.typed_echo(_run_id()))

    async def setup_unique_memory(self) -> None:
        for transport in self.options.transports:
            rows = [self.row("deliver-unique", "memory", transport)]
            if transport == "tcp":
                rows.append(self.row("deliver-unique", "memory", transport, self.options.rate))
            async with self.guarded(*rows):
                server = await self.sendonce(f"unique-memory-{transport}", transport)
                self.add(rows[0], server, workloads.deliver_unique(_run_id()))
                if len(rows) > 1:
                    self.add(
                        rows[1], server, workloads.deliver_unique(_run_id()), rate=self.options.rate
                    )

    async def setup_unique_sqlite(self) -> None:
        row = self.row("deliver-unique", "sqlite", "tcp")
        async with self.guarded(row):
            store = f"sqlite://{self.workdir / 'state.db'}"
            server = await self.sendonce("unique-sqlite", "tcp", store)
            self.add(row, server, workloads.deliver_unique(_run_id()))
            row["note"] = (
                f"the file is in {self.workdir.parent} on this machine's disk; "
                "synchronous=FULL, group commit: one fsync per batch of decisions"
            )

    async def setup_unique_redis(self) -> None:
        row = self.row("deliver-unique", "redis", "tcp")
        async with self.guarded(row):
            self.redis = start_redis(self.workdir)
            if self.redis is None:
                row["skipped"] = "skipped: redis-server is not installed"
                return
            redis = self.redis
            before = redis.used_memory(), redis.keys()
            server = await self.sendonce("unique-redis", "tcp", redis.url)
            self.add(row, server, workloads.deliver_unique(_run_id()), redis=redis)

            async def finish() -> None:
                item = next(i for i in self.items if i.row is row)
                used, keys = redis.used_memory(), redis.keys()
                records = item.next_index  # every call made a record (errors are noted apart)
                if not records:
                    return
                self.summary.append(
                    {
                        "measure": "Redis: used_memory growth per record (INFO memory, "
                        "records written through the server)",
                        "value": f"{(used - before[0]) / records:,.0f} B "
                        f"({records:,} records, {keys - before[1]:,} keys)",
                        "target": "— (no target)",
                    }
                )
                best = item.best()
                if best is not None:
                    redis_cpu = best["extra_cpu_s"].get("redis", 0.0)
                    row["note"] = (
                        f"redis-server itself used {redis_cpu / best['calls'] * 1000:.3f} CPU s "
                        "per 1000 calls, on the same cores"
                    )

            self.finishers.append(finish)

    async def setup_hot(self) -> None:
        keys = self.options.hot_keys
        row = self.row(f"deliver-hot ({keys} keys)", "memory", "tcp", key="deliver-hot/memory")
        async with self.guarded(row):
            server = await self.sendonce("hot", "tcp")
            self.add(row, server, workloads.deliver_hot(_run_id(), keys))

    async def setup_attempt_count(self) -> None:
        row = self.row("attempt-count", "memory", "tcp")
        async with self.guarded(row):
            server = await self.sendonce("attempt-count", "tcp")
            run = _run_id()
            await _prefill(server.target, workloads.deliver_unique(run), ATTEMPT_COUNT_KEYS)
            self.add(row, server, workloads.attempt_count(run, ATTEMPT_COUNT_KEYS))
            row["note"] = f"reads of {ATTEMPT_COUNT_KEYS} delivered keys, one attempt each"

    async def setup_telemetry(self) -> None:
        row = self.row("telemetry (metrics + 10 % traces)", "memory", "tcp", key="telemetry/memory")
        if "--metrics-listen" not in self.help_text:
            row["skipped"] = "skipped: `sendonce-server --help` lists no --metrics-listen"
            return
        async with self.guarded(row):
            sink = self.sink = await self.echo_server("otlp-sink", "tcp", otlp=True)
            metrics_port = free_port()
            flags = ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
            if "--trace-sample-ratio" in self.help_text:
                flags += ["--trace-sample-ratio", "0.1"]
            else:
                self.notes.append("telemetry: no --trace-sample-ratio flag: its default ratio")
            env = {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{sink.target}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
            }
            server = await self.sendonce("telemetry", "tcp", flags=flags, env=env)
            self.add(row, server, workloads.deliver_unique(_run_id()))

            async def finish() -> None:
                scraped = await asyncio.to_thread(_scrape, metrics_port)
                server.stop()  # flushes the spans still batched
                sink.stop()
                exported = _last_json(sink.log_tail(5))
                row["note"] = (
                    f"/metrics scraped at the end: {scraped:,} bytes; the OTLP sink (a bare "
                    f"grpc.aio server) received {exported.get('trace_exports', 0)} trace "
                    f"exports, {exported.get('trace_bytes', 0):,} bytes"
                )

            self.finishers.append(finish)

    async def setup_quiet(self) -> None:
        """Scenario 2 with --log-level warning: what the per-attempt info log line costs."""
        row = self.row(
            "deliver-unique, --log-level warning", "memory", "tcp", key="deliver-quiet/memory"
        )
        async with self.guarded(row):
            server = await self.sendonce("unique-quiet", "tcp", flags=["--log-level", "warning"])
            self.add(row, server, workloads.deliver_unique(_run_id()))

    # --- measuring -------------------------------------------------------------------------

    async def measure(self, item: Item, duration: float | None = None) -> dict[str, Any]:
        options = self.options
        server, redis = item.server, item.redis

        def probe() -> dict[str, float]:
            readings = {"server": server.cpu(), "machine": machine_busy()}
            if redis is not None:
                readings["redis"] = redis.cpu()
            return readings

        async with grpc.aio.insecure_channel(server.target) as channel:
            common: dict[str, Any] = {
                "warmup": options.warmup,
                "duration": duration or options.duration,
                "cpu": probe,
                "first": item.next_index,
            }
            if item.rate is None:
                result, sent = await load.closed_loop(
                    channel, item.workload, concurrency=options.concurrency, **common
                )
            else:
                result, sent = await load.fixed_rate(
                    channel, item.workload, rate=item.rate, **common
                )
        item.next_index += sent
        machine = result.extra_cpu.pop("machine", 0.0)
        others = machine - result.server_cpu - result.client_cpu - sum(result.extra_cpu.values())
        summary = result.summary()
        summary["other_cores"] = round(max(0.0, others) / result.seconds, 2)
        summary["server_rss_mb"] = round(server.rss() / 2**20, 1)
        return summary

    async def settle(self) -> float:
        """Wait (up to --settle seconds) for the machine to be idle; returns the busy cores."""
        busy = 0.0
        deadline = time.monotonic() + self.options.settle
        while self.options.settle:
            busy = await busy_elsewhere(0.3)
            if busy < 0.25 or time.monotonic() >= deadline:
                break
        return busy

    async def rounds(self) -> None:
        for number in range(1, self.options.rounds + 1):
            started = time.perf_counter()
            for item in self.items:
                if item.row.get("error"):
                    continue
                busy = await self.settle()
                try:
                    summary = await self.measure(item)
                except Exception as error:
                    self.notes.append(f"{item.row['id']} round {number}: {error!r}"[:400])
                    continue
                summary["round"] = number
                summary["busy_before"] = round(busy, 2)
                item.rounds.append(summary)
                if summary["errors"]:
                    self.notes.append(f"{item.row['id']} round {number}: {summary['errors']}")
            _progress(f"  round {number}: {time.perf_counter() - started:.0f} s")
        for item in self.items:
            best = item.best()
            if best is None:
                item.row.setdefault("error", "error: no round succeeded")
                continue
            item.row["result"] = best
            item.row["server_rss_mb"] = best["server_rss_mb"]
            item.row["rounds"] = item.rounds

    # --- the parts that are not load ---------------------------------------------------------

    async def memory(self) -> None:
        started = time.perf_counter()
        done = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.memory",
            "--records",
            str(self.options.records),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_environment({"PYTHONPATH": str(ROOT)}),
        )
        out, err = await done.communicate()
        if done.returncode != 0:
            self.notes.append(f"memory: bench.memory failed: {err.decode()[-400:]}")
            return
        measured = json.loads(out)
        per_record = measured["bytes_per_record"]
        self.summary.insert(
            0,
            {
                "measure": f"memory store: RSS growth per record, {measured['records']:,} "
                "records (in-process store fill, as the engine does it)",
                "value": f"{per_record:,.0f} B ({measured['rss_before'] / 2**20:.0f} → "
                f"{measured['rss_after'] / 2**20:.0f} MB)",
                "target": f"≤ {report.RSS_PER_RECORD_TARGET} B",
                "met": per_record <= report.RSS_PER_RECORD_TARGET,
                "raw": measured,
                "seconds": round(time.perf_counter() - started, 1),
            },
        )

    async def profile_run(self) -> None:
        """deliver-unique, memory, TCP, sampled by py-spy after the rounds (not in the table)."""
        seconds = self.options.profile
        item = next((i for i in self.items if i.row["id"] == "deliver-unique/memory/tcp"), None)
        if item is None or item.server.process.poll() is not None:
            self.notes.append("profile: no deliver-unique/memory/tcp server to profile")
            return
        if profile.available() is None:
            self.notes.append("profile: py-spy is not installed (pip install py-spy)")
            return
        RESULTS.mkdir(exist_ok=True)
        raw, svg = RESULTS / "profile.txt", RESULTS / "profile.svg"
        cpu = []
        for output, fmt in ((raw, "raw"), (svg, "flamegraph")):
            spy = profile.record(item.server.pid, output, seconds, fmt)
            summary = await self.measure(item, duration=seconds + 0.5)
            cpu.append(summary)
            _, err = await asyncio.to_thread(spy.communicate)
            if spy.returncode != 0:
                self.notes.append(f"profile: py-spy failed: {err.decode()[-300:]}")
                return
        hot = profile.summarise(raw)
        first = cpu[0]
        self.profile_text = (
            f"Profile of deliver-unique/memory/tcp under load ({first['rps']:.0f} RPS, "
            f"{first['server_cpu_s_per_1000']:.3f} server CPU s per 1000 calls while sampled)\n"
            + profile.render(hot)
        )
        (RESULTS / "profile-summary.txt").write_text(self.profile_text + "\n")

    def startup_summary(self) -> None:
        times = self.startups.get("memory", [])
        if not times:
            return
        median = statistics.median(times)
        others = ", ".join(
            f"{kind} {statistics.median(values):.2f} s"
            for kind, values in self.startups.items()
            if kind != "memory"
        )
        self.summary.append(
            {
                "measure": "startup: spawn → health SERVING for sendonce.v1.DeliveryService "
                f"(memory store, median of {len(times)} starts)",
                "value": f"{median:.2f} s (min {min(times):.2f}, max {max(times):.2f})"
                + (f"; {others}" if others else ""),
                "target": f"≤ {report.STARTUP_TARGET:g} s",
                "met": median <= report.STARTUP_TARGET,
                "raw": {k: [round(t, 3) for t in v] for k, v in self.startups.items()},
            }
        )

    def dapr_summary(self) -> None:
        by_id = {row["id"]: row for row in self.rows if row.get("result")}
        rate = f"{self.options.rate:g}"
        deliver = by_id.get(f"deliver-unique/memory/tcp@{rate}")
        echo = by_id.get(f"echo/tcp@{rate}")
        if deliver is None:
            return
        result = deliver["result"]
        cores = result["server_cpu_s"] / result["seconds"]
        echo_cpu = f"; echo floor {echo['result']['server_cpu_s_per_1000']:.3f}" if echo else ""
        value = f"{result['server_cpu_s_per_1000']:.3f} s at {rate}/s ({cores:.2f} cores){echo_cpu}"
        saturated = by_id.get("deliver-unique/memory/tcp")
        echo_saturated = by_id.get("echo/tcp")
        if saturated and echo_saturated:
            value += (
                f"; {saturated['result']['server_cpu_s_per_1000']:.3f} s at saturation "
                f"({saturated['result']['rps']:.0f}/s), echo floor "
                f"{echo_saturated['result']['server_cpu_s_per_1000']:.3f}"
            )
        self.summary.append(
            {
                "measure": "server CPU s per 1000 Delivers, memory store (= vCPU per 1000 RPS)",
                "value": value,
                "target": f"Dapr: {report.DAPR['vcpu_per_1000_rps']} vCPU per 1000 RPS",
            }
        )
        echo_rss = f"; echo floor {echo['server_rss_mb']:.0f} MB" if echo else ""
        self.summary.append(
            {
                "measure": f"server RSS after the {rate}/s rounds",
                "value": f"{deliver['server_rss_mb']:.0f} MB{echo_rss}",
                "target": f"Dapr: {report.DAPR['rss_mb']} MB per 1000 RPS",
            }
        )
        if echo:
            added = result["p90_ms"] - echo["result"]["p90_ms"]
            self.summary.append(
                {
                    "measure": f"p90 at {rate}/s, added over the echo floor",
                    "value": f"{added:+.2f} ms ({result['p90_ms']:.2f} vs "
                    f"{echo['result']['p90_ms']:.2f} ms)",
                    "target": f"Dapr: +{report.DAPR['p90_added_ms']} ms p90",
                }
            )

    async def run(self) -> None:
        self.help_text = await asyncio.to_thread(sendonce_help)
        setups: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("echo", self.setup_echo),
            ("deliver-unique/memory", self.setup_unique_memory),
            ("deliver-unique/sqlite", self.setup_unique_sqlite),
            ("deliver-unique/redis", self.setup_unique_redis),
            ("deliver-hot", self.setup_hot),
            ("attempt-count", self.setup_attempt_count),
            ("telemetry", self.setup_telemetry),
            ("deliver-unique/quiet", self.setup_quiet),
        ]
        try:
            started = time.perf_counter()
            for name, setup in setups:
                if self.wanted(name):
                    await setup()
            _progress(
                f"… {len(self.servers)} servers started: {time.perf_counter() - started:.0f} s"
            )
            if self.items:
                await self.rounds()
            for finish in self.finishers:
                try:
                    await finish()
                except Exception as error:
                    self.notes.append(f"finishing: {error!r}"[:400])
            if self.options.profile:
                _progress("… profile (py-spy)")
                await self.profile_run()
        finally:
            for server in self.servers:
                server.stop()
            if self.redis is not None:
                self.redis.stop()
        if self.wanted("memory"):
            _progress(f"… memory ({self.options.records:,} records)")
            await self.memory()
        report.evaluate(self.rows)
        self.startup_summary()
        self.dapr_summary()


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _prefill(target: str, workload: load.Workload, count: int) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(workload.method, None, None)  # bytes both ways
        for start in range(0, count, 64):
            await asyncio.gather(
                *(call(workload.request(i)) for i in range(start, min(count, start + 64)))
            )


def _scrape(port: int) -> int:
    import urllib.request

    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        return len(answer.read())


def _last_json(text: str) -> dict[str, int]:
    for line in reversed(text.splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return {}
