"""The promises end to end: a real sidecar on loopback, a real webhook receiver, real gRPC calls."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from sendonce.v1 import delivery_pb2 as pb
from tests.server.conftest import Running, StartSidecar
from tests.support.http_receiver import HttpReceiver, Reply
from tests.support.wait import until

NOTE = pb.Notification(subject="Deployment web failed", body="3 of 3 pods crashlooping")


def webhook(receiver: HttpReceiver, **retry: Any) -> dict[str, Any]:
    return {
        "receivers": [
            {"name": "hook", "type": "webhook", "retry": retry, "settings": {"url": receiver.url}}
        ]
    }


def tiny_backoff(max_attempts: int = 5) -> pb.RetryPolicy:
    return pb.RetryPolicy(
        max_attempts=max_attempts, initial_backoff=Duration(nanos=1_000_000), jitter=0.0
    )


def deliver(uid: str = "uid-1", **fields: Any) -> pb.DeliverRequest:
    fields.setdefault("notification", NOTE)
    return pb.DeliverRequest(uid=uid, channel=fields.pop("channel", "hook"), **fields)


async def test_concurrent_calls_for_one_key_hit_a_slow_receiver_once(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver))
    http_receiver.hold()

    calls = [asyncio.ensure_future(sidecar.stub.Deliver(deliver())) for _ in range(200)]
    await http_receiver.wait_for_hits(1)
    await until(lambda: sidecar.sidecar.engine.waiting == 200)
    http_receiver.release()
    answers = await asyncio.gather(*calls)

    assert http_receiver.hits == 1
    assert {(a.outcome, a.attempt, a.attempts_used) for a in answers} == {
        (pb.OUTCOME_DELIVERED, 1, 1)
    }
    assert sum(a.shared for a in answers) == 199
    assert all(a.final and a.receipt.reference == "HTTP 200" for a in answers)


async def test_failing_receiver_is_hit_exactly_max_attempts_times(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver))
    http_receiver.respond(500)

    async def caller() -> int:
        """Loops with a stale status (persisted 0), never waiting for the backoff."""
        while True:
            answer = await sidecar.stub.Deliver(
                deliver(persisted_attempts=0, retry_policy=tiny_backoff(5))
            )
            if answer.outcome == pb.OUTCOME_EXHAUSTED:
                return answer.attempts_used

    used = await asyncio.gather(*(caller() for _ in range(50)))

    assert http_receiver.hits == 5
    assert set(used) == {5}
    for _ in range(3):
        answer = await sidecar.stub.Deliver(deliver(retry_policy=tiny_backoff(5)))
        assert (answer.outcome, answer.final) == (pb.OUTCOME_EXHAUSTED, True)
        assert answer.last_error.startswith("HTTP 500")
    assert http_receiver.hits == 5


async def test_no_second_delivery_after_success_even_after_a_default_clear(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver))

    first = await sidecar.stub.Deliver(deliver())
    again = await sidecar.stub.Deliver(deliver())
    cleared = await sidecar.stub.Clear(pb.ClearRequest(uid="uid-1"))
    late = await sidecar.stub.Deliver(deliver(persisted_attempts=0))

    assert first.outcome == pb.OUTCOME_DELIVERED
    assert again.outcome == pb.OUTCOME_ALREADY_DELIVERED
    assert list(cleared.cleared_channels) == ["hook"]
    assert (late.outcome, late.attempt) == (pb.OUTCOME_ALREADY_DELIVERED, 1)
    assert http_receiver.hits == 1

    await sidecar.stub.Clear(pb.ClearRequest(uid="uid-1", channels=["hook"], force=True))
    resent = await sidecar.stub.Deliver(deliver())
    assert (resent.outcome, resent.attempt) == (pb.OUTCOME_DELIVERED, 1)
    assert http_receiver.hits == 2


async def test_a_cancelled_leader_does_not_fail_the_joiners(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver))
    engine = sidecar.sidecar.engine
    http_receiver.hold()

    leader = sidecar.stub.Deliver(deliver())
    await http_receiver.wait_for_hits(1)
    joiners = [asyncio.ensure_future(sidecar.stub.Deliver(deliver())) for _ in range(10)]
    await until(lambda: engine.waiting == 11)
    leader.cancel()
    await until(lambda: engine.waiting == 10)
    http_receiver.release()
    answers = await asyncio.gather(*joiners)

    with pytest.raises(asyncio.CancelledError):
        await leader
    assert {(a.outcome, a.shared) for a in answers} == {(pb.OUTCOME_DELIVERED, True)}
    assert http_receiver.hits == 1


async def test_a_caller_deadline_answers_in_progress_not_an_error(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver))
    http_receiver.hold()

    answer = await sidecar.stub.Deliver(deliver(), timeout=0.5)
    http_receiver.release()
    await sidecar.sidecar.engine.drain(grace=5.0)
    later = await sidecar.stub.Deliver(deliver())

    assert (answer.outcome, answer.attempt, answer.final) == (pb.OUTCOME_IN_PROGRESS, 1, False)
    assert answer.retry_after.ToTimedelta().total_seconds() > 0
    assert later.outcome == pb.OUTCOME_ALREADY_DELIVERED
    assert http_receiver.hits == 1


async def test_attempt_count_reports_the_history(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver, initial_backoff=60, jitter=0))
    http_receiver.respond(Reply(503), Reply(200))

    failed = await sidecar.stub.Deliver(deliver())
    waiting = await sidecar.stub.Deliver(deliver())
    state = await sidecar.stub.AttemptCount(
        pb.AttemptCountRequest(uid="uid-1", channel="hook", persisted_attempts=0)
    )
    unknown = await sidecar.stub.AttemptCount(
        pb.AttemptCountRequest(uid="other", channel="hook", persisted_attempts=2)
    )

    assert (failed.outcome, failed.retry_after.seconds) == (pb.OUTCOME_FAILED, 60)
    assert (waiting.outcome, waiting.attempts_used) == (pb.OUTCOME_RETRY_LATER, 1)
    assert 0 < waiting.retry_after.ToTimedelta().total_seconds() <= 60
    assert (state.found, state.attempts_used, state.remaining, state.in_flight) == (
        True,
        1,
        4,
        False,
    )
    assert [(a.number, a.result) for a in state.history] == [(1, pb.ATTEMPT_RESULT_FAILED)]
    assert state.history[0].error.startswith("HTTP 503")
    assert state.history[0].HasField("duration")
    assert (unknown.found, unknown.attempts_used, unknown.remaining) == (False, 2, 3)


async def test_payload_mismatch_is_refused_and_nothing_is_sent(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver))
    await sidecar.stub.Deliver(deliver())

    other = pb.Notification(subject="Deployment web failed", body="another body")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await sidecar.stub.Deliver(deliver(notification=other))

    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "different payload" in (error.value.details() or "")
    assert http_receiver.hits == 1


async def test_an_unknown_priority_from_a_newer_client_is_delivered_as_unspecified(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    """Priority is an open enum: a value added after this sidecar was built must not fail."""
    sidecar = await start_sidecar(webhook(http_receiver))
    newer = pb.Notification(subject="Deployment web failed", priority=42)  # type: ignore[arg-type]
    assert newer.SerializeToString() == b"\n\x15Deployment web failed\x18*"  # 42 on the wire

    answer = await sidecar.stub.Deliver(deliver(notification=newer))
    again = await sidecar.stub.Deliver(
        deliver(notification=pb.Notification(subject="Deployment web failed"))
    )

    assert (answer.outcome, answer.final) == (pb.OUTCOME_DELIVERED, True)
    assert http_receiver.requests[0].json()["priority"] == "unspecified"
    # The same payload as PRIORITY_UNSPECIFIED: no FAILED_PRECONDITION, no second delivery.
    assert again.outcome == pb.OUTCOME_ALREADY_DELIVERED
    assert http_receiver.hits == 1


LONG = "x" * 501


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (deliver(uid=""), grpc.StatusCode.INVALID_ARGUMENT, "uid: must not be empty"),
        (deliver(uid="u" * 254), grpc.StatusCode.INVALID_ARGUMENT, "uid: must be at most 253"),
        (deliver(channel="Bad_Name"), grpc.StatusCode.INVALID_ARGUMENT, "channel: 'Bad_Name'"),
        (
            pb.DeliverRequest(uid="u", channel="hook"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "notification: is required",
        ),
        (
            deliver(notification=pb.Notification(subject=" ")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "notification.subject: must not be empty",
        ),
        (
            deliver(notification=pb.Notification(subject=LONG)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "notification.subject: must be at most 500 characters, got 501",
        ),
        (
            deliver(notification=pb.Notification(subject="s", body="b" * 2000)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "notification.body: must be at most 1024 bytes, got 2000",
        ),
        (
            # Bytes, not characters: 400 characters of 3 bytes each.
            deliver(notification=pb.Notification(subject="s", body="€" * 400)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "notification.body: must be at most 1024 bytes, got 1200",
        ),
        (
            deliver(retry_policy=pb.RetryPolicy(max_attempts=21)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "retry_policy.max_attempts: must be between 1 and 20, got 21",
        ),
        (
            deliver(retry_policy=pb.RetryPolicy(jitter=1.5)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "retry_policy.jitter: must be between 0 and 1",
        ),
        (
            deliver(channel="pager"),
            grpc.StatusCode.NOT_FOUND,
            "no receiver named 'pager' is configured (configured: hook)",
        ),
    ],
)
async def test_bad_input_gets_a_clear_error_and_nothing_is_sent(
    start_sidecar: StartSidecar,
    http_receiver: HttpReceiver,
    request_: pb.DeliverRequest,
    code: grpc.StatusCode,
    message: str,
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver), max_body_bytes=1024)

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await sidecar.stub.Deliver(request_)

    assert error.value.code() == code
    assert message in (error.value.details() or "")
    assert http_receiver.hits == 0


async def test_clear_and_attempt_count_validate_their_input(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar: Running = await start_sidecar(webhook(http_receiver))

    with pytest.raises(grpc.aio.AioRpcError) as clear_error:
        await sidecar.stub.Clear(pb.ClearRequest(uid="u", channels=["ok", "NOT OK"]))
    with pytest.raises(grpc.aio.AioRpcError) as count_error:
        await sidecar.stub.AttemptCount(pb.AttemptCountRequest(uid="u", channel="missing"))

    assert clear_error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "channels[1]" in (clear_error.value.details() or "")
    assert count_error.value.code() == grpc.StatusCode.NOT_FOUND
