"""The log handler: the caller only formats and buffers; a writer thread writes in batches."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from sendonce_server import logs


class RecordingStream(io.StringIO):
    """Counts writes; while `held` is clear, a write blocks (a log reader that stalls)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.held = threading.Event()
        self.held.set()
        self.blocked = threading.Event()
        self.stalled_a_caller = False

    def write(self, text: str) -> int:
        if not self.held.is_set():
            self.blocked.set()
            # Bounded, so a handler that writes on the caller's thread fails the test, not hangs.
            if not self.held.wait(5) and threading.current_thread() is threading.main_thread():
                self.stalled_a_caller = True
        self.writes += 1
        return super().write(text)


@pytest.fixture
def stream() -> Iterator[RecordingStream]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield RecordingStream()
    for handler in root.handlers:
        handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_every_line_is_written_in_order_with_its_fields(stream: RecordingStream) -> None:
    handler = logs.configure("info", "json", stream)
    log = logging.getLogger("sendonce.test")
    for number in range(500):
        log.info("attempt finished", extra={"attempt": number, "receiver": "ops"})
    log.debug("not at this level")
    handler.close()

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["attempt"] for line in lines] == list(range(500))
    assert lines[0]["message"] == "attempt finished"
    assert lines[0]["receiver"] == "ops"
    assert lines[0]["level"] == "info"
    # Batched: far fewer writes than lines (one per batch, not one per line).
    assert stream.writes < 50


def test_a_stalled_stream_never_blocks_the_caller(stream: RecordingStream) -> None:
    handler = logs.configure("info", "text", stream)
    log = logging.getLogger("sendonce.test")
    stream.held.clear()
    log.info("first")
    assert stream.blocked.wait(5), "the writer never tried to write"
    # The writer is stuck inside write(); the caller still logs at once.
    for number in range(1000):
        log.info("line %d", number)
    assert not stream.held.is_set()
    assert not stream.stalled_a_caller
    stream.held.set()
    handler.close()

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1001
    assert lines[-1].endswith("line 999")


def test_a_line_logged_after_close_is_still_written(stream: RecordingStream) -> None:
    handler = logs.configure("info", "text", stream)
    handler.close()
    logging.getLogger("sendonce.test").warning("at exit")
    assert stream.getvalue().splitlines()[-1].endswith("at exit")
    assert not any(thread.name == "sendonce-log" for thread in threading.enumerate())


@pytest.mark.parametrize("created", [1_700_000_000.0, 1_700_000_000.9995, 1_700_000_001.25])
def test_timestamps_read_as_logging_and_iso_8601_write_them(created: float) -> None:
    record = logging.makeLogRecord({"msg": "x"})
    record.created, record.msecs = created, (created - int(created)) * 1000 // 1
    text = logs.KeyValueFormatter()
    plain = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for _ in range(2):  # the second line of a second comes from the cache
        assert text.format(record) == plain.format(record)
        entry = json.loads(logs.JsonFormatter().format(record))
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert entry["time"] == expected


def test_a_text_line_has_the_fields_after_the_message_and_the_traceback_below() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("sendonce.engine").makeRecord(
            "sendonce.engine",
            logging.ERROR,
            __file__,
            1,
            "attempt %d failed",
            (2,),
            sys.exc_info(),
            extra={"uid": "u-1", "receiver": "ops"},
        )
    first, *rest = logs.KeyValueFormatter().format(record).splitlines()
    assert first.endswith(" ERROR sendonce.engine: attempt 2 failed uid=u-1 receiver=ops")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: boom"


_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def _parse_fields(line: str) -> dict[str, str]:
    """What a key=value (logfmt) reader makes of a line: the last value of each key wins."""
    fields = {}
    for name, value in _FIELD.findall(line):
        fields[name] = json.loads(value) if value.startswith('"') else value
    return fields


@pytest.mark.parametrize(
    "uid",
    [
        "spoof receiver=admin outcome=success",
        'q" receiver="admin',
        'back\\slash" outcome=success',
        "line\nbreak 2026-01-01 INFO sendonce.engine: forged receiver=admin",
        "tab\there",
        "",
        "plain-uid_1.2:3/4@5+6",
    ],
)
def test_a_text_line_reads_back_as_exactly_the_fields_logged(uid: str) -> None:
    record = logging.makeLogRecord(
        {"name": "sendonce.engine", "levelname": "INFO", "msg": "attempt finished"}
    )
    record.uid, record.receiver, record.outcome = uid, "ops", "failed"
    line = logs.KeyValueFormatter().format(record)
    assert "\n" not in line
    assert _parse_fields(line) == {"uid": uid, "receiver": "ops", "outcome": "failed"}
    if uid == "plain-uid_1.2:3/4@5+6":
        assert line.endswith(f" uid={uid} receiver=ops outcome=failed")  # common values stay bare
