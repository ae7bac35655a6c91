"""The blocking client against scripted answers (grpcio-testing's `grpc_testing.channel`).

A real server cannot send every status code, or hand-built error details, on demand: here the
test plays the server for each call. grpc_testing does not run a channel's service config, so
the retries gRPC makes on UNAVAILABLE are tested against a real server (test_client.py); what
is checked here is that the client itself never repeats a call and hands the policy to gRPC.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import grpc
import grpc_testing
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from sendonce import (
    Cancelled,
    Client,
    DeadlineExceeded,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Notification,
    Outcome,
    PayloadMismatch,
    PermissionDenied,
    ResourceExhausted,
    SendonceError,
    Unauthenticated,
    Unavailable,
)
from sendonce.v1 import delivery_pb2, delivery_pb2_grpc

SERVICE = delivery_pb2.DESCRIPTOR.services_by_name["DeliveryService"]
NOTE = Notification(subject="Disk full")
DOMAIN = "sendonce.v1.DeliveryService"


class _RecordingChannel:
    """A grpc_testing channel that also records each call's timeout (it keeps none itself)."""

    def __init__(self, channel: grpc_testing.Channel) -> None:
        self.testing = channel
        self.timeouts: list[tuple[str, float | None]] = []

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        call = self.testing.unary_unary(method, *args, **kwargs)

        def invoke(request: Message, timeout: float | None = None, **rest: Any) -> Any:
            self.timeouts.append((method.rsplit("/", 1)[1], timeout))
            return call(request, timeout=timeout, **rest)

        return invoke

    def close(self) -> None:
        pass


class ScriptedClient(Client):
    """A Client whose channel is the test's grpc_testing channel; everything else is real."""

    def __init__(self, channel: _RecordingChannel, **kwargs: Any) -> None:
        self._scripted = channel
        super().__init__("scripted", **kwargs)

    def _connect(self) -> None:
        channel: Any = self._scripted
        self._channel = channel
        self._stub = delivery_pb2_grpc.DeliveryServiceStub(channel)


