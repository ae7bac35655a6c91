"""What redaction costs one Deliver: the default rules on a typical notification and a 64 KiB body.

    python -m bench.redaction_cost

Prints CPU microseconds per `Redactor.redact` (best of 5 rounds) for: a typical alert with no
secret (the hints prefilter decides alone), the same with two secrets, and a 64 KiB body of log
lines, with and without secrets in them.
"""

from __future__ import annotations

import time

from sendonce_server.engine.model import Link, Notification
from sendonce_server.redaction import Redactor

_LOG_LINE = (
    "2026-12-07T17:49:21Z INFO payments-api request_id=4bf92f3577b34da6 path=/v1/charges "
    "status=502 upstream=10.0.3.17:8080 duration_ms=1203 retry=2 message=upstream timed out\n"
)
_SECRET_LINE = "connect postgres://app:s3cr3t-pw@db:5432/app failed; password: hunter2 again\n"  # noqa: S105 (a test value)


def _typical(secret: bool) -> Notification:
    body = (
        "Deployment payments-api failed: 3 of 3 pods crashlooping in prod-eu-west-1.\n"
        "Last event: Back-off restarting failed container api (exit code 1)."
    )
    if secret:
        body += "\nenv: DATABASE_URL=postgres://app:s3cr3t@db/app API_KEY=abc123"
    return Notification(
        subject="Deployment payments-api failed",
        body=body,
        metadata={"cluster": "prod-eu-west-1", "namespace": "payments", "team": "checkout"},
        links=(Link("logs", "https://grafana.example.com/d/abc123/payments?orgId=1"),),
    )


def _large(secret: bool) -> Notification:
    lines = [_LOG_LINE] * (64 * 1024 // len(_LOG_LINE))
    if secret:
        lines[len(lines) // 2] = _SECRET_LINE
    return Notification(subject="payments-api logs", body="".join(lines)[: 64 * 1024])


def _cost(redactor: Redactor, notification: Notification, calls: int) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(calls):
            redactor.redact(notification)
        best = min(best, (time.process_time() - started) / calls)
    return best * 1e6


def main() -> None:
    redactor = Redactor()
    cases = [
        ("typical, no secret", _typical(False), 5_000),
        ("typical, 2 secrets", _typical(True), 2_000),
        ("64 KiB body, no secret", _large(False), 20),
        ("64 KiB body, 2 secrets", _large(True), 20),
    ]
    print(f"{'notification':<26} {'µs per redact':>14}")
    for name, notification, calls in cases:
        print(f"{name:<26} {_cost(redactor, notification, calls):>14.1f}")


if __name__ == "__main__":
    main()
