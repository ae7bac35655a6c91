"""py-spy on a running server: a flame graph (SVG) and a text summary of the hot spots.

py-spy samples the server from outside (no code change, no instrumentation in the process);
it is not a dependency of the bench: `pip install py-spy` to use `--profile`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


def available() -> str | None:
    # Installed into the bench's own venv, py-spy sits beside its interpreter, maybe not on PATH.
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


def record(
    pid: int, output: Path, seconds: float, fmt: str, rate: int = 250
) -> subprocess.Popen[bytes]:
    """Start py-spy on `pid` for `seconds`; the caller drives load meanwhile and waits."""
    binary = available()
    assert binary is not None
    return subprocess.Popen(  # noqa: S603
        [
            binary,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            str(rate),
            "--format",
            fmt,
            "--output",
            str(output),
            "--nonblocking",  # never pause the server: its timing stays as measured
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


# A frame of py-spy's raw (collapsed) format: "function (path/to/file.py:line)".
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]*?)(?::(?P<line>\d+))?\)$")
_AREAS = (
    ("sendonce_server/api", "sendonce: servicer, validation, conversion"),
    ("sendonce_server/engine", "sendonce: engine"),
    ("sendonce_server/store", "sendonce: store"),
    ("sendonce_server/channels", "sendonce: channel"),
    ("sendonce_server/telemetry", "sendonce: telemetry"),
    ("sendonce_server/server", "sendonce: interceptors"),
    ("sendonce_server/redaction", "sendonce: redaction"),
    ("sendonce_server/logs", "logging"),
    ("sendonce_server", "sendonce: other"),
    ("logging/", "logging"),
    ("asyncio/", "asyncio event loop"),
    ("grpc/_cython", "grpc (cython, aio server)"),
    ("grpc/", "grpc (python)"),
    ("google/protobuf", "protobuf"),
    ("opentelemetry", "opentelemetry"),
    ("json/", "json"),
    ("hashlib", "hashlib"),
    ("dataclasses", "dataclasses"),
)


@dataclass(frozen=True)
class Frame:
    function: str
    file: str

    @property
    def short(self) -> str:
        parts = self.file.split("/")
        if "site-packages" in parts:
            parts = parts[parts.index("site-packages") + 1 :]
        elif "sendonce_server" in parts:
            parts = parts[parts.index("sendonce_server") :]
        else:
            parts = parts[-2:]
        return f"{self.function} ({'/'.join(parts)})"


def _frames(stack: str) -> list[Frame]:
    frames = []
    for part in stack.split(";"):
        match = _FRAME.match(part)
        if match:
            frames.append(Frame(match["function"], match["file"]))
        else:
            frames.append(Frame(part, ""))
    return frames


def _area(frames: list[Frame]) -> str:
    """The innermost frame that belongs to a known area names where the time went.

    Python-level sampling cannot see into grpc's Cython: its work (reading calls, running the
    handlers' plumbing, sending answers) shows as the self time of the event loop's callback
    runner, `Handle._run`; its completion-queue poller is a thread of its own (`Thread.run`),
    mostly waiting in epoll.
    """
    leaf = frames[-1]
    if leaf.function == "Handle._run" and leaf.file.endswith("asyncio/events.py"):
        return "grpc aio in Cython (self time of the loop's callbacks)"
    if leaf.function == "Thread.run" and leaf.file.endswith("threading.py"):
        return "grpc poller thread (native, mostly waiting in epoll)"
    if leaf.file.endswith("selectors.py"):
        return "event loop waiting in epoll"
    for frame in reversed(frames):
        for marker, name in _AREAS:
            if marker in frame.file:
                return name
    return "other (native, interpreter)"


def summarise(raw: Path, top: int = 15) -> dict[str, object]:
    """Self time per function, inclusive time per function, and time per area, in % of samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not frames:
            continue
        total += count
        own[frames[-1].short] += count
        for name in {frame.short for frame in frames}:
            inclusive[name] += count
        areas[_area(frames)] += count

    def shares(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(limit)]

    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "self": shares(own, top),
        "inclusive": shares(inclusive, top * 2),
        "areas": shares(areas, len(_AREAS) + 1),
    }


def render(summary: dict[str, object]) -> str:
    if not summary.get("samples"):
        return "(no samples)"
    lines = [
        f"{summary['samples']} samples of the server process (py-spy --nonblocking, Python "
        "frames; threads py-spy sees as idle are left out)",
        "",
    ]
    for title, name in (
        ("Time by area (innermost known frame)", "areas"),
        ("Self time (leaf function)", "self"),
        ("Inclusive time", "inclusive"),
    ):
        lines.append(f"{title}:")
        for function, share in summary[name]:  # type: ignore[attr-defined]
            lines.append(f"  {share:5.1f} %  {function}")
        lines.append("")
    return "\n".join(lines)
