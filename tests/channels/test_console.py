"""The console channel: one JSON line per delivery on the chosen stream."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

import pytest

from sendonce_server.channels.console import ConsoleChannel, ConsoleSettings
from sendonce_server.engine.model import Key, Link, Notification, Priority
from sendonce_server.engine.ports import Delivery, SendStatus


def _delivery(uid: str = "u1", attempt: int = 1) -> Delivery:
    notification = Notification(
        subject="Disk full",
        body="node-3 is at 99 %",
        priority=Priority.HIGH,
        metadata={"team": "infra", "env": "prod"},
        links=(Link("runbook", "https://runbooks.example/disk"),),
    )
    return Delivery(Key(uid, "ops-console"), notification, attempt)


async def test_writes_one_json_line_with_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    channel = ConsoleChannel(ConsoleSettings())
    delivery = _delivery(attempt=2)

    result = await channel.send(delivery)

    out = capsys.readouterr().out
    assert out.count("\n") == 1
    line = json.loads(out)
    assert datetime.fromisoformat(line.pop("time")).utcoffset() is not None
    assert line == {
        "uid": "u1",
        "channel": "ops-console",
        "attempt": 2,
        "idempotency_key": delivery.idempotency_key,
        "subject": "Disk full",
        "body": "node-3 is at 99 %",
        "priority": "high",
        "metadata": {"env": "prod", "team": "infra"},
        "links": [{"title": "runbook", "url": "https://runbooks.example/disk"}],
    }
    assert result.status is SendStatus.SUCCESS
    assert result.receipt is not None
    assert result.receipt.reference == "stdout"


async def test_stderr_stream(capsys: pytest.CaptureFixture[str]) -> None:
    channel = ConsoleChannel(ConsoleSettings(stream="stderr"))

    result = await channel.send(_delivery())

    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err)["uid"] == "u1"
    assert result.receipt is not None
    assert result.receipt.reference == "stderr"


async def test_concurrent_sends_give_whole_lines(capsys: pytest.CaptureFixture[str]) -> None:
    channel = ConsoleChannel(ConsoleSettings())

    results = await asyncio.gather(*(channel.send(_delivery(f"u{i}")) for i in range(50)))

    lines = capsys.readouterr().out.splitlines()
    assert {json.loads(line)["uid"] for line in lines} == {f"u{i}" for i in range(50)}
    assert len(lines) == 50
    assert all(result.status is SendStatus.SUCCESS for result in results)


async def test_a_closed_stream_is_a_retryable_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Closed:
        def write(self, text: str) -> int:
            raise ValueError("I/O operation on closed file.")

        def flush(self) -> None:
            pass

    monkeypatch.setattr("sys.stdout", Closed())

    result = await ConsoleChannel(ConsoleSettings()).send(_delivery())

    assert result.status is SendStatus.RETRYABLE
    assert result.error.startswith("cannot write to stdout")


def test_timeout_defaults_to_five_seconds() -> None:
    assert ConsoleChannel(ConsoleSettings()).timeout == 5.0
    assert ConsoleChannel(ConsoleSettings(timeout=0.5)).timeout == 0.5
