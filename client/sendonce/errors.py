"""RPC errors of the sendonce sidecar: one class per gRPC status, with the details it sent.

The sidecar follows Google's AIP-193: a status code, a message for people, and details for
programs in the `grpc-status-details-bin` trailer, read here with grpcio-status:
`google.rpc.ErrorInfo` (a stable `reason` and a `domain`), `google.rpc.BadRequest` (which
field, and why) and `google.rpc.RetryInfo` (how long to wait). A failed *delivery* is never an
exception: it is an `Outcome` in the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from types import MappingProxyType
from typing import Final, NamedTuple, cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "Cancelled",
    "DeadlineExceeded",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "PayloadMismatch",
    "PermissionDenied",
    "ResourceExhausted",
    "SendonceError",
    "Unauthenticated",
    "Unavailable",
    "error_from_rpc",
]


class FieldViolation(NamedTuple):
    """A field of the request that breaks a rule (`google.rpc.BadRequest.FieldViolation`)."""

    #: The field's path in the request, e.g. "notification.subject" or "retry_policy.jitter".
    field: str
    #: Why it was refused, e.g. "must not be empty".
    description: str


class SendonceError(Exception):
    """An RPC the sidecar refused or could not answer. The grpc.RpcError is the __cause__.

    `code` and `details` are the gRPC status; `reason`, `domain`, `metadata`,
    `field_violations` and `retry_delay` come from the status details when the sidecar sent
    them (empty or None otherwise).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        retry_delay: timedelta | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        #: `ErrorInfo.reason`: a stable UPPER_SNAKE name a program can switch on.
        self.reason = reason
        #: `ErrorInfo.domain`: who defines the reason (the sidecar's service name).
        self.domain = domain
        #: `ErrorInfo.metadata`: facts about this error (e.g. the channel's name).
        self.metadata: Mapping[str, str] = MappingProxyType(dict(metadata or {}))
        #: `BadRequest.field_violations`: every field the request got wrong.
        self.field_violations = field_violations
        #: `RetryInfo.retry_delay`: how long to wait before the same call may succeed.
        self.retry_delay = retry_delay


class InvalidArgument(SendonceError):
    """The request is malformed (e.g. an empty uid); `field_violations` names the fields."""


class NotFound(SendonceError):
    """The channel is not configured on the sidecar."""


class PayloadMismatch(SendonceError):
    """The notification differs from the one the key first saw (FAILED_PRECONDITION)."""


class Unavailable(SendonceError):
    """The sidecar could not take the call, even after gRPC's built-in retries."""


class DeadlineExceeded(SendonceError):
    """The call's deadline passed before the sidecar answered."""


class Unauthenticated(SendonceError):
    """The sidecar requires a (valid) bearer token."""


class PermissionDenied(SendonceError):
    """The token is valid but not allowed to make this call."""


class ResourceExhausted(SendonceError):
    """A limit refused the call: too many calls at once (nothing was sent; retry with backoff)
    or a message over the size limit (retrying the same request cannot help)."""


class Cancelled(SendonceError):
    """The call was dropped before an answer (the server's queue was full, or its connection
    was closed, e.g. at shutdown). A Deliver is idempotent: retrying it with backoff is safe."""


ERRORS: Final[Mapping[grpc.StatusCode, type[SendonceError]]] = MappingProxyType(
    {
        grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
        grpc.StatusCode.NOT_FOUND: NotFound,
        grpc.StatusCode.FAILED_PRECONDITION: PayloadMismatch,
        grpc.StatusCode.UNAVAILABLE: Unavailable,
        grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
        grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
        grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
        grpc.StatusCode.CANCELLED: Cancelled,
    }
)


def error_from_rpc(error: grpc.RpcError) -> SendonceError:
    """The SendonceError subclass of `error`'s status, with the details it carried."""
    # Every RpcError the stubs raise is also a grpc.Call (sync) or an AioRpcError.
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = (error.details() if callable(getattr(error, "details", None)) else None) or ""
    kind = ERRORS.get(code, SendonceError)
    status = _rich_status(error)
    if status is None:
        return kind(code, details)
    info = error_details_pb2.ErrorInfo()
    violations: list[FieldViolation] = []
    retry_delay: timedelta | None = None
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        retry_info = error_details_pb2.RetryInfo()
        # Unpack fills the message and says True only when the detail is of its type.
        if detail.Unpack(info):
            continue
        if detail.Unpack(bad_request):
            violations += (
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            )
        elif detail.Unpack(retry_info):
            retry_delay = retry_info.retry_delay.ToTimedelta()
    return kind(
        code,
        details,
        reason=info.reason,
        domain=info.domain,
        metadata=dict(info.metadata),
        field_violations=tuple(violations),
        retry_delay=retry_delay,
    )


def _rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    """The google.rpc.Status of the trailer, or None when there is none or it is unusable.

    Details are help, never a condition of the error: a trailer that does not parse, or that
    contradicts the call's own code or message, is ignored rather than raised.
    """
    if not callable(getattr(error, "trailing_metadata", None)):
        return None
    try:
        # An RpcError with trailing_metadata() is a grpc.Call, or an AioRpcError read alike.
        status: status_pb2.Status | None = rpc_status.from_call(cast(grpc.Call, error))
    except (ValueError, DecodeError):  # DecodeError is a ValueError too; named for the reader
        return None
    return status
