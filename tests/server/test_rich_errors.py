"""Every refusal carries Google AIP-193 details, read here as any Python program would
(`grpc_status.rpc_status.from_call`) from a real sidecar: one test per `ErrorInfo.reason`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from sendonce.v1 import delivery_pb2 as pb
from tests.server.conftest import StartSidecar
from tests.server.test_deliver import deliver, webhook
from tests.support.http_receiver import HttpReceiver
from tests.support.redis_server import RedisServer

DOMAIN = "sendonce.dev"


@dataclass
class Details:
    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: dict[str, str]
    violations: dict[str, str]
    retry_delay: float | None


def read(error: grpc.aio.AioRpcError) -> Details:
    # An AioRpcError answers code(), details() and trailing_metadata() as a grpc.Call does.
    status: status_pb2.Status | None = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None, f"no details with {error.code()}: {error.details()}"
    infos, violations, delay = [], {}, None
    for detail in status.details:
        info, bad, retry = (
            error_details_pb2.ErrorInfo(),
            error_details_pb2.BadRequest(),
            error_details_pb2.RetryInfo(),
        )
        if detail.Unpack(info):
            infos.append(info)
        elif detail.Unpack(bad):
            violations.update({v.field: v.description for v in bad.field_violations})
        elif detail.Unpack(retry):
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    assert len(infos) == 1
    return Details(
        error.code(),
        status.message,
        infos[0].reason,
        infos[0].domain,
        dict(infos[0].metadata),
        violations,
        delay,
    )


async def test_invalid_argument_names_the_field_in_a_bad_request(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver))

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await sidecar.stub.Deliver(deliver(retry_policy=pb.RetryPolicy(max_attempts=21)))

    details = read(error.value)
    assert (details.code, details.reason, details.domain) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        DOMAIN,
    )
    assert details.violations == {"retry_policy.max_attempts": "must be between 1 and 20, got 21"}
    assert details.metadata == {"field": "retry_policy.max_attempts"}
    assert details.message == "retry_policy.max_attempts: must be between 1 and 20, got 21"
    assert details.retry_delay is None


async def test_malformed_request_names_the_field_that_does_not_parse(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver))
    data = b"\x0a\x01u\x12\x04hook\x1a\x03\x0a\x01\xc3"  # the subject is not UTF-8
    call = sidecar.channel.unary_unary("/sendonce.v1.DeliveryService/Deliver", None, None)

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(data)

    details = read(error.value)
    assert (details.code, details.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    )
    assert details.violations == {"notification.subject": "is not valid UTF-8"}


async def test_unknown_channel(start_sidecar: StartSidecar, http_receiver: HttpReceiver) -> None:
    sidecar = await start_sidecar(webhook(http_receiver))

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await sidecar.stub.AttemptCount(pb.AttemptCountRequest(uid="u", channel="pager"))

    details = read(error.value)
    assert (details.code, details.reason, details.domain) == (
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_CHANNEL",
        DOMAIN,
    )
    assert details.metadata == {"channel": "pager"}


async def test_payload_mismatch(start_sidecar: StartSidecar, http_receiver: HttpReceiver) -> None:
    sidecar = await start_sidecar(webhook(http_receiver))
    await sidecar.stub.Deliver(deliver("k1"))

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await sidecar.stub.Deliver(
            deliver("k1", notification=pb.Notification(subject="another subject"))
        )

    details = read(error.value)
    assert (details.code, details.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PAYLOAD_MISMATCH",
    )
    assert details.metadata == {"uid": "k1", "channel": "hook"}
    assert http_receiver.hits == 1


async def test_store_unavailable(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver, own_redis: RedisServer
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver), store=own_redis.url)
    own_redis.stop()

    # A read: a Deliver would leave a reservation to give back once the store returns, which
    # the sidecar's stop would wait for.
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await sidecar.stub.AttemptCount(pb.AttemptCountRequest(uid="u", channel="hook"))
    own_redis.start()

    details = read(error.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
    assert details.message.startswith("delivery state store unavailable: redis")


async def test_shutting_down(start_sidecar: StartSidecar, http_receiver: HttpReceiver) -> None:
    sidecar = await start_sidecar(webhook(http_receiver))
    sidecar.sidecar.gate.closed = True  # the first step of Sidecar.stop

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await sidecar.stub.Clear(pb.ClearRequest(uid="u"))

    details = read(error.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")


async def test_overloaded(start_sidecar: StartSidecar, http_receiver: HttpReceiver) -> None:
    sidecar = await start_sidecar(webhook(http_receiver), max_concurrent_rpcs=1)
    http_receiver.hold()
    held = asyncio.ensure_future(sidecar.stub.Deliver(deliver("held")))
    await http_receiver.wait_for_hits(1)

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await sidecar.stub.Deliver(deliver("second"), timeout=5)
    http_receiver.release()
    await held

    details = read(error.value)
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")
    assert details.metadata == {"limit": "1"}


async def test_too_many_watchers(start_sidecar: StartSidecar, http_receiver: HttpReceiver) -> None:
    sidecar = await start_sidecar(webhook(http_receiver), max_health_watchers=1)
    health = health_pb2_grpc.HealthStub(sidecar.channel)
    first = health.Watch(health_pb2.HealthCheckRequest(service=""))
    await first.read()

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await health.Watch(health_pb2.HealthCheckRequest(service="")).read()
    first.cancel()

    details = read(error.value)
    assert (details.code, details.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_WATCHERS",
    )
    assert details.metadata == {"limit": "1"}


async def test_unauthenticated(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    sidecar = await start_sidecar(webhook(http_receiver), auth_token_file=token_file)

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await sidecar.stub.Deliver(deliver(), metadata=(("authorization", "Bearer wrong"),))

    details = read(error.value)
    assert (details.code, details.reason, details.domain) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
        DOMAIN,
    )
    assert "s3cret" not in str(details)
    assert http_receiver.hits == 0
