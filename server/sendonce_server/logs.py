"""Log lines: text for a terminal (message, then fields as key=value) or JSON for a pipeline.

Structured fields are whatever a call passed in `extra` (uid, receiver, attempt, outcome, ...),
plus the current trace id. Secrets never reach a log call: channels build their errors from
safe parts only.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from queue import SimpleQueue
from typing import Any

from opentelemetry import trace

# Attributes every LogRecord has; anything else was passed in `extra` and is a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: value for name, value in vars(record).items() if name not in _STANDARD}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{name}={value}" for name, value in _fields(record).items())
        return f"{line} {fields}" if fields else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
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


def configure(level: str, form: str = "text") -> QueueListener:
    """Log to stderr from a thread of its own: the event loop only formats and enqueues.

    Returns the listener; `stop()` it at exit to flush what is queued.
    """
    output = logging.StreamHandler(sys.stderr)
    queued = QueueHandler(SimpleQueue())
    if form == "json":
        queued.setFormatter(JsonFormatter())
    else:
        queued.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Read where the record is made: the trace id lives in the caller's context.
    queued.addFilter(TraceIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [queued]
    root.setLevel(level.upper())
    listener = QueueListener(queued.queue, output)
    listener.start()
    return listener
