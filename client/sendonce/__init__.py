"""Client of the sendonce delivery sidecar: each notification is sent at most once per
(uid, channel) key.

`Client` and `AsyncClient` are twins with the same methods and typed results::

    from sendonce import Client, Notification

    with Client() as client:
        result = client.deliver(uid, "ops-slack", Notification(subject="Disk full"))
"""

from sendonce.client import (
    AsyncClient,
    Cancelled,
    Client,
    DeadlineExceeded,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PayloadMismatch,
    PermissionDenied,
    ResourceExhausted,
    SendonceError,
    Unauthenticated,
    Unavailable,
)
from sendonce.types import (
    Attempt,
    AttemptCountResult,
    AttemptResult,
    CircuitState,
    ClearResult,
    DeliverResult,
    Link,
    Notification,
    Outcome,
    Priority,
    Receipt,
    RetryPolicy,
)

__all__ = [
    "AsyncClient",
    "Attempt",
    "AttemptCountResult",
    "AttemptResult",
    "Cancelled",
    "CircuitState",
    "ClearResult",
    "Client",
    "DeadlineExceeded",
    "DeliverResult",
    "FieldViolation",
    "InvalidArgument",
    "Link",
    "NotFound",
    "Notification",
    "Outcome",
    "PayloadMismatch",
    "PermissionDenied",
    "Priority",
    "Receipt",
    "ResourceExhausted",
    "RetryPolicy",
    "SendonceError",
    "Unauthenticated",
    "Unavailable",
]
