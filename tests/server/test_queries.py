"""Operators' queries against a real sidecar: the idempotency key in every answer."""

from __future__ import annotations

import asyncio

from sendonce import AsyncClient, Notification
from sendonce.v1 import delivery_pb2 as pb
from tests.server.conftest import StartSidecar
from tests.server.test_deliver import NOTE, deliver, webhook
from tests.support.http_receiver import HttpReceiver, Reply


async def test_answers_carry_the_idempotency_key_the_receiver_got(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver, initial_backoff=0, jitter=0))
    http_receiver.respond(Reply(503), Reply(200))

    failed = await sidecar.stub.Deliver(deliver())
    http_receiver.hold()
    leader = asyncio.ensure_future(sidecar.stub.Deliver(deliver()))
    await http_receiver.wait_for_hits(2)
    # A joiner whose deadline comes while the attempt is held answers IN_PROGRESS.
    in_progress = await sidecar.stub.Deliver(deliver(), timeout=0.5)
    running = await sidecar.stub.AttemptCount(pb.AttemptCountRequest(uid="uid-1", channel="hook"))
    http_receiver.release()
    delivered = await leader
    again = await sidecar.stub.Deliver(deliver())
    state = await sidecar.stub.AttemptCount(pb.AttemptCountRequest(uid="uid-1", channel="hook"))
    async with AsyncClient(sidecar.address) as client:
        typed = await client.deliver("uid-1", "hook", Notification(NOTE.subject, NOTE.body))
        typed_state = await client.attempt_count("uid-1", "hook")

    sent = {r.headers["idempotency-key"] for r in http_receiver.requests}
    assert len(sent) == 1
    assert {r.headers["webhook-id"] for r in http_receiver.requests} == sent
    (key,) = sent
    assert [a.outcome for a in (failed, in_progress, delivered, again)] == [
        pb.OUTCOME_FAILED,
        pb.OUTCOME_IN_PROGRESS,
        pb.OUTCOME_DELIVERED,
        pb.OUTCOME_ALREADY_DELIVERED,
    ]
    assert running.in_flight
    assert state.succeeded
    for answer in (failed, in_progress, delivered, again, running, state):
        assert answer.idempotency_key == key
    assert typed.idempotency_key == key
    assert typed_state.idempotency_key == key


async def test_attempt_count_of_an_unknown_key_names_the_key_it_would_send(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver))

    before = await sidecar.stub.AttemptCount(pb.AttemptCountRequest(uid="uid-2", channel="hook"))
    await sidecar.stub.Deliver(deliver("uid-2"))
    other = await sidecar.stub.AttemptCount(pb.AttemptCountRequest(uid="uid-3", channel="hook"))

    assert not before.found
    assert before.idempotency_key == http_receiver.requests[0].headers["idempotency-key"]
    assert other.idempotency_key not in ("", before.idempotency_key)
