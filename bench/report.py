"""The targets of issue 6, the ratios against the echo floor, and the tables that show them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]


@dataclass(frozen=True)
class Target:
    row: str
    base: str
    min_rps: float
    max_p99: float | None = None

    def describe(self) -> str:
        text = f"≥ {self.min_rps:g}x RPS"
        if self.max_p99 is not None:
            text += f", p99 ≤ {self.max_p99:g}x"
        return text if self.base.startswith("echo") else f"{text} of {self.base}"


TARGETS = (
    Target("deliver-unique/memory/tcp", "echo/tcp", 0.85, 1.2),
    Target("deliver-unique/memory/unix", "echo/unix", 0.85, 1.2),
    Target("deliver-hot/memory/tcp", "echo/tcp", 0.95),
    Target("deliver-unique/redis/tcp", "echo/tcp", 0.6),
    Target("deliver-unique/sqlite/tcp", "echo/tcp", 0.5),
    Target("telemetry/memory/tcp", "deliver-unique/memory/tcp", 0.85),
)
RSS_PER_RECORD_TARGET = 400
STARTUP_TARGET = 1.0
DAPR = {"vcpu_per_1000_rps": 0.48, "rss_mb": 23, "p90_added_ms": 1.4}


def _floor_of(row: Row) -> str:
    """The echo row of the same transport and load shape."""
    rate = row.get("rate")
    return f"echo/{row['transport']}" + ("" if rate is None else f"@{rate:g}")


def evaluate(rows: list[Row]) -> None:
    """Adds ratios (against the echo floor of the same transport) and target verdicts."""
    by_id = {row["id"]: row for row in rows if row.get("result")}
    targets = {target.row: target for target in TARGETS}
    for row in rows:
        result = row.get("result")
        if not result or row["id"].startswith("echo"):
            continue
        floor = by_id.get(_floor_of(row))
        if floor is not None:
            row["rps_ratio"] = _ratio(result["rps"], floor["result"]["rps"])
            row["p99_ratio"] = _ratio(result["p99_ms"], floor["result"]["p99_ms"])
        target = targets.get(row["id"])
        base = by_id.get(target.base) if target else None
        if target is None or base is None:
            continue
        rps_ratio = _ratio(result["rps"], base["result"]["rps"])
        p99_ratio = _ratio(result["p99_ms"], base["result"]["p99_ms"])
        met = rps_ratio >= target.min_rps
        if target.max_p99 is not None:
            met = met and p99_ratio <= target.max_p99
        row["target"] = target.describe()
        row["target_base"] = target.base
        row["target_ratio"] = {"rps": rps_ratio, "p99": p99_ratio}
        row["met"] = met


def _ratio(value: float, base: float) -> float:
    return round(value / base, 3) if base else math.nan


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def load_table(rows: list[Row]) -> str:
    header = (
        "| scenario | store | transport | load | RPS | p50 ms | p90 ms | p99 ms "
        "| srv CPU s/1k | srv RSS MB | RPS / floor | p99 / floor | target | met "
        "| cores: client / other |"
    )
    lines = [header, _separator(header)]
    for row in rows:
        result = row.get("result")
        cells = [row["scenario"], row["store"], row["transport"], row["load"]]
        if not result:
            cells += ["—"] * 9 + [row.get("skipped") or row.get("error", "failed"), "—"]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        met = row.get("met")
        target = row.get("target", "—")
        if row.get("target_base", "echo").split("/")[0] != "echo":
            target += f" (got {row['target_ratio']['rps']:.2f}x)"
        cells += [
            _num(result["rps"], 0),
            _num(result["p50_ms"], 2),
            _num(result["p90_ms"], 2),
            _num(result["p99_ms"], 2),
            _num(result["server_cpu_s_per_1000"], 3),
            _num(row.get("server_rss_mb"), 0),
            _ratio_cell(row, "rps_ratio"),
            _ratio_cell(row, "p99_ratio"),
            target,
            "—" if met is None else ("met" if met else "**not met**"),
            f"{_num(result['client_cores'], 2)} / {_num(result.get('other_cores'), 2)}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio_cell(row: Row, name: str) -> str:
    if row["scenario"] == "echo":
        return "1 (floor)"
    return _num(row.get(name), 2)


def _separator(header: str) -> str:
    return "|" + "---|" * (header.count("|") - 1)


def summary_table(summary: list[Row]) -> str:
    lines = ["| measure | value | target / reference | met |", "|---|---|---|---|"]
    for item in summary:
        met = item.get("met")
        lines.append(
            f"| {item['measure']} | {item['value']} | {item.get('target', '—')} | "
            f"{'—' if met is None else ('met' if met else '**not met**')} |"
        )
    return "\n".join(lines)
