"""Log lines: text for a terminal (message, then fields as key=value) or JSON for a pipeline.

In text, a field value with anything but letters, digits and `_.,:/@+-` is quoted as a JSON
string, so a parser of key=value lines reads exactly the fields that were logged.

Structured fields are whatever a call passed in `extra` (uid, receiver, attempt, outcome, ...),
plus the current trace id. Secrets never reach a log call: channels build their errors from
safe parts only.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

# Attributes every LogRecord has; anything else was passed in `extra` and is a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: value for name, value in vars(record).items() if name not in _STANDARD}


class _SecondCache:
    """The text of the current second, made once a second instead of once a line."""

    def __init__(self, render: Callable[[int], str]) -> None:
        self._render = render
        self._last: tuple[int, str] = (-1, "")

    def __call__(self, created: float) -> str:
        second = int(created)
        last = self._last
        if last[0] != second:
            last = self._last = (second, self._render(second))
        return last[1]


# A value made only of these is written bare; any other is quoted, so that a uid such as
# `x receiver=admin` reads back as one value and a newline cannot start a forged line.
_BARE_VALUE = re.compile(r"[A-Za-z0-9_.,:/@+\-]+")


def _text_value(value: object) -> str:
    text = str(value)
    if _BARE_VALUE.fullmatch(text):
        return text
    # JSON string syntax (logfmt's quoting): `"` and `\` escaped, control characters as \uXXXX.
    return json.dumps(text, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    """`2026-11-29 05:11:10,123 INFO sendonce.engine: attempt finished uid=... attempt=1`."""

    def __init__(self) -> None:
        super().__init__()
        self._second = _SecondCache(
            lambda second: time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # As logging's default, without a strftime per line.
        return f"{self._second(record.created)},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        # Written out rather than through a format string: this runs for every attempt.
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {record.getMessage()}"
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{name}={_text_value(value)}" for name, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the structured fields."""

    def __init__(self) -> None:
        super().__init__()
        self._second = _SecondCache(
            lambda second: datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        )

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            # ISO 8601 in UTC with milliseconds: "2026-11-29T05:11:10.123+00:00".
            "time": f"{self._second(record.created)}.{int(record.msecs):03d}+00:00",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TraceIdFilter(logging.Filter):
    """Adds the current trace id, so a log line and its trace join up."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
        return True


class BatchedStreamHandler(logging.Handler):
    """Formats on the caller's thread; a writer thread writes the lines in batches.

    The event loop never waits on stderr (a slow log reader cannot stall deliveries), and the
    writer wakes at most once per `delay`: a thread woken for every line would take the GIL
    from the loop for each one (that hand-off cost more than writing the line itself).
    """

    def __init__(self, stream: TextIO, delay: float = 0.01) -> None:
        super().__init__()
        self._stream = stream
        self._delay = delay
        self._lines: deque[str] = deque()
        self._pending = threading.Event()
        self._stopping = False
        self._writer = threading.Thread(
            target=self._write_batches, name="sendonce-log", daemon=True
        )
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            if self._stopping:  # the writer is gone: at exit, write at once
                self._stream.write(line)
                return
            self._lines.append(line)
        except Exception:
            self.handleError(record)
            return
        if not self._pending.is_set():
            self._pending.set()

    def close(self) -> None:
        """Writes what is buffered and stops the writer."""
        if not self._stopping:
            self._stopping = True
            self._pending.set()
            self._writer.join()
        super().close()

    def _write_batches(self) -> None:
        while True:
            self._pending.wait()
            if not self._stopping:
                time.sleep(self._delay)  # let the lines of this moment gather
            # Cleared before draining: a line appended after the drain sets it again.
            self._pending.clear()
            lines = []
            while self._lines:
                lines.append(self._lines.popleft())
            if lines:
                try:
                    self._stream.write("".join(lines))
                    self._stream.flush()
                except (OSError, ValueError):
                    pass  # stderr is gone (closed pipe): nothing left to tell it to
            if self._stopping and not self._lines:
                return


def configure(level: str, form: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Log to stderr (or `stream`); the caller's thread only formats and buffers.

    Returns the handler; `close()` it at exit to write what is buffered.
    """
    # No formatter here prints thread or process names: don't look them up for every record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Nor the caller's file and line: the logging HOWTO's "Optimization" section documents
    # this switch; it spares a walk up the stack per record.
    logging._srcfile = None
    handler = BatchedStreamHandler(sys.stderr if stream is None else stream)
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(KeyValueFormatter())
    # Read where the record is made: the trace id lives in the caller's context.
    handler.addFilter(TraceIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return handler