class Script:
    """Runs a client call in a thread while the test answers it as the server."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.channel = _RecordingChannel(
            grpc_testing.channel([SERVICE], grpc_testing.strict_real_time())
        )
        self._pool = pool

    def client(self, **kwargs: Any) -> ScriptedClient:
        return ScriptedClient(self.channel, **kwargs)

    def call(self, run: Callable[[], Any]) -> Future[Any]:
        return self._pool.submit(run)

    def take(self, method: str) -> tuple[dict[str, str], Message, Any]:
        """The next call of `method`: its metadata, its request and the rpc to terminate."""
        metadata, request, rpc = self.channel.testing.take_unary_unary(
            SERVICE.methods_by_name[method]
        )
        return dict(metadata), request, rpc


@pytest.fixture
def script() -> Iterator[Script]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield Script(pool)


def _fail(rpc: Any, code: grpc.StatusCode, details: str, trailer: Any = ()) -> None:
    rpc.terminate(None, trailer, code, details)


# --- every status code has its error class -----------------------------------------------------

CLASSES: dict[grpc.StatusCode, type[SendonceError]] = {
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: PayloadMismatch,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK])
@pytest.mark.parametrize("method", ["Deliver", "AttemptCount", "Clear"])
def test_every_status_code_maps_to_its_error_class(
    script: Script, code: grpc.StatusCode, method: str
) -> None:
    client = script.client()
    run = {
        "Deliver": lambda: client.deliver("uid-1", "ops", NOTE),
        "AttemptCount": lambda: client.attempt_count("uid-1", "ops"),
        "Clear": lambda: client.clear("uid-1"),
    }[method]
    pending = script.call(run)
    _, _, rpc = script.take(method)
    _fail(rpc, code, "the details")

    with pytest.raises(SendonceError) as caught:
        pending.result(timeout=10)

    # Codes without a class of their own (INTERNAL, UNKNOWN, ...) raise SendonceError itself.
    assert type(caught.value) is CLASSES.get(code, SendonceError)
    assert (caught.value.code, caught.value.details) == (code, "the details")
    assert (caught.value.reason, caught.value.field_violations, caught.value.retry_delay) == (
        "",
        (),
        None,
    )
    assert isinstance(caught.value.__cause__, grpc.RpcError)


# --- rich error details (AIP-193) --------------------------------------------------------------


def _packed(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _trailer(code: grpc.StatusCode, message: str, *details: Message) -> Any:
    number = code.value[0]
    status = status_pb2.Status(code=number, message=message, details=[_packed(d) for d in details])
    return rpc_status.to_status(status).trailing_metadata


def test_error_info_bad_request_and_retry_info_are_parsed(script: Script) -> None:
    message = "uid: must not be empty; notification.subject: must not be blank"
    trailer = _trailer(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        error_details_pb2.ErrorInfo(
            reason="INVALID_ARGUMENT", domain=DOMAIN, metadata={"method": "Deliver"}
        ),
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="uid", description="must not be empty"
                ),
                error_details_pb2.BadRequest.FieldViolation(
                    field="notification.subject", description="must not be blank"
                ),
            ]
        ),
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=5000000)),
    )
    client = script.client()
    pending = script.call(lambda: client.deliver("", "ops", Notification(subject=" ")))
    _fail(script.take("Deliver")[2], grpc.StatusCode.INVALID_ARGUMENT, message, trailer)

    with pytest.raises(InvalidArgument) as caught:
        pending.result(timeout=10)

    error = caught.value
    assert (error.reason, error.domain) == ("INVALID_ARGUMENT", DOMAIN)
    assert dict(error.metadata) == {"method": "Deliver"}
    assert error.field_violations == (
        FieldViolation("uid", "must not be empty"),
        FieldViolation("notification.subject", "must not be blank"),
    )
    field, description = error.field_violations[0]  # a (field, description) pair
    assert (field, description) == ("uid", "must not be empty")
    assert error.retry_delay == timedelta(seconds=2, milliseconds=5)
    assert str(error) == f"INVALID_ARGUMENT: {message}"


def test_retry_info_alone(script: Script) -> None:
    message = "more than --max-concurrent-rpcs=2 calls at once; nothing was sent"
    trailer = _trailer(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        message,
        error_details_pb2.ErrorInfo(reason="TOO_MANY_CALLS", domain=DOMAIN),
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1)),
    )
    client = script.client()
    pending = script.call(lambda: client.attempt_count("uid-1", "ops"))
    _fail(script.take("AttemptCount")[2], grpc.StatusCode.RESOURCE_EXHAUSTED, message, trailer)

    with pytest.raises(ResourceExhausted) as caught:
        pending.result(timeout=10)

    assert caught.value.reason == "TOO_MANY_CALLS"
    assert caught.value.retry_delay == timedelta(seconds=1)
    assert caught.value.field_violations == ()


@pytest.mark.parametrize(
    "trailer",
    [
        [("grpc-status-details-bin", b"\xff\xfenot a protobuf")],
        # A Status whose code contradicts the call's own: not trusted.
        _trailer(
            grpc.StatusCode.NOT_FOUND, "x", error_details_pb2.ErrorInfo(reason="UNKNOWN_CHANNEL")
        ),
    ],
    ids=["garbage", "contradicting"],
)
def test_unusable_details_leave_the_error_intact(script: Script, trailer: Any) -> None:
    client = script.client()
    pending = script.call(lambda: client.deliver("uid-1", "ops", NOTE))
    _fail(script.take("Deliver")[2], grpc.StatusCode.FAILED_PRECONDITION, "x", trailer)

    with pytest.raises(PayloadMismatch) as caught:
        pending.result(timeout=10)

    assert (caught.value.details, caught.value.reason) == ("x", "")


# --- token and deadlines sent ------------------------------------------------------------------


def test_token_and_deadlines_are_sent(script: Script, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENDONCE_TOKEN", raising=False)
    client = script.client(token="s3cret", timeout=3, deliver_timeout=12)

    pending = script.call(lambda: client.deliver("uid-1", "ops", NOTE))
    metadata, request, rpc = script.take("Deliver")
    rpc.terminate(
        delivery_pb2.DeliverResponse(outcome=delivery_pb2.OUTCOME_DELIVERED),
        (),
        grpc.StatusCode.OK,
        "",
    )
    assert pending.result(timeout=10).outcome is Outcome.DELIVERED
    pending = script.call(lambda: client.clear("uid-1", timeout=0.5))
    _, _, rpc = script.take("Clear")
    rpc.terminate(delivery_pb2.ClearResponse(), (), grpc.StatusCode.OK, "")
    pending.result(timeout=10)

    assert metadata["authorization"] == "Bearer s3cret"
    assert isinstance(request, delivery_pb2.DeliverRequest)
    assert request.uid == "uid-1"
    assert script.channel.timeouts == [("Deliver", 12), ("Clear", 0.5)]


@pytest.mark.parametrize(
    ("environment", "argument", "sent"),
    [
        ("from-env", None, "Bearer from-env"),  # the manifests set $SENDONCE_TOKEN
        ("from-env", "explicit", "Bearer explicit"),  # an explicit argument wins
        ("from-env", "", None),  # "" sends none, whatever the environment says
        (None, None, None),
    ],
)
def test_token_from_the_environment(
    script: Script,
    monkeypatch: pytest.MonkeyPatch,
    environment: str | None,
    argument: str | None,
    sent: str | None,
) -> None:
    if environment is None:
        monkeypatch.delenv("SENDONCE_TOKEN", raising=False)
    else:
        monkeypatch.setenv("SENDONCE_TOKEN", environment)
    client = script.client(token=argument)

    pending = script.call(lambda: client.attempt_count("uid-1", "ops"))
    metadata, _, rpc = script.take("AttemptCount")
    rpc.terminate(delivery_pb2.AttemptCountResponse(), (), grpc.StatusCode.OK, "")
    pending.result(timeout=10)

    assert metadata.get("authorization") == sent


# --- retries belong to gRPC --------------------------------------------------------------------


def test_the_client_never_repeats_a_call_itself(script: Script) -> None:
    """One UNAVAILABLE answer, one call: repeating is gRPC's job (its service config), which
    knows whether the server started answering; a hand-made retry loop would not."""
    client = script.client()
    pending = script.call(lambda: client.deliver("uid-1", "ops", NOTE))
    _fail(script.take("Deliver")[2], grpc.StatusCode.UNAVAILABLE, "down")

    with pytest.raises(Unavailable):
        pending.result(timeout=10)
    assert script.channel.timeouts == [("Deliver", 30)]


def test_the_retry_policy_is_handed_to_grpc() -> None:
    with Client("127.0.0.1:1", options=[("grpc.max_receive_message_length", 1024)]) as client:
        options = dict(client._options)

    assert options["grpc.enable_retries"] == 1
    assert options["grpc.max_receive_message_length"] == 1024
    config = json.loads(str(options["grpc.service_config"]))
    (method,) = config["methodConfig"]
    assert method["name"] == [{"service": "sendonce.v1.DeliveryService"}]
    assert method["retryPolicy"] == {
        "maxAttempts": 5,
        "initialBackoff": "0.1s",
        "maxBackoff": "2s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
