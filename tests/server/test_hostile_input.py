"""Hostile bytes and values against a real sidecar: each is refused INVALID_ARGUMENT, naming what
is wrong, nothing is sent, and the server logs no traceback."""

from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from sendonce.v1 import delivery_pb2 as pb
from sendonce_server.config import ConfigError, ReceiversFile
from tests.server.conftest import StartSidecar
from tests.server.test_deliver import deliver, webhook
from tests.support.http_receiver import HttpReceiver

INT64_MAX = 2**63 - 1


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
