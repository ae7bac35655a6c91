"""Every refusal the sidecar answers, as a gRPC status with details a program can read.

Google AIP-193: a status code, a message for people, and details for programs. Each refusal
carries a `google.rpc.ErrorInfo` whose `reason` (below, stable UPPER_SNAKE) and `domain`
(`DOMAIN`) identify it; INVALID_ARGUMENT also carries a `google.rpc.BadRequest` naming the field
and why; `google.rpc.RetryInfo` is added when a refusal knows how long to wait (none of today's
does: store outages, shutdowns and load end when they end). The mapping lives here only: the
servicer, the token check, health and the request parser call it. docs/failures.md lists the
reasons.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..engine.errors import PayloadMismatch, UnknownChannel
from ..engine.ports import StateUnavailable
from .validation import InvalidInput

DOMAIN = "sendonce.dev"
# What the servicer catches and answers with `refusal`. A failed delivery is never one.
REFUSALS = (InvalidInput, UnknownChannel, PayloadMismatch, StateUnavailable)


class Reason(StrEnum):
    """`ErrorInfo.reason`: what went wrong, for a program. Never renamed once released."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"  # a field breaks a rule; BadRequest names it
    MALFORMED_REQUEST = "MALFORMED_REQUEST"  # the bytes are not the method's message
    UNKNOWN_CHANNEL = "UNKNOWN_CHANNEL"  # no receiver of that name is configured
    PAYLOAD_MISMATCH = "PAYLOAD_MISMATCH"  # the key was first delivered with another payload
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"  # the delivery state store cannot be used
    SHUTTING_DOWN = "SHUTTING_DOWN"  # the sidecar is draining
    OVERLOADED = "OVERLOADED"  # more than --max-concurrent-rpcs calls at once
    TOO_MANY_WATCHERS = "TOO_MANY_WATCHERS"  # more than --max-health-watchers Watch streams
    UNAUTHENTICATED = "UNAUTHENTICATED"  # the bearer token is missing or wrong


async def abort(context: grpc.aio.ServicerContext[Any, Any], status: grpc.Status) -> NoReturn:
    """Ends the call with `status` (its details travel in the trailing metadata)."""
    await context.abort_with_status(status)  # type: ignore[attr-defined]  # not in grpc-stubs
    raise AssertionError("abort_with_status returned")  # it raises


def status(
    code: grpc.StatusCode,
    reason: Reason,
    message: str,
    *,
    metadata: Mapping[str, str] | None = None,
    violations: Mapping[str, str] | None = None,
    retry_after: float | None = None,
) -> grpc.Status:
    """A status for `context.abort_with_status`: the code and message, and the details."""
    details: list[Message] = [
        error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)
    ]
    if violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=field, description=why)
                    for field, why in violations.items()
                ]
            )
        )
    if retry_after is not None:
        delay = Duration()
        delay.FromNanoseconds(round(retry_after * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for detail in details:
        wrapper = any_pb2.Any()
        wrapper.Pack(detail)
        packed.append(wrapper)
    return rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message, details=packed)
    )


def refusal(error: Exception) -> grpc.Status:
    """The status for one of the `REFUSALS`."""
    if isinstance(error, InvalidInput):
        return invalid(error.field, error.reason)
    if isinstance(error, UnknownChannel):
        return status(
            grpc.StatusCode.NOT_FOUND,
            Reason.UNKNOWN_CHANNEL,
            str(error),
            metadata={"channel": error.name},
        )
    if isinstance(error, PayloadMismatch):
        return status(
            grpc.StatusCode.FAILED_PRECONDITION,
            Reason.PAYLOAD_MISMATCH,
            str(error),
            metadata={"uid": error.key.uid, "channel": error.key.channel},
        )
    if isinstance(error, StateUnavailable):
        return status(
            grpc.StatusCode.UNAVAILABLE,
            Reason.STORE_UNAVAILABLE,
            f"delivery state store unavailable: {error}; nothing sent",
        )
    raise TypeError(f"not a refusal: {error!r}")


def invalid(field: str, description: str) -> grpc.Status:
    return status(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_ARGUMENT,
        f"{field}: {description}",
        metadata={"field": field},
        violations={field: description},
    )


def malformed(message: str, field: str = "", description: str = "") -> grpc.Status:
    """Bytes that do not parse as the method's message; the field when one is to blame."""
    return status(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.MALFORMED_REQUEST,
        message,
        violations={field: description} if field else None,
    )


def overloaded(limit: int) -> grpc.Status:
    return status(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.OVERLOADED,
        f"more than --max-concurrent-rpcs={limit} calls at once; nothing was sent, "
        "retry with backoff",
        metadata={"limit": str(limit)},
    )


def too_many_watchers(limit: int) -> grpc.Status:
    return status(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.TOO_MANY_WATCHERS,
        f"{limit} health Watch streams are open already (--max-health-watchers); use Check, "
        "or close a Watch",
        metadata={"limit": str(limit)},
    )


SHUTTING_DOWN = status(
    grpc.StatusCode.UNAVAILABLE,
    Reason.SHUTTING_DOWN,
    "sendonce-server is shutting down; nothing was sent",
)
UNAUTHENTICATED = status(
    grpc.StatusCode.UNAUTHENTICATED,
    Reason.UNAUTHENTICATED,
    "missing or wrong bearer token: send 'authorization: Bearer <token>'",
)
