"""The `console` channel: one JSON line per delivery on stdout (or stderr)."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from datetime import UTC, datetime
from typing import Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field

from ..engine.model import Receipt
from ..engine.ports import Delivery, SendResult

# One lock for the process: every console channel shares the same two streams.
_write_lock = threading.Lock()


class ConsoleSettings(BaseModel):
    """Settings of a `console` receiver."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stream: Literal["stdout", "stderr"] = "stdout"
    timeout: float = Field(default=5.0, gt=0, le=300)


def json_line(delivery: Delivery) -> str:
    """The delivery as one line of JSON, newline included (also what the `file` channel writes)."""
    key = delivery.key
    document = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "uid": key.uid,
        "channel": key.channel,
        "attempt": delivery.attempt,
        "idempotency_key": delivery.idempotency_key,
        **delivery.notification.canonical(),
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n"


class ConsoleChannel:
    """Prints each delivery as a JSON line; for development and demos."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self._stream_name = settings.stream
        self._timeout = settings.timeout

    @property
    def timeout(self) -> float:
        return self._timeout

    async def send(self, delivery: Delivery) -> SendResult:
        line = json_line(delivery)
        # Looked up per call so that a redirected sys.stdout (tests, embedding) is honoured.
        stream = sys.stdout if self._stream_name == "stdout" else sys.stderr
        try:
            # A pipe whose reader is slow would otherwise stall the whole event loop.
            await asyncio.to_thread(_write, stream, line)
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            return SendResult.retryable(f"cannot write to {self._stream_name}: {exc}")
        return SendResult.success(Receipt(self._stream_name))

    async def close(self) -> None:
        return None


def _write(stream: TextIO, line: str) -> None:
    with _write_lock:
        stream.write(line)
        stream.flush()
