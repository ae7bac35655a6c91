"""The sidecar on each store, and what it does while a shared store is down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sendonce.v1 import delivery_pb2 as pb
from tests.server.conftest import StartSidecar
from tests.support.http_receiver import HttpReceiver
from tests.support.redis_server import RedisServer

NOTE = pb.Notification(subject="Job backup failed")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def webhook(receiver: HttpReceiver) -> dict[str, object]:
    return {"receivers": [{"name": "hook", "type": "webhook", "settings": {"url": receiver.url}}]}


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-cluster"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/state.db"
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    if request.param == "redis-cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    return "memory"


async def test_concurrent_calls_share_one_attempt_on_every_store(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver, store_url: str
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver), store=store_url)
    uid = f"uid-{store_url[:6]}-{id(sidecar)}"
    http_receiver.hold()

    calls = [
        asyncio.ensure_future(
            sidecar.stub.Deliver(pb.DeliverRequest(uid=uid, channel="hook", notification=NOTE))
        )
        for _ in range(50)
    ]
    await http_receiver.wait_for_hits(1)
    http_receiver.release()
    answers = await asyncio.gather(*calls)
    again = await sidecar.stub.Deliver(
        pb.DeliverRequest(uid=uid, channel="hook", notification=NOTE)
    )

    assert http_receiver.hits == 1
    assert {a.outcome for a in answers} <= {pb.OUTCOME_DELIVERED, pb.OUTCOME_ALREADY_DELIVERED}
    assert {a.attempt for a in answers} == {1}
    assert again.outcome == pb.OUTCOME_ALREADY_DELIVERED


async def _health_changes(channel: grpc.aio.Channel) -> AsyncIterator[int]:
    stub = health_pb2_grpc.HealthStub(channel)
    service = "sendonce.v1.DeliveryService"  # readiness; "" (liveness) stays SERVING
    async for answer in stub.Watch(health_pb2.HealthCheckRequest(service=service)):
        yield answer.status


async def test_a_redis_outage_answers_unavailable_sends_nothing_and_recovers(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver, own_redis: RedisServer
) -> None:
    sidecar = await start_sidecar(
        webhook(http_receiver), store=own_redis.url, store_check_interval=0.05
    )
    health = _health_changes(sidecar.channel)
    assert await anext(health) == SERVING

    own_redis.stop()
    assert await anext(health) == NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await sidecar.stub.Deliver(pb.DeliverRequest(uid="u", channel="hook", notification=NOTE))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "nothing sent" in (error.value.details() or "")
    assert http_receiver.hits == 0

    own_redis.start()
    assert await anext(health) == SERVING
    answer = await sidecar.stub.Deliver(
        pb.DeliverRequest(uid="u", channel="hook", notification=NOTE)
    )
    assert answer.outcome == pb.OUTCOME_DELIVERED
    assert http_receiver.hits == 1
