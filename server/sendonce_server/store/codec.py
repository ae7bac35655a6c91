"""Records as compact JSON, for the stores that keep them outside the process."""

from __future__ import annotations

import json
from typing import Any

from ..engine.model import AttemptEntry, AttemptResult, Lease, Receipt, Record, Status

# Made once: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def dumps(record: Record) -> str:
    data: dict[str, Any] = {
        "fp": record.fingerprint,
        "max": record.max_attempts,
        "n": record.attempts,
        "st": record.status.value,
        "next": record.next_attempt_at,
        "err": record.last_error,
        "fence": record.fence,
        "cl": record.cleared,
        "exp": record.expires_at,
        "h": [
            [e.number, e.started_at, e.result.value, e.finished_at, e.error, e.token]
            for e in record.history
        ],
    }
    if record.lease is not None:
        data["lease"] = [record.lease.attempt, record.lease.token, record.lease.expires_at]
    if record.receipt is not None:
        data["rcpt"] = [record.receipt.reference, dict(record.receipt.details)]
    return _ENCODER.encode(data)


def loads(text: str) -> Record:
    data = json.loads(text)
    lease = data.get("lease")
    receipt = data.get("rcpt")
    return Record(
        fingerprint=data["fp"],
        max_attempts=data["max"],
        attempts=data["n"],
        status=Status(data["st"]),
        lease=Lease(*lease) if lease else None,
        next_attempt_at=data["next"],
        last_error=data["err"],
        # A JSON encoder without arrays vs objects (Redis's cjson) writes an empty one as {}.
        receipt=Receipt(receipt[0], receipt[1] or {}) if receipt else None,
        history=[
            AttemptEntry(number, started, AttemptResult(result), finished, error, token)
            for number, started, result, finished, error, token in data["h"]
        ],
        # Redis keeps the fencing counter in a key of its own.
        fence=data.get("fence", 0),
        cleared=data["cl"],
        expires_at=data["exp"],
    )
