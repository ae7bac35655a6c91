"""The `file` channel: appends one JSON line per delivery to a file, flushed to disk."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..engine.model import Receipt
from ..engine.ports import Delivery, SendResult
from .console import json_line


class FileSettings(BaseModel):
    """Settings of a `file` receiver."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    timeout: float = Field(default=5.0, gt=0, le=300)

    @field_validator("path")
    @classmethod
    def _not_empty(cls, path: Path) -> Path:
        if str(path) in ("", "."):
            raise ValueError("must name a file")
        return path


class FileChannel:
    """Appends each delivery as a JSON line; the receipt gives the byte offset of the line."""

    def __init__(self, settings: FileSettings) -> None:
        self._path = settings.path
        self._timeout = settings.timeout
        # Lines of concurrent sends must not interleave; the write itself runs in a thread.
        self._lock = asyncio.Lock()

    @property
    def timeout(self) -> float:
        return self._timeout

    async def send(self, delivery: Delivery) -> SendResult:
        data = json_line(delivery).encode()
        try:
            async with self._lock:
                offset = await asyncio.to_thread(_append, self._path, data)
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else type(exc).__name__
            return SendResult.retryable(f"cannot append to {self._path}: {reason}")
        return SendResult.success(
            Receipt(f"{self._path}@{offset}", {"path": str(self._path), "offset": str(offset)})
        )

    async def close(self) -> None:
        return None


def _append(path: Path, data: bytes) -> int:
    """Append `data` durably; returns the byte offset where it starts."""
    created = not path.exists()
    # O_APPEND with one write per line keeps lines whole even across processes sharing the file.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        end = os.lseek(fd, 0, os.SEEK_CUR)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_directory(path.parent)
    return end - len(data)


def _fsync_directory(directory: Path) -> None:
    # A new file's directory entry is only durable once its directory is synced.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
