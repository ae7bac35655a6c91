"""Twin clients for the sendonce sidecar: `Client` (blocking) and `AsyncClient` (asyncio).

Both have the same methods, arguments and result types; only `await` differs. Every call has a
deadline, and gRPC's built-in retry (configured through the channel's service config, never by
hand) repeats calls that fail with UNAVAILABLE. That is safe for all three methods: Deliver is
idempotent by design, AttemptCount only reads and Clear converges.
"""

from __future__ import annotations

import abc
import asyncio
import json
import os
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Final, Self

import grpc
import grpc.aio

from sendonce.errors import (
    Cancelled,
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
    error_from_rpc,
)
from sendonce.types import (
    AttemptCountResult,
    ClearResult,
    DeliverResult,
    Notification,
    RetryPolicy,
    attempt_count_request_to_pb,
    attempt_count_result_from_pb,
    clear_request_to_pb,
    clear_result_from_pb,
    deliver_request_to_pb,
    deliver_result_from_pb,
)
from sendonce.v1 import delivery_pb2_grpc

__all__ = [
    "DEFAULT_ADDRESS",
    "AsyncClient",
    "Cancelled",
    "Client",
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
]

DEFAULT_ADDRESS: Final = "127.0.0.1:50051"
ADDRESS_ENV: Final = "SENDONCE_ADDRESS"
TOKEN_ENV: Final = "SENDONCE_TOKEN"  # noqa: S105 (the variable's name, not a secret)

# One attempt may take the receiver's whole timeout, so Deliver gets a longer deadline.
DEFAULT_DELIVER_TIMEOUT: Final = 30.0
DEFAULT_TIMEOUT: Final = 5.0

# gRPC retries only calls the server never started answering, with jittered exponential backoff,
# and always within the call's deadline.
_SERVICE_CONFIG: Final = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "sendonce.v1.DeliveryService"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


# --- shared configuration ----------------------------------------------------------------------


