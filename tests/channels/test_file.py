"""The file channel: durable, whole JSON lines, written off the event loop."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import pytest

from sendonce_server.channels.file import FileChannel, FileSettings
from sendonce_server.engine.model import Key, Notification
from sendonce_server.engine.ports import Delivery, SendStatus


def _delivery(uid: str = "u1", body: str = "") -> Delivery:
    return Delivery(Key(uid, "audit-file"), Notification("Deployed", body=body), 1)


async def test_appends_one_json_line_per_delivery(tmp_path: Path) -> None:
    path = tmp_path / "deliveries.jsonl"
    path.write_text('{"existing": true}\n')
    channel = FileChannel(FileSettings(path=path))

    await channel.send(_delivery("u1"))
    await channel.send(_delivery("u2"))

    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"existing": True}
    assert [json.loads(line)["uid"] for line in lines[1:]] == ["u1", "u2"]
    assert json.loads(lines[1])["idempotency_key"] == _delivery("u1").idempotency_key


async def test_receipt_gives_the_byte_offset_of_the_line(tmp_path: Path) -> None:
    path = tmp_path / "deliveries.jsonl"
    channel = FileChannel(FileSettings(path=path))

    await channel.send(_delivery("u1"))
    result = await channel.send(_delivery("u2"))

    assert result.status is SendStatus.SUCCESS
    assert result.receipt is not None
    offset = int(result.receipt.details["offset"])
    assert result.receipt.reference == f"{path}@{offset}"
    assert result.receipt.details["path"] == str(path)
    with path.open("rb") as file:
        file.seek(offset)
        assert json.loads(file.readline())["uid"] == "u2"


async def test_concurrent_sends_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "deliveries.jsonl"
    channel = FileChannel(FileSettings(path=path))
    # Lines larger than a pipe buffer or a page make torn writes visible if they happen.
    body = "x" * 70_000

    results = await asyncio.gather(*(channel.send(_delivery(f"u{i}", body)) for i in range(40)))

    lines = path.read_bytes().split(b"\n")
    assert lines.pop() == b""
    assert sorted(json.loads(line)["uid"] for line in lines) == sorted(f"u{i}" for i in range(40))
    offsets = {int(r.receipt.details["offset"]) for r in results if r.receipt is not None}
    assert len(offsets) == 40


async def test_writes_are_fsynced_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsynced_from: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        fsynced_from.append(threading.get_ident())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    channel = FileChannel(FileSettings(path=tmp_path / "deliveries.jsonl"))

    await channel.send(_delivery())

    assert fsynced_from  # the file, and the directory of the new file
    assert threading.get_ident() not in fsynced_from


async def test_an_unwritable_path_is_a_retryable_error(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "deliveries.jsonl"
    channel = FileChannel(FileSettings(path=path))

    result = await channel.send(_delivery())

    assert result.status is SendStatus.RETRYABLE
    assert result.error == f"cannot append to {path}: no such file or directory"


def test_timeout_defaults_to_five_seconds(tmp_path: Path) -> None:
    assert FileChannel(FileSettings(path=tmp_path / "f")).timeout == 5.0
