"""The twin clients against a fake sidecar: conversions, deadlines, retries, errors, transport."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from sendonce import (
    AsyncClient,
    Attempt,
    AttemptResult,
    Cancelled,
    Client,
    DeadlineExceeded,
    FieldViolation,
    InvalidArgument,
    Link,
    NotFound,
    Notification,
    Outcome,
    PayloadMismatch,
    PermissionDenied,
    Priority,
    Receipt,
    ResourceExhausted,
    RetryPolicy,
    SendonceError,
    Unauthenticated,
    Unavailable,
)
from sendonce.types import attempt_from_pb, deliver_result_from_pb
from sendonce.v1 import delivery_pb2

from .conftest import Connect, RunningServer, Twin, assert_deadline, serve

NOTE = Notification(subject="Disk full")


# --- requests arrive as sent -------------------------------------------------------------------


async def test_deliver_sends_every_field(twin: Twin, server: RunningServer) -> None:
    notification = Notification(
        subject="Disk full on node-3",
        body="**97 %** used",
        priority=Priority.CRITICAL,
        metadata={"cluster": "prod", "namespace": "web"},
        links=(Link("Runbook", "https://runbooks/disk"), Link("Grafana", "https://g/d/1")),
    )
    policy = RetryPolicy(
        max_attempts=7,
        initial_backoff=timedelta(seconds=1.5),
        multiplier=3.0,
        max_backoff=timedelta(minutes=2),
        jitter=0.0,
    )

    await twin.deliver(
        "uid-1", "ops-slack", notification, retry_policy=policy, persisted_attempts=2
    )

    request = server.servicer.last(delivery_pb2.DeliverRequest)
    assert (request.uid, request.channel, request.persisted_attempts) == ("uid-1", "ops-slack", 2)
    sent = request.notification
    assert (sent.subject, sent.body) == ("Disk full on node-3", "**97 %** used")
    assert sent.priority == delivery_pb2.PRIORITY_CRITICAL
    assert dict(sent.metadata) == {"cluster": "prod", "namespace": "web"}
    assert [(link.title, link.url) for link in sent.links] == [
        ("Runbook", "https://runbooks/disk"),
        ("Grafana", "https://g/d/1"),
    ]
    sent_policy = request.retry_policy
    assert sent_policy.max_attempts == 7
    assert sent_policy.initial_backoff == duration_pb2.Duration(seconds=1, nanos=500_000_000)
    assert sent_policy.multiplier == 3.0
    assert sent_policy.max_backoff == duration_pb2.Duration(seconds=120)
    # jitter is `optional`: an explicit 0.0 (no jitter) must be distinguishable from unset.
    assert sent_policy.HasField("jitter")
    assert sent_policy.jitter == 0.0


async def test_deliver_leaves_unset_fields_unset(twin: Twin, server: RunningServer) -> None:
    await twin.deliver("uid-1", "ops", NOTE)
    request = server.servicer.last(delivery_pb2.DeliverRequest)
    assert not request.HasField("retry_policy")
    assert request.notification.priority == delivery_pb2.PRIORITY_UNSPECIFIED
    assert request.persisted_attempts == 0

    await twin.deliver("uid-1", "ops", NOTE, retry_policy=RetryPolicy(max_attempts=3))
    policy = server.servicer.last(delivery_pb2.DeliverRequest).retry_policy
    assert policy.max_attempts == 3
    assert not policy.HasField("initial_backoff")
    assert not policy.HasField("max_backoff")
    assert not policy.HasField("jitter")
    assert policy.multiplier == 0.0


async def test_attempt_count_and_clear_send_every_field(twin: Twin, server: RunningServer) -> None:
    await twin.attempt_count("uid-1", "ops", persisted_attempts=4)
    read = server.servicer.last(delivery_pb2.AttemptCountRequest)
    assert (read.uid, read.channel, read.persisted_attempts) == ("uid-1", "ops", 4)

    await twin.clear("uid-1", "ops", "mail", force=True)
    clear = server.servicer.last(delivery_pb2.ClearRequest)
    assert (clear.uid, list(clear.channels), clear.force) == ("uid-1", ["ops", "mail"], True)

    await twin.clear("uid-2")
    clear = server.servicer.last(delivery_pb2.ClearRequest)
    assert (clear.uid, list(clear.channels), clear.force) == ("uid-2", [], False)


# --- responses come back typed -----------------------------------------------------------------


async def test_deliver_result_is_typed(twin: Twin, server: RunningServer) -> None:
    server.servicer.deliver_response = delivery_pb2.DeliverResponse(
        outcome=delivery_pb2.OUTCOME_DELIVERED,
        attempt=2,
        attempts_used=2,
        max_attempts=5,
        retry_after=duration_pb2.Duration(seconds=90, nanos=500_000_000),
        last_error="HTTP 503",
        shared=True,
        final=True,
        receipt=delivery_pb2.Receipt(reference="HTTP 200", details={"status_code": "200"}),
    )

    result = await twin.deliver("uid-1", "ops", NOTE)

    assert result.outcome is Outcome.DELIVERED
    assert (result.attempt, result.attempts_used, result.max_attempts) == (2, 2, 5)
    assert result.retry_after == timedelta(seconds=90.5)
    assert (result.last_error, result.shared, result.final) == ("HTTP 503", True, True)
    assert result.receipt == Receipt("HTTP 200", {"status_code": "200"})
    assert result.delivered
    assert not result.gave_up


async def test_unset_response_fields_are_none(twin: Twin, server: RunningServer) -> None:
    server.servicer.deliver_response = delivery_pb2.DeliverResponse(
        outcome=delivery_pb2.OUTCOME_EXHAUSTED, attempts_used=5, max_attempts=5, final=True
    )
    result = await twin.deliver("uid-1", "ops", NOTE)
    assert result.retry_after is None
    assert result.receipt is None
    assert result.gave_up
    assert not result.delivered


async def test_attempt_count_result_is_typed(twin: Twin, server: RunningServer) -> None:
    server.servicer.attempt_count_response = delivery_pb2.AttemptCountResponse(
        found=True,
        attempts_used=2,
        max_attempts=5,
        remaining=3,
        in_flight=True,
        succeeded=False,
        final=False,
        retry_after=duration_pb2.Duration(seconds=30),
        last_error="HTTP 503",
        cleared=True,
        history=[
            delivery_pb2.Attempt(
                number=1,
                start_time=timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=250_000_000),
                duration=duration_pb2.Duration(nanos=300_000_000),
                result=delivery_pb2.ATTEMPT_RESULT_FAILED,
                error="HTTP 503",
            ),
            delivery_pb2.Attempt(
                number=2,
                start_time=timestamp_pb2.Timestamp(seconds=1_700_000_060),
                result=delivery_pb2.ATTEMPT_RESULT_RUNNING,
            ),
        ],
    )

    result = await twin.attempt_count("uid-1", "ops")

    assert (result.found, result.attempts_used, result.max_attempts, result.remaining) == (
        True,
        2,
        5,
        3,
    )
    assert (result.in_flight, result.succeeded, result.final, result.cleared) == (
        True,
        False,
        False,
        True,
    )
    assert result.retry_after == timedelta(seconds=30)
    assert result.last_error == "HTTP 503"
    assert result.history == (
        Attempt(
            number=1,
            start_time=datetime(2023, 11, 14, 22, 13, 20, 250_000, tzinfo=UTC),
            duration=timedelta(milliseconds=300),
            result=AttemptResult.FAILED,
            error="HTTP 503",
        ),
        Attempt(
            number=2,
            start_time=datetime(2023, 11, 14, 22, 14, 20, tzinfo=UTC),
            duration=None,
            result=AttemptResult.RUNNING,
        ),
    )
    assert result.history[0].start_time.utcoffset() == timedelta(0)


async def test_clear_result_is_typed(twin: Twin, server: RunningServer) -> None:
    server.servicer.clear_response = delivery_pb2.ClearResponse(
        cleared_channels=["ops", "mail"], running_channels=["pager"]
    )
    result = await twin.clear("uid-1")
    assert result.cleared_channels == ("ops", "mail")
    assert result.running_channels == ("pager",)


# .keys(): the generated enum wrappers are not dicts, so iterating them does not work.
OUTCOME_NAMES = [n for n in delivery_pb2.Outcome.keys() if "UNSPECIFIED" not in n]  # noqa: SIM118
RESULT_NAMES = [n for n in delivery_pb2.AttemptResult.keys() if "UNSPECIFIED" not in n]  # noqa: SIM118


@pytest.mark.parametrize("name", OUTCOME_NAMES)
def test_every_proto_outcome_has_a_member(name: str) -> None:
    message = delivery_pb2.DeliverResponse(outcome=delivery_pb2.Outcome.Value(name))
    assert deliver_result_from_pb(message).outcome.name == name.removeprefix("OUTCOME_")


@pytest.mark.parametrize("name", RESULT_NAMES)
def test_every_proto_attempt_result_has_a_member(name: str) -> None:
    message = delivery_pb2.Attempt(result=delivery_pb2.AttemptResult.Value(name))
    assert attempt_from_pb(message).result.name == name.removeprefix("ATTEMPT_RESULT_")


@pytest.mark.parametrize("number", [0, 99])
def test_values_this_client_does_not_know_are_unknown(number: int) -> None:
    # A newer sidecar may send a new outcome: old clients must not crash on it.
    response = delivery_pb2.DeliverResponse(outcome=delivery_pb2.Outcome.ValueType(number))
    assert deliver_result_from_pb(response).outcome is Outcome.UNKNOWN
    attempt = delivery_pb2.Attempt(result=delivery_pb2.AttemptResult.ValueType(number))
    assert attempt_from_pb(attempt).result is AttemptResult.UNKNOWN


# --- deadlines ---------------------------------------------------------------------------------


async def test_default_deadlines(twin: Twin, server: RunningServer) -> None:
    await twin.deliver("uid-1", "ops", NOTE)
    await twin.attempt_count("uid-1", "ops")
    await twin.clear("uid-1")
    deliver, read, clear = (call.time_remaining for call in server.servicer.calls)
    assert_deadline(deliver, 30)
    assert_deadline(read, 5)
    assert_deadline(clear, 5)


async def test_deadlines_can_be_overridden(connect: Connect, server: RunningServer) -> None:
    twin = connect(server.address, timeout=3, deliver_timeout=12)
    await twin.deliver("uid-1", "ops", NOTE)
    await twin.attempt_count("uid-1", "ops")
    await twin.deliver("uid-1", "ops", NOTE, timeout=0.5)
    deliver, read, per_call = (call.time_remaining for call in server.servicer.calls)
    assert_deadline(deliver, 12)
    assert_deadline(read, 3)
    assert_deadline(per_call, 0.5)


async def test_deadline_exceeded(twin: Twin, server: RunningServer) -> None:
    server.servicer.hang = True
    with pytest.raises(DeadlineExceeded):
        await twin.attempt_count("uid-1", "ops", timeout=0.2)


# --- retries -----------------------------------------------------------------------------------


async def test_unavailable_is_retried_by_grpc(twin: Twin, server: RunningServer) -> None:
    server.servicer.aborts = [(grpc.StatusCode.UNAVAILABLE, "warming up")] * 2
    server.servicer.deliver_response = delivery_pb2.DeliverResponse(
        outcome=delivery_pb2.OUTCOME_DELIVERED, attempt=1
    )

    result = await twin.deliver("uid-1", "ops", NOTE)

    assert result.outcome is Outcome.DELIVERED
    assert [call.method for call in server.servicer.calls] == ["Deliver"] * 3


async def test_retries_stop_after_five_attempts(twin: Twin, server: RunningServer) -> None:
    server.servicer.aborts = [(grpc.StatusCode.UNAVAILABLE, "down")] * 6
    with pytest.raises(Unavailable, match="down"):
        await twin.attempt_count("uid-1", "ops")
    assert len(server.servicer.calls) == 5


async def test_other_errors_are_not_retried(twin: Twin, server: RunningServer) -> None:
    server.servicer.aborts = [(grpc.StatusCode.INVALID_ARGUMENT, "uid is empty")] * 2
    with pytest.raises(InvalidArgument):
        await twin.deliver("", "ops", NOTE)
    assert len(server.servicer.calls) == 1


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.FAILED_PRECONDITION, PayloadMismatch),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
        (grpc.StatusCode.CANCELLED, Cancelled),
        (grpc.StatusCode.INTERNAL, SendonceError),
    ],
)
async def test_errors_map_to_exceptions(
    twin: Twin, server: RunningServer, code: grpc.StatusCode, error: type[SendonceError]
) -> None:
    server.servicer.aborts = [(code, "the details")]
    with pytest.raises(SendonceError) as caught:
        await twin.deliver("uid-1", "ops", NOTE)
    assert type(caught.value) is error
    assert (caught.value.code, caught.value.details) == (code, "the details")
    assert str(caught.value) == f"{code.name}: the details"
    assert isinstance(caught.value.__cause__, grpc.RpcError)


async def test_error_details_reach_both_twins(twin: Twin, server: RunningServer) -> None:
    """The AIP-193 details in the grpc-status-details-bin trailer, from a real server."""
    message = "retry_policy.max_attempts: must be between 1 and 20, got 30"
    violation = error_details_pb2.BadRequest.FieldViolation(
        field="retry_policy.max_attempts", description="must be between 1 and 20, got 30"
    )
    details = [
        error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT", domain="sendonce.dev"),
        error_details_pb2.BadRequest(field_violations=[violation]),
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=3)),
    ]
    status = status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=message)
    for detail in details:
        status.details.add().Pack(detail)
    server.servicer.aborts = [(grpc.StatusCode.INVALID_ARGUMENT, message)]
    server.servicer.abort_trailer = tuple(rpc_status.to_status(status).trailing_metadata)

    with pytest.raises(InvalidArgument) as caught:
        await twin.deliver("uid-1", "ops", NOTE, retry_policy=RetryPolicy(max_attempts=30))

    error = caught.value
    assert (error.reason, error.domain) == ("INVALID_ARGUMENT", "sendonce.dev")
    assert error.field_violations == (
        FieldViolation("retry_policy.max_attempts", "must be between 1 and 20, got 30"),
    )
    assert error.retry_delay == timedelta(seconds=3)


# --- transport and configuration ---------------------------------------------------------------


async def test_bearer_token_is_sent(connect: Connect, server: RunningServer) -> None:
    await connect(server.address, token="s3cret").attempt_count("uid-1", "ops")
    await connect(server.address).attempt_count("uid-1", "ops")
    with_token, without = server.servicer.calls
    assert with_token.metadata["authorization"] == "Bearer s3cret"
    assert "authorization" not in without.metadata


async def test_unix_socket(connect: Connect, unix_server: RunningServer) -> None:
    assert unix_server.address.startswith("unix:/")
    unix_server.servicer.clear_response = delivery_pb2.ClearResponse(cleared_channels=["ops"])
    result = await connect(unix_server.address).clear("uid-1")
    assert result.cleared_channels == ("ops",)


async def test_address_from_environment(
    connect: Connect, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENDONCE_ADDRESS", server.address)
    twin = connect()
    assert twin.client.target == server.address
    await twin.attempt_count("uid-1", "ops")
    assert len(server.servicer.calls) == 1


def test_default_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENDONCE_ADDRESS", raising=False)
    with Client() as client:
        assert client.target == "127.0.0.1:50051"


def test_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValueError, match="go together"):
        Client("127.0.0.1:1", certificate_chain=b"cert")


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[bytes, bytes]:
    """A throwaway key and certificate for 127.0.0.1, from the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=sendonce-test"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return key.read_bytes(), cert.read_bytes()


