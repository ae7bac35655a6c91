"""Operators' queries against a real sidecar: the idempotency key in every answer."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from sendonce import AsyncClient, DeliveryState, Notification
from sendonce.cli import main
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


SIGNING_SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
PATH_TOKEN = "T0KEN-in-the-path-5c4b3a"


async def test_list_receivers_shows_breakers_and_counts_and_never_a_secret(
    start_sidecar: StartSidecar,
    http_receiver: HttpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOOK_URL", f"{http_receiver.url}/hooks/{PATH_TOKEN}")
    monkeypatch.setenv("HOOK_SIGNING_SECRET", SIGNING_SECRET)
    hook = {
        "url_secret": {"env": "HOOK_URL"},
        "signing_secret": {"env": "HOOK_SIGNING_SECRET"},
        "headers": {"X-Team": "ops"},
    }
    sidecar = await start_sidecar(
        {
            "receivers": [
                {"name": "plain", "type": "webhook", "settings": {"url": http_receiver.url}},
                {
                    "name": "hook",
                    "type": "webhook",
                    "retry": {"max_attempts": 7},
                    "breaker": {"failures": 2, "open_seconds": 60},
                    "settings": hook,
                },
                {"name": "nothing", "type": "noop"},
            ]
        }
    )
    http_receiver.respond(503)
    await sidecar.stub.Deliver(deliver("uid-1"))
    await sidecar.stub.Deliver(deliver("uid-2"))
    http_receiver.respond(400)
    await sidecar.stub.Deliver(deliver("uid-3", channel="plain"))
    http_receiver.respond(200)
    http_receiver.hold()
    running = asyncio.ensure_future(sidecar.stub.Deliver(deliver("uid-4", channel="plain")))
    await http_receiver.wait_for_hits(4)

    listed = await sidecar.stub.ListReceivers(pb.ListReceiversRequest())
    http_receiver.release()
    await running
    after = await sidecar.stub.ListReceivers(pb.ListReceiversRequest())

    assert [r.name for r in listed.receivers] == ["hook", "nothing", "plain"]
    hook_state, nothing, plain = listed.receivers
    assert (hook_state.type, nothing.type, plain.type) == ("webhook", "noop", "webhook")
    assert (hook_state.circuit, hook_state.consecutive_failures) == (pb.CIRCUIT_STATE_OPEN, 2)
    assert 0 < hook_state.circuit_retry_after.ToTimedelta().total_seconds() <= 60
    assert (hook_state.attempts_started, hook_state.attempts_failed) == (2, 2)
    assert (hook_state.max_attempts, plain.max_attempts) == (7, 5)
    assert (plain.circuit, plain.HasField("circuit_retry_after")) == (
        pb.CIRCUIT_STATE_CLOSED,
        False,
    )
    assert (plain.attempts_started, plain.attempts_in_flight) == (2, 1)
    assert (plain.attempts_failed_permanent, plain.attempts_succeeded) == (1, 0)
    assert nothing.attempts_started == 0
    done = after.receivers[2]
    assert (done.attempts_in_flight, done.attempts_succeeded) == (0, 1)

    # Nothing of any receiver's settings: not the URL (nor its secret path), the signing
    # secret, nor a header.
    signing_key = SIGNING_SECRET.removeprefix("whsec_")
    for answer in (listed, after):
        shown = str(answer) + answer.SerializeToString().decode("latin-1")
        for secret in (PATH_TOKEN, SIGNING_SECRET, signing_key, "X-Team", http_receiver.url):
            assert secret not in shown


async def test_cli_receivers_and_attempts_of_every_channel_of_a_uid(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    sidecar = await start_sidecar(
        {
            "receivers": [
                {"name": "hook", "type": "webhook", "settings": {"url": http_receiver.url}},
                {"name": "ops", "type": "webhook", "settings": {"url": http_receiver.url}},
                {"name": "quiet", "type": "noop"},
            ]
        }
    )
    http_receiver.respond(503)
    await sidecar.stub.Deliver(deliver("uid-1", channel="hook"))
    http_receiver.respond(200)
    await sidecar.stub.Deliver(deliver("uid-1", channel="ops"))
    await sidecar.stub.Deliver(deliver("uid-2", channel="ops"))

    def cli(*args: str) -> str:
        assert main(["--address", sidecar.address, *args]) == 0
        return capsys.readouterr().out

    # The blocking CLI runs in a thread: the sidecar serves on this test's event loop.
    receivers = await asyncio.to_thread(cli, "receivers")
    both = await asyncio.to_thread(cli, "attempts", "uid-1")
    as_json = json.loads(await asyncio.to_thread(cli, "attempts", "uid-1", "--json"))
    unknown = await asyncio.to_thread(cli, "attempts", "uid-9")

    assert receivers.splitlines() == [
        "name   type     circuit  failures  in flight  started  ok  failed  permanent",
        "hook   webhook  closed   1         0          1        0   1       0",
        "ops    webhook  closed   0         0          2        2   0       0",
        "quiet  noop     closed   0         0          0        0   0       0",
    ]
    lines = both.splitlines()
    assert lines[0] == "hook: open: 1 of 5 attempts used, 4 remaining"
    assert lines[1].startswith("  idempotency key: msg_")
    assert lines[2].startswith("  retry after: ")
    assert lines[3] == "  last error: HTTP 503 Service Unavailable"
    assert lines[5].split()[4:] == ["failed", "HTTP", "503", "Service", "Unavailable"]
    assert lines[6] == "ops: delivered: 1 of 5 attempts used, 0 remaining"
    assert len(lines) == 10  # ops: idempotency key, the table heading and one attempt
    assert sorted(as_json["channels"]) == ["hook", "ops"]
    assert as_json["channels"]["ops"]["succeeded"] is True
    assert as_json["configured"] == ["hook", "ops", "quiet"]
    assert unknown == "not found on any channel (configured: hook, ops, quiet)\n"


@pytest.fixture(params=["memory", "sqlite", "redis-cluster"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/state.db"
    if request.param == "redis-cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    return "memory"


async def test_list_deliveries_by_state_and_channel_a_page_at_a_time(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver, store_url: str
) -> None:
    sidecar = await start_sidecar(
        {
            "receivers": [
                {"name": "hook", "type": "webhook", "settings": {"url": http_receiver.url}},
                {"name": "ops", "type": "webhook", "settings": {"url": http_receiver.url}},
            ]
        },
        store=store_url,
    )
    http_receiver.respond(503)
    once = pb.RetryPolicy(max_attempts=1)
    for uid in ("a", "b", "c"):
        await sidecar.stub.Deliver(deliver(uid, channel="ops", retry_policy=once))
    await sidecar.stub.Deliver(deliver("d", channel="hook", retry_policy=once))
    await sidecar.stub.Deliver(deliver("e", channel="ops"))  # failed, attempts left
    http_receiver.respond(200)
    await sidecar.stub.Deliver(deliver("f", channel="ops"))

    request = pb.ListDeliveriesRequest(
        state=pb.DELIVERY_STATE_EXHAUSTED, channel="ops", page_size=2
    )
    first = await sidecar.stub.ListDeliveries(request)
    request.page_token = first.next_page_token
    second = await sidecar.stub.ListDeliveries(request)
    failed = await sidecar.stub.ListDeliveries(
        pb.ListDeliveriesRequest(state=pb.DELIVERY_STATE_FAILED)
    )
    everything = await sidecar.stub.ListDeliveries(pb.ListDeliveriesRequest())

    assert [d.uid for d in first.deliveries] == ["c", "b"]
    assert first.next_page_token
    assert [d.uid for d in second.deliveries] == ["a"]
    assert second.next_page_token == ""
    exhausted = first.deliveries[0]
    assert (exhausted.channel, exhausted.state) == ("ops", pb.DELIVERY_STATE_EXHAUSTED)
    assert (exhausted.attempts_used, exhausted.max_attempts) == (1, 1)
    assert exhausted.last_error == "HTTP 503 Service Unavailable"
    assert exhausted.HasField("update_time")
    assert not exhausted.HasField("retry_after")
    state = await sidecar.stub.AttemptCount(pb.AttemptCountRequest(uid="c", channel="ops"))
    assert exhausted.idempotency_key == state.idempotency_key
    assert [(d.uid, d.retry_after.seconds > 0) for d in failed.deliveries] == [("e", True)]
    assert [(d.uid, d.channel) for d in everything.deliveries] == [
        ("f", "ops"),
        ("e", "ops"),
        ("d", "hook"),
        ("c", "ops"),
        ("b", "ops"),
        ("a", "ops"),
    ]


async def test_list_deliveries_refuses_a_bad_page_token_or_size(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver))
    for uid in ("a", "b"):
        await sidecar.stub.Deliver(deliver(uid))
    page = await sidecar.stub.ListDeliveries(pb.ListDeliveriesRequest(page_size=1))
    big = await sidecar.stub.ListDeliveries(pb.ListDeliveriesRequest(page_size=1_000_000))
    assert len(big.deliveries) == 2

    bad = [
        (pb.ListDeliveriesRequest(page_token="not-a-token"), "page_token"),
        # A token only continues the list it came from.
        (pb.ListDeliveriesRequest(page_token=page.next_page_token, channel="hook"), "page_token"),
        (pb.ListDeliveriesRequest(page_size=-1), "page_size"),
        (pb.ListDeliveriesRequest(channel="Not A Name"), "channel"),
        (pb.ListDeliveriesRequest(state=99), "state"),  # type: ignore[arg-type]
    ]
    for request, field in bad:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await sidecar.stub.ListDeliveries(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (refused.value.details() or "")
    # The same token with a different page size goes on.
    again = await sidecar.stub.ListDeliveries(
        pb.ListDeliveriesRequest(page_token=page.next_page_token, page_size=5)
    )
    assert [d.uid for d in [*page.deliveries, *again.deliveries]] == ["b", "a"]


async def test_client_and_cli_list_deliveries(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    sidecar = await start_sidecar(
        {"receivers": [{"name": "ops", "type": "webhook", "settings": {"url": http_receiver.url}}]}
    )
    http_receiver.respond(503)
    once = pb.RetryPolicy(max_attempts=1)
    for uid in ("a", "b", "c"):
        await sidecar.stub.Deliver(deliver(uid, channel="ops", retry_policy=once))

    async with AsyncClient(sidecar.address) as client:
        page = await client.list_deliveries(
            state=DeliveryState.EXHAUSTED, channel="ops", page_size=2
        )
        rest = await client.list_deliveries(
            state=DeliveryState.EXHAUSTED, channel="ops", page_token=page.next_page_token
        )
        later = await client.list_deliveries(updated_after=datetime.now(UTC) + timedelta(hours=1))

    def cli(*args: str) -> str:
        assert main(["--address", sidecar.address, *args]) == 0
        return capsys.readouterr().out

    shown = await asyncio.to_thread(cli, "list", "--state", "exhausted", "--channel", "ops")
    paged = await asyncio.to_thread(cli, "list", "--page-size", "1", "--all", "--json")

    assert [d.uid for d in [*page.deliveries, *rest.deliveries]] == ["c", "b", "a"]
    assert page.deliveries[0].state is DeliveryState.EXHAUSTED
    assert page.deliveries[0].update_time is not None
    assert rest.next_page_token == ""
    assert later.deliveries == ()
    lines = shown.splitlines()
    assert lines[0].split() == [
        "uid",
        "channel",
        "state",
        "updated",
        "(UTC)",
        "attempts",
        "last",
        "error",
    ]
    assert lines[1].split()[:3] == ["c", "ops", "exhausted"]
    assert lines[1].endswith("1/1       HTTP 503 Service Unavailable")
    assert len(lines) == 4
    listed = json.loads(paged)
    assert [d["uid"] for d in listed["deliveries"]] == ["c", "b", "a"]
    assert listed["next_page_token"] == ""
