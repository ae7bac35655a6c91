"""Hostile bytes and values against a real sidecar: each is refused INVALID_ARGUMENT, naming what
is wrong, nothing is sent, and the server logs no traceback."""

from __future__ import annotations

import logging
import math

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sendonce.v1 import delivery_pb2 as pb
from sendonce_server.config import ConfigError, ReceiversFile
from tests.server.conftest import StartSidecar
from tests.server.test_deliver import deliver, webhook
from tests.support.http_receiver import HttpReceiver

INT64_MAX = 2**63 - 1
DELIVER = "/sendonce.v1.DeliveryService/Deliver"


def loud(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the server logged above debug level, or with a traceback."""
    return [r for r in caplog.records if r.levelno > logging.DEBUG or r.exc_info]


@pytest.mark.parametrize(
    ("method", "data", "message"),
    [
        (
            DELIVER,
            b"\xff\xff\xff",
            "not a valid sendonce.v1.DeliverRequest: Wire format was corrupt",
        ),
        (
            DELIVER,
            b"\x0a\x02\xff\xfe",
            "not a valid sendonce.v1.DeliverRequest: uid is not valid UTF-8",
        ),
        (
            DELIVER,
            pb.DeliverRequest(uid="u", channel="hook", notification=pb.Notification(subject="s"))
            .SerializeToString()
            .replace(b"\x0a\x01s", b"\x0a\x01\xc3"),
            "not a valid sendonce.v1.DeliverRequest: notification.subject is not valid UTF-8",
        ),
        (
            DELIVER,
            b"\x0a\x01u\x12\x04hook\x1a\x03\x0a\x05s",  # the subject says 5 bytes, has 1
            "DeliverRequest: notification is not a valid sendonce.v1.Notification",
        ),
        (
            "/sendonce.v1.DeliveryService/AttemptCount",
            b"\x12\x01\x80",
            "not a valid sendonce.v1.AttemptCountRequest: channel is not valid UTF-8",
        ),
        (
            "/sendonce.v1.DeliveryService/Clear",
            b"\x0a\x01u\x12\x02\xc3\x28",
            "not a valid sendonce.v1.ClearRequest: channels[0] is not valid UTF-8",
        ),
        (
            "/grpc.health.v1.Health/Check",
            b"\x0a\x01\xff",
            "not a valid grpc.health.v1.HealthCheckRequest: service is not valid UTF-8",
        ),
        ("/grpc.health.v1.Health/List", b"\x0a", "not a valid grpc.health.v1.HealthListRequest"),
    ],
)
async def test_bytes_that_do_not_parse_are_invalid_argument_without_a_traceback(
    start_sidecar: StartSidecar,
    http_receiver: HttpReceiver,
    caplog: pytest.LogCaptureFixture,
    method: str,
    data: bytes,
    message: str,
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver))
    call = sidecar.channel.unary_unary(method, None, None)

    with caplog.at_level(logging.DEBUG), pytest.raises(grpc.aio.AioRpcError) as error:
        await call(data)

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (error.value.details() or "")
    assert http_receiver.hits == 0
    assert loud(caplog) == []


async def test_streams_refuse_bytes_that_do_not_parse(
    start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    sidecar = await start_sidecar({"receivers": [{"name": "hook", "type": "noop"}]})
    watch = sidecar.channel.unary_stream("/grpc.health.v1.Health/Watch", None, None)
    reflect = sidecar.channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", None, None
    )

    with caplog.at_level(logging.DEBUG):
        with pytest.raises(grpc.aio.AioRpcError) as watched:
            async for _ in watch(b"\x0a\x01\xff"):
                pass
        with pytest.raises(grpc.aio.AioRpcError) as reflected:
            async for _ in reflect(iter([b"\xff\xff"])):
                pass

    assert watched.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "HealthCheckRequest: service is not valid UTF-8" in (watched.value.details() or "")
    assert reflected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ServerReflectionRequest" in (reflected.value.details() or "")
    assert loud(caplog) == []


async def test_health_list_answers_every_status_without_a_traceback(
    start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    sidecar = await start_sidecar({"receivers": [{"name": "hook", "type": "noop"}]})
    health = health_pb2_grpc.HealthStub(sidecar.channel)

    with caplog.at_level(logging.DEBUG):
        answer = await health.List(health_pb2.HealthListRequest())

    serving = health_pb2.HealthCheckResponse.SERVING
    assert {name: status.status for name, status in answer.statuses.items()} == {
        "": serving,
        "sendonce.v1.DeliveryService": serving,
    }
    assert loud(caplog) == []


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (
            pb.RetryPolicy(initial_backoff=Duration(seconds=10**15)),
            "retry_policy.initial_backoff: must be at most 31536000 seconds (365 days)",
        ),
        (
            pb.RetryPolicy(initial_backoff=Duration(seconds=INT64_MAX)),
            "retry_policy.initial_backoff: must be at most 31536000 seconds",
        ),
        (
            pb.RetryPolicy(max_backoff=Duration(seconds=INT64_MAX)),
            "retry_policy.max_backoff: must be at most 31536000 seconds",
        ),
        (
            pb.RetryPolicy(initial_backoff=Duration(seconds=1, nanos=2_000_000_000)),
            "retry_policy.initial_backoff.nanos: must be between 0 and 999999999, got 2000000000",
        ),
        (
            pb.RetryPolicy(max_backoff=Duration(nanos=1_000_000_000)),
            "retry_policy.max_backoff.nanos: must be between 0 and 999999999",
        ),
        (
            pb.RetryPolicy(initial_backoff=Duration(seconds=-1)),
            "retry_policy.initial_backoff: must not be negative",
        ),
        (
            pb.RetryPolicy(multiplier=math.nan),
            "retry_policy.multiplier: must be between 1 and 100, got nan",
        ),
        (
            pb.RetryPolicy(multiplier=math.inf),
            "retry_policy.multiplier: must be between 1 and 100, got inf",
        ),
        (
            pb.RetryPolicy(multiplier=101),
            "retry_policy.multiplier: must be between 1 and 100, got 101",
        ),
        (
            pb.RetryPolicy(multiplier=0.5),
            "retry_policy.multiplier: must be between 1 and 100, got 0.5",
        ),
        (
            pb.RetryPolicy(jitter=math.nan),
            "retry_policy.jitter: must be between 0 and 1, got nan",
        ),
    ],
)
async def test_retry_policy_values_out_of_bounds_are_refused_naming_the_field(
    start_sidecar: StartSidecar,
    http_receiver: HttpReceiver,
    policy: pb.RetryPolicy,
    message: str,
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver))

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await sidecar.stub.Deliver(deliver(retry_policy=policy))

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (error.value.details() or "")
    assert http_receiver.hits == 0


async def test_retry_policy_at_its_bounds_is_accepted(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver))
    year = Duration(seconds=365 * 86_400)
    policy = pb.RetryPolicy(
        initial_backoff=year, max_backoff=year, multiplier=100, jitter=1.0, max_attempts=20
    )

    answer = await sidecar.stub.Deliver(deliver(retry_policy=policy))

    assert answer.outcome == pb.OUTCOME_DELIVERED
    assert http_receiver.hits == 1


@pytest.mark.parametrize(
    ("retry", "message"),
    [
        ({"multiplier": math.inf}, "retry.multiplier: must be between 1 and 100, got inf"),
        ({"initial_backoff": 1e15}, "retry.initial_backoff: must be at most 31536000 seconds"),
    ],
)
def test_the_receivers_file_keeps_the_same_bounds(retry: dict[str, float], message: str) -> None:
    config = ReceiversFile.model_validate(
        {"receivers": [{"name": "hook", "type": "noop", "retry": retry}]}
    )

    with pytest.raises(ConfigError, match=message):
        config.policy_for(config.receivers[0])
