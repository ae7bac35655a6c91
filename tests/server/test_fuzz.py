"""Fuzzing a real sidecar: raw bytes, mutated bytes of valid requests, and wild field values.

Every answer is OK or a documented refusal (never UNKNOWN nor INTERNAL), a refused call sends
nothing to the (real, HTTP) receiver, nothing is logged with a traceback or at ERROR, and the
sidecar is healthy afterwards. The sidecar and the receiver run on their own event loop in a
thread, so that Hypothesis drives plain blocking calls; the examples are bounded to keep the
whole module within a few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendonce.v1 import delivery_pb2 as pb
from sendonce.v1 import delivery_pb2_grpc as pb_grpc
from sendonce_server.config import ReceiversFile, ServerSettings
from sendonce_server.server import Sidecar, start
from tests.support.http_receiver import HttpReceiver

T = TypeVar("T")

SERVICE = "/sendonce.v1.DeliveryService/"
METHODS = [
    f"{SERVICE}Deliver",
    f"{SERVICE}AttemptCount",
    f"{SERVICE}Clear",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/List",
]
# What docs/failures.md and the README promise a refusal can be, for calls within the limits.
DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Loop:
    """An event loop in a thread: the sidecar and the receiver live there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@dataclass
class Target:
    sidecar: Sidecar
    receiver: HttpReceiver
    channel: grpc.Channel

    def call(self, method: str, data: bytes) -> grpc.StatusCode:
        """Sends raw bytes; the status code of the answer. Asserts a refusal sent nothing."""
        hits = self.receiver.hits
        call = self.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            call(data, timeout=10)
            code, details = grpc.StatusCode.OK, None
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
        if code == grpc.StatusCode.OK:
            assert self.receiver.hits - hits <= 1
        else:
            assert code in DOCUMENTED, (method, data, code, details)
            assert self.receiver.hits == hits, "a refused call sent something"
        return code


class LoudRecords(logging.Handler):
    """Every record at ERROR or above, or with a traceback, from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    loop = Loop()
    loud = LoudRecords()
    logging.getLogger().addHandler(loud)

    async def begin() -> tuple[Sidecar, HttpReceiver]:
        receiver = await HttpReceiver().__aenter__()
        config = ReceiversFile.model_validate(
            {"receivers": [{"name": "hook", "type": "webhook", "settings": {"url": receiver.url}}]}
        )
        return await start(ServerSettings(listen="127.0.0.1:0"), config), receiver

    sidecar, receiver = loop.run(begin())
    channel = grpc.insecure_channel(sidecar.addresses[0])
    try:
        yield Target(sidecar, receiver, channel)
        # The sidecar is healthy after the storm: it serves, and delivers a valid request.
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        hits = receiver.hits
        answer = pb_grpc.DeliveryServiceStub(channel).Deliver(
            pb.DeliverRequest(
                uid="after-the-fuzz", channel="hook", notification=pb.Notification(subject="s")
            ),
            timeout=10,
        )
        assert answer.outcome == pb.OUTCOME_DELIVERED
        assert receiver.hits == hits + 1
        assert [record.getMessage() for record in loud.records] == []
    finally:
        logging.getLogger().removeHandler(loud)
        channel.close()
        loop.run(sidecar.stop())
        loop.run(receiver.close())
        loop.close()


VALID = pb.DeliverRequest(
    uid="fuzz-base",
    channel="hook",
    notification=pb.Notification(
        subject="Deployment web failed",
        body="3 of 3 pods",
        priority=pb.PRIORITY_HIGH,
        metadata={"namespace": "prod"},
        links=[pb.Link(title="logs", url="https://example.invalid/logs")],
    ),
    retry_policy=pb.RetryPolicy(
        max_attempts=3,
        initial_backoff=Duration(seconds=1),
        multiplier=2.0,
        max_backoff=Duration(seconds=10),
        jitter=0.1,
    ),
    persisted_attempts=1,
).SerializeToString()


@st.composite
def mutated(draw: st.DrawFn, base: bytes = VALID) -> bytes:
    """A valid request's bytes with a few bytes flipped, cut, inserted or removed."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if kind == "flip" and where < len(data):
            data[where] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[where : where + draw(st.integers(1, 8))]
        elif kind == "cut":
            del data[where:]
    return bytes(data)


text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
# Hypothesis draws small integers far more often than large ones: the edges are named too.
int64 = (
    st.integers(0, 10**6)
    | st.sampled_from([-1, 10**15, 2**63 - 1])
    | st.integers(-(2**63), 2**63 - 1)
)
int32 = st.integers(0, 10**9) | st.sampled_from([-1, 999_999_999, 2 * 10**9, 2**31 - 1])
durations = st.builds(Duration, seconds=int64, nanos=int32)
doubles = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([math.nan, -0.0])


def mostly(valid: st.SearchStrategy[T], wild: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """Valid three times in four, so that most requests get past the first field's check."""
    return st.one_of(valid, valid, valid, wild)


@st.composite
def wild_requests(draw: st.DrawFn) -> bytes:
    """A DeliverRequest whose fields are drawn from their whole type, not the valid range."""
    policy = pb.RetryPolicy(
        max_attempts=draw(mostly(st.integers(0, 20), st.integers(0, 2**32 - 1))),
        multiplier=draw(mostly(st.floats(1, 100), doubles)),
    )
    if draw(st.booleans()):
        policy.initial_backoff.CopyFrom(draw(durations))
    if draw(st.booleans()):
        policy.max_backoff.CopyFrom(draw(durations))
    if draw(st.booleans()):
        policy.jitter = draw(mostly(st.floats(0, 1), doubles))
    links = draw(st.lists(st.tuples(text, text), max_size=3))
    request = pb.DeliverRequest(
        uid=draw(mostly(st.sampled_from(["u", "fuzz-base", "x" * 253]), text)),
        channel=draw(mostly(st.just("hook"), text)),
        notification=pb.Notification(
            subject=draw(mostly(st.just("subject"), text)),
            body=draw(text),
            priority=draw(mostly(st.integers(0, 4), st.integers(-(2**31), 2**31 - 1))),  # type: ignore[arg-type]
            metadata=draw(st.dictionaries(text, text, max_size=3)),
            links=[pb.Link(title=title, url=url) for title, url in links],
        ),
        persisted_attempts=draw(mostly(st.integers(0, 5), st.integers(0, 2**32 - 1))),
    )
    if draw(st.booleans()):
        request.retry_policy.CopyFrom(policy)
    return request.SerializeToString()


@FUZZ
@given(method=st.sampled_from(METHODS), data=st.binary(max_size=300))
def test_raw_bytes(target: Target, method: str, data: bytes) -> None:
    target.call(method, data)


@FUZZ
@given(method=st.sampled_from(METHODS[:3]), data=mutated())
def test_mutated_valid_requests(target: Target, method: str, data: bytes) -> None:
    target.call(method, data)


@FUZZ
@given(data=wild_requests())
def test_wild_field_values(target: Target, data: bytes) -> None:
    target.call(f"{SERVICE}Deliver", data)
