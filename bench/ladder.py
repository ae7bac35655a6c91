"""Where a Deliver's time goes: the real server cut short after each stage, in one run.

    python -m bench.ladder [--rounds 3] [--duration 3]

Rungs, each a server of its own under the same closed loop (64 calls in flight, TCP):
the echo floor; sendonce-server answering at once (`servicer`); after validating and
converting the request (`convert`); after the fingerprint too (`fingerprint`); the whole Deliver
with `--log-level warning` (`engine`), and as shipped, with the attempt's log line (`full`).
Rounds visit every rung in turn; a row is the rung's best round. Each row says what its stage
added to the server's CPU per call. Writes bench/results/ladder.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc

from . import load, workloads
from .procs import Server, start_echo, start_sendonce
from .scenarios import RECEIVERS, RESULTS, ROOT

RUNGS: list[tuple[str, str, str | None, list[str]]] = [
    # name, what it adds, the ladder server's stage (None: the echo floor), flags
    ("echo", "the floor: bare grpc.aio, no parsing", None, []),
    ("servicer", "sendonce-server: parsing, servicer, answer", "servicer", []),
    ("convert", "key validation, notification conversion", "convert", []),
    ("fingerprint", "the payload's fingerprint", "fingerprint", []),
    ("engine", "flight, store, noop send, answer", "full", ["--log-level", "warning"]),
    ("full", "the attempt's info log line (as shipped)", "full", []),
]


async def run(rounds: int, duration: float, workdir: Path) -> list[dict[str, Any]]:
    config = workdir / "receivers.toml"
    config.write_text(RECEIVERS)
    servers: list[Server] = []
    try:
        for name, _, stage, flags in RUNGS:
            if stage is None:
                servers.append(await start_echo(name, "tcp", workdir))
                continue
            command = [sys.executable, "-m", "bench.ladder_server", "--stage", stage]
            servers.append(
                await start_sendonce(
                    name,
                    "tcp",
                    workdir,
                    store="memory",
                    config=config,
                    flags=flags,
                    env={"PYTHONPATH": str(ROOT)},
                    command=command,
                )
            )
        best: dict[str, dict[str, Any]] = {}
        for number in range(rounds):
            for index, ((name, _, stage, _), server) in enumerate(zip(RUNGS, servers, strict=True)):
                run_id = number * 100 + index
                workload = (
                    workloads.echo(run_id) if stage is None else workloads.deliver_unique(run_id)
                )
                async with grpc.aio.insecure_channel(server.target) as channel:
                    result, _ = await load.closed_loop(
                        channel,
                        workload,
                        concurrency=64,
                        warmup=1.0,
                        duration=duration,
                        cpu=_probe(server),
                    )
                summary = result.summary()
                if name not in best or summary["rps"] > best[name]["rps"]:
                    best[name] = summary
            print(f"  round {number + 1} done", file=sys.stderr, flush=True)
    finally:
        for server in servers:
            server.stop()
    rows = []
    floor = best["echo"]
    previous = None
    for name, adds, _, _ in RUNGS:
        summary = best[name]
        cpu = summary["server_cpu_s_per_1000"]
        rows.append(
            {
                "rung": name,
                "adds": adds,
                "rps": summary["rps"],
                "rps_ratio": summary["rps"] / floor["rps"],
                "p99_ms": summary["p99_ms"],
                "server_cpu_s_per_1000": cpu,
                "added_us_per_call": None if previous is None else (cpu - previous) * 1000,
                "errors": summary["errors"],
            }
        )
        previous = cpu
    return rows


def _probe(server: Server) -> load.CpuProbe:
    return lambda: {"server": server.cpu()}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| rung | adds | RPS | RPS / echo | p99 ms | srv CPU s/1k | added µs CPU per call |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        added = row["added_us_per_call"]
        lines.append(
            f"| {row['rung']} | {row['adds']} | {row['rps']:,.0f} | {row['rps_ratio']:.2f} "
            f"| {row['p99_ms']:.1f} | {row['server_cpu_s_per_1000']:.3f} "
            f"| {'—' if added is None else f'{added:+.0f}'} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="measured s per round")
    parser.add_argument("--output", type=Path, default=RESULTS / "ladder.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sendonce-ladder-") as workdir:
        rows = asyncio.run(run(args.rounds, args.duration, Path(workdir)))
    print(table(rows))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
