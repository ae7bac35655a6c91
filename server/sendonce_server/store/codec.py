"""Records as compact JSON, for the stores that keep them outside the process.

Written and read with orjson, the fastest encoder (docs/performance.md); the standard library
stays for what orjson refuses: strings with lone surrogates (bytes a decoder kept with
`surrogateescape`), which it escapes.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from ..engine.model import AttemptEntry, AttemptResult, Lease, Receipt, Record, Status

# Made once: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))
# Enum values both ways by dict: `.value` and `Status(value)` go through the enum machinery.
_STATUS_VALUE = {status: status.value for status in Status}
_STATUS = {status.value: status for status in Status}
_RESULT_VALUE = {result: result.value for result in AttemptResult}
_RESULT = {result.value: result for result in AttemptResult}


def dumps(record: Record) -> str:
    data: dict[str, Any] = {
        "fp": record.fingerprint,
        "max": record.max_attempts,
        "n": record.attempts,
        "st": _STATUS_VALUE[record.status],
        "next": record.next_attempt_at,
        "err": record.last_error,
        "fence": record.fence,
        "cl": record.cleared,
        "exp": record.expires_at,
        "h": [
            [e.number, e.started_at, _RESULT_VALUE[e.result], e.finished_at, e.error, e.token]
            for e in record.history
        ],
    }
    if record.lease is not None:
        lease = record.lease
        data["lease"] = [lease.attempt, lease.token, lease.expires_at, lease.reservation]
    if record.receipt is not None:
        data["rcpt"] = [record.receipt.reference, dict(record.receipt.details)]
    try:
        return orjson.dumps(data).decode()
    except orjson.JSONEncodeError:
        return _ENCODER.encode(data)


def loads(text: str) -> Record:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        data = json.loads(text)  # escaped lone surrogates, as the fallback above writes them
    lease = data.get("lease")
    receipt = data.get("rcpt")
    return Record(
        fingerprint=data["fp"],
        max_attempts=data["max"],
        attempts=data["n"],
        status=_STATUS[data["st"]],
        lease=Lease(*lease) if lease else None,  # 3 fields when written before reservations
        next_attempt_at=data["next"],
        last_error=data["err"],
        # A JSON encoder without arrays vs objects (Redis's cjson) writes an empty one as {}.
        receipt=Receipt(receipt[0], receipt[1] or {}) if receipt else None,
        history=[
            AttemptEntry(number, started, _RESULT[result], finished, error, token)
            for number, started, result, finished, error, token in data["h"]
        ],
        # Redis keeps the fencing counter in a key of its own.
        fence=data.get("fence", 0),
        cleared=data["cl"],
        expires_at=data["exp"],
    )