async def test_tls(connect: Connect, self_signed: tuple[bytes, bytes]) -> None:
    key, cert = self_signed
    with serve("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)])) as tls_server:
        twin = connect(tls_server.address, root_certificates=cert, token="s3cret")
        await twin.attempt_count("uid-1", "ops")
        assert tls_server.servicer.calls[0].metadata["authorization"] == "Bearer s3cret"

        # The same server refuses a plaintext client: TLS was really in use.
        with pytest.raises(Unavailable):
            await connect(tls_server.address).attempt_count("uid-1", "ops", timeout=10)


async def test_context_managers(server: RunningServer) -> None:
    with Client(server.address) as client:
        assert client.clear("uid-1").cleared_channels == ()
    with pytest.raises(ValueError, match="closed"):
        client.clear("uid-1")

    async with AsyncClient(server.address) as aclient:
        assert (await aclient.clear("uid-1")).cleared_channels == ()
    with pytest.raises(grpc.aio.UsageError):
        await aclient.clear("uid-1")


def test_async_client_made_outside_any_loop(server: RunningServer) -> None:
    """As at module level: made with no loop running, used under asyncio.run."""
    server.servicer.clear_response = delivery_pb2.ClearResponse(cleared_channels=["ops"])
    client = AsyncClient(server.address)

    async def use() -> tuple[str, ...]:
        return (await client.clear("uid-1")).cleared_channels

    async def use_twice() -> list[tuple[str, ...]]:
        return [await use(), await use()]  # the channel opened by the first call serves both

    assert asyncio.run(use_twice()) == [("ops",), ("ops",)]

    # A later asyncio.run is another loop: a clear error, not "Future attached to a different
    # loop" from deep inside gRPC.
    with pytest.raises(
        RuntimeError, match=r"first used in another event loop.*one AsyncClient per"
    ):
        asyncio.run(use())
    asyncio.run(client.close())
    assert len(server.servicer.calls) == 2