class _ClientBase(abc.ABC):
    """Configuration shared by the twins; subclasses open their own kind of channel."""

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        deliver_timeout: float = DEFAULT_DELIVER_TIMEOUT,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        options: Sequence[tuple[str, str | int]] = (),
    ) -> None:
        """Open a channel to the sidecar at `target`; it connects on the first call.

        Args:
            target: "host:port" or "unix:///path/to/socket"; defaults to $SENDONCE_ADDRESS,
                else "127.0.0.1:50051".
            timeout: default deadline in seconds of attempt_count and clear.
            deliver_timeout: default deadline in seconds of deliver.
            token: sent as "authorization: Bearer <token>" with every call; defaults to
                $SENDONCE_TOKEN (as the CLI and the shipped manifests do); "" sends none.
            tls: use TLS with the system's root certificates; implied by any of the next three.
            root_certificates: PEM roots to verify the sidecar with.
            certificate_chain: PEM client certificate, for mutual TLS (with private_key).
            private_key: PEM client key, for mutual TLS (with certificate_chain).
            options: extra gRPC channel arguments; they override the client's own.
        """
        if (certificate_chain is None) != (private_key is None):
            raise ValueError("certificate_chain and private_key go together (mutual TLS)")
        self.target: str = target or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
        self.timeout = timeout
        self.deliver_timeout = deliver_timeout
        if token is None:
            token = os.environ.get(TOKEN_ENV)
        self._metadata: tuple[tuple[str, str], ...] | None = (
            (("authorization", f"Bearer {token}"),) if token else None
        )
        self._credentials: grpc.ChannelCredentials | None = None
        if tls or root_certificates or certificate_chain:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates, private_key, certificate_chain
            )
        merged: dict[str, str | int] = {
            "grpc.enable_retries": 1,
            "grpc.service_config": _SERVICE_CONFIG,
        }
        merged.update(options)
        self._options: list[tuple[str, str | int]] = list(merged.items())
        self._connect()

    @abc.abstractmethod
    def _connect(self) -> None:
        """Open `self._channel` and `self._stub` from the settings above."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r})"


# --- the twins ---------------------------------------------------------------------------------


class Client(_ClientBase):
    """Blocking client of the sendonce sidecar. Use as a context manager or call close().

    Example:
        with Client() as client:
            result = client.deliver(uid, "ops-slack", Notification(subject="Disk full"))
            if not result.final:
                requeue_after(result.retry_after)
    """

    _channel: grpc.Channel
    _stub: delivery_pb2_grpc.DeliveryServiceStub

    def _connect(self) -> None:
        if self._credentials is None:
            self._channel = grpc.insecure_channel(self.target, options=self._options)
        else:
            self._channel = grpc.secure_channel(
                self.target, self._credentials, options=self._options
            )
        self._stub = delivery_pb2_grpc.DeliveryServiceStub(self._channel)

    def deliver(
        self,
        uid: str,
        channel: str,
        notification: Notification,
        *,
        retry_policy: RetryPolicy | None = None,
        persisted_attempts: int = 0,
        timeout: float | None = None,
    ) -> DeliverResult:
        """Make at most one delivery attempt for (uid, channel) and return its outcome.

        Idempotent by design: calling again, or gRPC retrying after UNAVAILABLE, never sends
        twice. A failed delivery is an outcome in the result, not an exception.

        Args:
            uid: the notification's unique id (e.g. a Kubernetes object uid).
            channel: the name of a receiver configured on the sidecar.
            notification: the payload; a key only ever delivers the payload it first saw.
            retry_policy: overrides the channel's retry policy.
            persisted_attempts: attempts the caller has recorded on its side; the sidecar
                counts max(its record, this).
            timeout: deadline in seconds; defaults to the client's deliver_timeout.

        Raises:
            SendonceError: a subclass per gRPC status, e.g. NotFound for an unknown channel.
        """
        request = deliver_request_to_pb(
            uid, channel, notification, retry_policy, persisted_attempts
        )
        try:
            response = self._stub.Deliver(
                request, timeout=_or(timeout, self.deliver_timeout), metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        return deliver_result_from_pb(response)

    def attempt_count(
        self,
        uid: str,
        channel: str,
        *,
        persisted_attempts: int = 0,
        timeout: float | None = None,
    ) -> AttemptCountResult:
        """Read the state of (uid, channel) without changing it.

        Args:
            uid: the notification's unique id.
            channel: the receiver's name.
            persisted_attempts: as in deliver.
            timeout: deadline in seconds; defaults to the client's timeout.

        Raises:
            SendonceError: a subclass per gRPC status.
        """
        request = attempt_count_request_to_pb(uid, channel, persisted_attempts)
        try:
            response = self._stub.AttemptCount(
                request, timeout=_or(timeout, self.timeout), metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        return attempt_count_result_from_pb(response)

    def clear(
        self,
        uid: str,
        channels: Iterable[str] = (),
        *,
        force: bool = False,
        timeout: float | None = None,
    ) -> ClearResult:
        """Forget a notification once its final status is persisted on the caller's side.

        Args:
            uid: the notification's unique id.
            channels: channels to clear; empty clears every channel of the uid.
            force: remove at once instead of keeping a tombstone, so the key may be delivered
                again. A running attempt is never cancelled.
            timeout: deadline in seconds; defaults to the client's timeout.

        Raises:
            SendonceError: a subclass per gRPC status.
        """
        request = clear_request_to_pb(uid, channels, force)
        try:
            response = self._stub.Clear(
                request, timeout=_or(timeout, self.timeout), metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        return clear_result_from_pb(response)

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(_ClientBase):
    """Asyncio twin of `Client`: the same methods and results, awaited.

    It may be made anywhere, at module level included: its channel opens on the first call, in
    the event loop that runs it, and the client stays bound to that loop (gRPC's asyncio
    channels are). A call from another loop, e.g. a second `asyncio.run`, raises RuntimeError:
    make one AsyncClient per loop.

    Example:
        async with AsyncClient() as client:
            result = await client.deliver(uid, "ops-slack", Notification(subject="Disk full"))
    """

    _channel: grpc.aio.Channel | None
    _stub: delivery_pb2_grpc.DeliveryServiceAsyncStub
    _loop: asyncio.AbstractEventLoop | None
    _closed: bool

    def _connect(self) -> None:
        self._channel, self._loop, self._closed = None, None, False

    def _bound_stub(self) -> delivery_pb2_grpc.DeliveryServiceAsyncStub:
        """The stub, its channel opened in (and bound to) the running loop on first use."""
        loop = asyncio.get_running_loop()
        if self._closed:
            raise grpc.aio.UsageError(f"{self!r} is closed")
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
            else:
                self._channel = grpc.aio.secure_channel(
                    self.target, self._credentials, options=self._options
                )
            self._stub = delivery_pb2_grpc.DeliveryServiceStub(self._channel)
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError(
                f"{self!r} was first used in another event loop, and gRPC's asyncio channels "
                "are bound to one; make one AsyncClient per loop (e.g. per asyncio.run)"
            )
        return self._stub

    async def deliver(
        self,
        uid: str,
        channel: str,
        notification: Notification,
        *,
        retry_policy: RetryPolicy | None = None,
        persisted_attempts: int = 0,
        timeout: float | None = None,
    ) -> DeliverResult:
        """Make at most one delivery attempt for (uid, channel); see `Client.deliver`.

        Idempotent by design: calling again, or gRPC retrying after UNAVAILABLE, never sends
        twice.
        """
        request = deliver_request_to_pb(
            uid, channel, notification, retry_policy, persisted_attempts
        )
        try:
            response = await self._bound_stub().Deliver(
                request, timeout=_or(timeout, self.deliver_timeout), metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        return deliver_result_from_pb(response)

    async def attempt_count(
        self,
        uid: str,
        channel: str,
        *,
        persisted_attempts: int = 0,
        timeout: float | None = None,
    ) -> AttemptCountResult:
        """Read the state of (uid, channel) without changing it; see `Client.attempt_count`."""
        request = attempt_count_request_to_pb(uid, channel, persisted_attempts)
        try:
            response = await self._bound_stub().AttemptCount(
                request, timeout=_or(timeout, self.timeout), metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        return attempt_count_result_from_pb(response)

    async def clear(
        self,
        uid: str,
        channels: Iterable[str] = (),
        *,
        force: bool = False,
        timeout: float | None = None,
    ) -> ClearResult:
        """Forget a notification; see `Client.clear`."""
        request = clear_request_to_pb(uid, channels, force)
        try:
            response = await self._bound_stub().Clear(
                request, timeout=_or(timeout, self.timeout), metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        return clear_result_from_pb(response)

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._closed = True
        if self._channel is not None and self._loop is asyncio.get_running_loop():
            await self._channel.close(None)
        # Else its loop is another one (likely ended with its asyncio.run): the channel cannot
        # be closed from here, and is released when collected.
        self._channel = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _or(timeout: float | None, default: float) -> float:
    return default if timeout is None else timeout
