"""`python -m bench`: every scenario in one run, a table on stdout, JSON in bench/results/.

The load generator is this process (asyncio + grpc.aio); every server is a child process. See
bench/scenarios.py for how a run goes, docs/performance.md for how to read the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from . import report
from .scenarios import Bench, Options


def describe_machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError), open("/proc/meminfo") as meminfo:
        memory = f"{int(meminfo.readline().split()[1]) / 2**20:.1f} GiB"
    redis_version = "not installed"
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        redis_version = (
            subprocess.run(
                ["redis-server", "--version"],  # noqa: S607
                capture_output=True,
                text=True,
                check=False,
            )
            .stdout.split()[2]
            .removeprefix("v=")
        )
    import google.protobuf

    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        # Read-only: no optional locks, so not even the index's stat cache is rewritten.
        git = ["git", "--no-optional-locks", "-C", str(Path(__file__).resolve().parent.parent)]
        head = subprocess.run(  # noqa: S603
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        changed = subprocess.run(  # noqa: S603
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.splitlines()
        commit = f"{head} + {len(changed)} changed files" if changed else head

    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory": memory,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "redis_server": redis_version,
        "kernel": platform.release(),
        "commit": commit,
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
    }


def parse(argv: list[str] | None) -> Options:
    defaults = Options()
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="sendonce benchmark: every scenario in one run."
    )
    add = parser.add_argument
    add("--concurrency", type=int, default=defaults.concurrency, help="calls in flight (64)")
    add("--duration", type=float, default=defaults.duration, help="measured s per round (3)")
    add("--warmup", type=float, default=defaults.warmup, help="warm-up s before each (1)")
    add("--rounds", type=int, default=defaults.rounds, help="rounds over all scenarios (2)")
    add("--rate", type=float, default=defaults.rate, help="RPS of the fixed-rate rows (200)")
    add("--hot-keys", type=int, default=defaults.hot_keys, help="keys of deliver-hot (8)")
    add("--records", type=int, default=defaults.records, help="memory-store records (1e6)")
    add(
        "--transport",
        action="append",
        choices=("tcp", "unix"),
        help="transports of echo and deliver-unique/memory (both)",
    )
    add(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="only scenarios whose name starts with NAME (repeatable): echo, "
        "deliver-unique/memory, deliver-unique/sqlite, deliver-unique/redis, deliver-hot, "
        "attempt-count, telemetry, deliver-unique/quiet, memory",
    )
    add(
        "--settle",
        type=float,
        default=defaults.settle,
        metavar="SECONDS",
        help="before each measurement, wait up to SECONDS for the machine to be idle (0)",
    )
    add(
        "--profile",
        type=float,
        default=defaults.profile,
        metavar="SECONDS",
        help="after the rounds, sample deliver-unique/memory/tcp with py-spy for SECONDS: "
        "bench/results/profile.{svg,txt}, profile-summary.txt (needs py-spy)",
    )
    add("--output", type=Path, default=defaults.output, help="JSON file (results/latest.json)")
    args = parser.parse_args(argv)
    return Options(
        concurrency=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        rounds=args.rounds,
        rate=args.rate,
        hot_keys=args.hot_keys,
        records=args.records,
        transports=tuple(args.transport or defaults.transports),
        only=tuple(args.only),
        settle=args.settle,
        profile=args.profile,
        output=args.output,
    )


def render(bench: Bench, machine: dict[str, Any], seconds: float) -> str:
    o = bench.options
    load = "/".join(f"{v:.1f}" for v in machine["load_average_before"])
    lines = [
        f"sendonce bench: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory']}, "
        f"{machine['python']}, grpcio {machine['grpcio']}, load average before {load}",
        f"{o.rounds} round(s) over all scenarios, each {o.warmup:g} s warm-up + {o.duration:g} s "
        f"measured; a row is its least disturbed round (closed loop: best RPS; fixed rate: best "
        f"p90). Closed loop: {o.concurrency} calls in flight. Client, servers (and redis-server) "
        "share the machine's cores: 'cores' = the client's, and other processes' (noise).",
        "",
        report.load_table(bench.rows),
        "",
        report.summary_table(bench.summary),
    ]
    notes = [f"{row['id']}: {row['note']}" for row in bench.rows if row.get("note")]
    notes += bench.notes
    if notes:
        lines += ["", "Notes:", *(f"- {note}" for note in notes)]
    if bench.profile_text:
        lines += ["", bench.profile_text]
    lines += ["", f"whole run: {seconds:.0f} s; JSON: {o.output}"]
    return "\n".join(lines)


async def amain(options: Options) -> int:
    # SIGTERM cancels the run like Ctrl-C: the servers it started are stopped on the way out.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    machine = describe_machine()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sendonce-bench-") as tmp:
        bench = Bench(options, Path(tmp))
        await bench.run()
    seconds = time.perf_counter() - started
    machine["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    document = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "options": {
            name: (list(value) if isinstance(value, tuple) else value)
            for name, value in vars(options).items()
            if name != "output"
        },
        "rows": bench.rows,
        "summary": bench.summary,
        "notes": bench.notes,
        "seconds": round(seconds, 1),
    }
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(render(bench, machine, seconds))
    return 1 if any(row.get("error") for row in bench.rows) else 0


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    try:
        return asyncio.run(amain(options))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; the servers it started are stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
