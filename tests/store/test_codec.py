"""Records as JSON: what SQLite keeps and Redis answers, written by this or an older version."""

from __future__ import annotations

import json

import pytest

from sendonce_server.engine.model import (
    AttemptEntry,
    AttemptResult,
    Lease,
    Receipt,
    Record,
    Status,
)
from sendonce_server.store import codec

T0 = 1_800_000_000.123456


def record(error: str = "HTTP 503: service unavailable") -> Record:
    return Record(
        fingerprint="9f86d081884c7d659a2feaa0c55ad015",
        max_attempts=5,
        attempts=2,
        status=Status.OPEN,
        lease=Lease(2, 1_800_000_000_000_002, T0 + 15.5),
        next_attempt_at=T0 + 2.25,
        last_error=error,
        receipt=Receipt("HTTP 200", {"status_code": "200"}),
        history=[
            AttemptEntry(1, T0, AttemptResult.FAILED, T0 + 0.5, error, 1_800_000_000_000_001),
            AttemptEntry(2, T0 + 3, AttemptResult.RUNNING, None, "", 1_800_000_000_000_002),
        ],
        fence=1_800_000_000_000_002,
        cleared=False,
        expires_at=T0 + 604_800,
    )


@pytest.mark.parametrize(
    "error",
    [
        "HTTP 503: service unavailable",
        "550 boîte pleine — 受信拒否",  # non-ASCII, written as UTF-8
        "bad reply \udce9 from the server",  # a lone surrogate: bytes kept by surrogateescape
    ],
)
def test_a_record_reads_back_as_written(error: str) -> None:
    assert codec.loads(codec.dumps(record(error))) == record(error)


def test_a_record_written_by_the_standard_library_still_reads() -> None:
    # What earlier versions wrote: json.dumps, every non-ASCII character escaped.
    written = codec.dumps(record("550 boîte pleine"))
    earlier = json.dumps(json.loads(written), separators=(",", ":"))
    assert "\\u00ee" in earlier
    assert codec.loads(earlier) == record("550 boîte pleine")


def test_a_corrupt_record_raises_a_json_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        codec.loads('{"fp": ')
