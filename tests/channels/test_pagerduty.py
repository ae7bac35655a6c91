"""The pagerduty channel against a real HTTP receiver on 127.0.0.1 playing the Events API v2."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sendonce_server.channels.pagerduty import (
    EVENTS_URL,
    MAX_EVENT_BYTES,
    PagerDutyChannel,
    PagerDutySettings,
    encode,
)
from sendonce_server.channels.registry import ChannelConfigError, build_channel
from sendonce_server.engine.model import Key, Link, Notification, Priority
from sendonce_server.engine.ports import Delivery, SendResult, SendStatus
from tests.support.http_receiver import HttpReceiver, Reply, closed_port_url

ROUTING_KEY = "R0UTINGkey0123456789abcdefABCDEF"


def _accepted(dedup_key: str) -> Reply:
    body = {"status": "success", "message": "Event processed", "dedup_key": dedup_key}
    return Reply(202, headers={"Content-Type": "application/json"}, body=json.dumps(body))


@pytest.fixture
async def receiver() -> AsyncIterator[HttpReceiver]:
    async with HttpReceiver(_accepted("from-pagerduty")) as receiver:
        yield receiver


@pytest.fixture
async def make_channel(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Callable[..., PagerDutyChannel]]:
    channels: list[PagerDutyChannel] = []
    monkeypatch.setenv("PD_ROUTING_KEY", ROUTING_KEY)

    def make(url: str, **settings: Any) -> PagerDutyChannel:
        channel = PagerDutyChannel(
            PagerDutySettings.model_validate(
                {"routing_key": {"env": "PD_ROUTING_KEY"}, "url": url, **settings}
            )
        )
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.close()


def _delivery(notification: Notification | None = None, attempt: int = 1) -> Delivery:
    notification = notification or Notification(
        subject="API error rate above 5%",
        body="**checkout** returns 503 for 7% of requests.",
        priority=Priority.CRITICAL,
        metadata={"service": "checkout", "region": "eu-1"},
        links=(Link("Dashboard", "https://grafana.example/d/checkout"),),
    )
    return Delivery(Key("incident-12", "oncall"), notification, attempt)


async def test_triggers_an_event_deduplicated_by_the_idempotency_key(
    receiver: HttpReceiver, make_channel: Callable[..., PagerDutyChannel]
) -> None:
    delivery = _delivery()

    result = await make_channel(f"{receiver.url}/v2/enqueue", source="sidecar-a").send(delivery)

    (request,) = receiver.requests
    assert (request.method, request.path) == ("POST", "/v2/enqueue")
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": delivery.idempotency_key,
        "payload": {
            "summary": "API error rate above 5%",
            "source": "sidecar-a",
            "severity": "critical",
            "custom_details": {
                "body": "**checkout** returns 503 for 7% of requests.",
                "metadata": {"region": "eu-1", "service": "checkout"},
            },
        },
        "links": [{"href": "https://grafana.example/d/checkout", "text": "Dashboard"}],
    }
    assert result.status is SendStatus.SUCCESS
    assert result.receipt is not None
    assert result.receipt.reference == "from-pagerduty"
    assert result.receipt.details == {"status_code": "202", "dedup_key": "from-pagerduty"}


async def test_without_a_dedup_key_in_the_answer_the_receipt_is_ours(
    receiver: HttpReceiver, make_channel: Callable[..., PagerDutyChannel]
) -> None:
    receiver.respond(Reply(202, body="accepted"))

    result = await make_channel(receiver.url).send(_delivery())

    assert result.receipt is not None
    assert result.receipt.reference == _delivery().idempotency_key


async def test_every_attempt_carries_the_same_dedup_key(
    receiver: HttpReceiver, make_channel: Callable[..., PagerDutyChannel]
) -> None:
    receiver.respond(Reply(500), _accepted("k"))
    channel = make_channel(receiver.url)

    results = [await channel.send(_delivery(attempt=attempt)) for attempt in (1, 2)]

    assert [result.status for result in results] == [SendStatus.RETRYABLE, SendStatus.SUCCESS]
    keys = {request.json()["dedup_key"] for request in receiver.requests}
    assert keys == {Key("incident-12", "oncall").idempotency_key}


@pytest.mark.parametrize(
    ("priority", "severity"),
    [
        (Priority.CRITICAL, "critical"),
        (Priority.HIGH, "error"),
        (Priority.NORMAL, "warning"),
        (Priority.LOW, "info"),
        (Priority.UNSPECIFIED, "info"),
    ],
)
async def test_severity_follows_the_priority(
    receiver: HttpReceiver,
    make_channel: Callable[..., PagerDutyChannel],
    priority: Priority,
    severity: str,
) -> None:
    await make_channel(receiver.url).send(_delivery(Notification("s", priority=priority)))

    assert receiver.requests[0].json()["payload"]["severity"] == severity


async def test_defaults(make_channel: Callable[..., PagerDutyChannel]) -> None:
    settings = PagerDutySettings.model_validate({"routing_key": {"env": "PD_ROUTING_KEY"}})

    assert (settings.url, settings.source, settings.timeout) == (EVENTS_URL, "sendonce", 10.0)
    assert EVENTS_URL == "https://events.pagerduty.com/v2/enqueue"


async def test_a_body_over_the_limit_is_cut_and_marked(
    receiver: HttpReceiver, make_channel: Callable[..., PagerDutyChannel]
) -> None:
    body = "start " + "x" * 700_000
    notification = Notification("big", body=body, metadata={"service": "checkout"})

    result = await make_channel(receiver.url).send(_delivery(notification))

    (request,) = receiver.requests
    assert len(request.body) <= MAX_EVENT_BYTES < 512 * 1024
    details = request.json()["payload"]["custom_details"]  # valid JSON
    assert details["truncated"] is True
    assert details["body"].startswith("start xxx")
    assert details["body"].endswith("x [truncated]")
    assert details["metadata"] == {"service": "checkout"}
    assert len(request.body) > MAX_EVENT_BYTES - 100  # cut no more than needed
    assert result.status is SendStatus.SUCCESS


async def test_a_body_of_escapes_and_multibyte_text_is_cut_to_just_fit(
    receiver: HttpReceiver, make_channel: Callable[..., PagerDutyChannel]
) -> None:
    # A quote is two bytes of JSON, a control character six, "é" two, "😀" four.
    unit = '"\x01é😀\n'
    notification = Notification("s", unit * 60_000)  # 960 KB of JSON in 300,000 characters

    await make_channel(receiver.url).send(_delivery(notification))

    (request,) = receiver.requests
    assert MAX_EVENT_BYTES - 100 < len(request.body) <= MAX_EVENT_BYTES
    body = request.json()["payload"]["custom_details"]["body"]
    assert body.startswith(unit * 10)
    assert body.endswith(" [truncated]")


async def test_when_the_body_is_not_enough_the_longest_metadata_is_cut(
    receiver: HttpReceiver, make_channel: Callable[..., PagerDutyChannel]
) -> None:
    metadata = {"dump": "\\" * 400_000, "other": "o" * 150_000, "small": "kept"}

    await make_channel(receiver.url).send(
        _delivery(Notification("s", "b" * 1000, metadata=metadata))
    )

    (request,) = receiver.requests
    assert MAX_EVENT_BYTES - 100 < len(request.body) <= MAX_EVENT_BYTES
    details = request.json()["payload"]["custom_details"]
    assert details["truncated"] is True
    assert details["body"] == "[truncated]"  # the body goes first
    assert details["metadata"]["dump"].startswith("\\" * 10)
    assert details["metadata"]["dump"].endswith("\\ [truncated]")
    assert details["metadata"]["other"] == "o" * 150_000
    assert details["metadata"]["small"] == "kept"


async def test_a_small_event_is_not_marked(
    receiver: HttpReceiver, make_channel: Callable[..., PagerDutyChannel]
) -> None:
    await make_channel(receiver.url).send(_delivery())

    assert "truncated" not in receiver.requests[0].json()["payload"]["custom_details"]


def _event(body: str, metadata: dict[str, str], links: int) -> dict[str, Any]:
    return {
        "routing_key": "k",
        "event_action": "trigger",
        "dedup_key": "d",
        "payload": {
            "summary": "s",
            "source": "src",
            "severity": "info",
            "custom_details": {"body": body, "metadata": metadata},
        },
        "links": [{"href": f"https://x.example/{i}", "text": "t"} for i in range(links)],
    }


@settings(max_examples=200, deadline=None)
@given(
    body=st.text(max_size=3000),
    metadata=st.dictionaries(st.text(max_size=20), st.text(max_size=1500), max_size=5),
    links=st.integers(0, 16),
    limit=st.integers(800, 6000),
)
def test_encode_always_fits_and_stays_valid_json(
    body: str, metadata: dict[str, str], links: int, limit: int
) -> None:
    original = _event(body, dict(metadata), links)
    fits = len(json.dumps(original, ensure_ascii=False, separators=(",", ":")).encode()) <= limit

    data = encode(_event(body, dict(metadata), links), limit)

    assert len(data) <= limit
    decoded = json.loads(data)
    if fits:
        assert decoded == original
    else:
        assert decoded["payload"]["custom_details"]["truncated"] is True
        assert decoded["dedup_key"] == "d"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            Reply(400, body='{"status":"invalid event","message":"Event object is invalid"}'),
            SendResult.permanent(
                'HTTP 400 Bad Request: {"status":"invalid event","message":"Event object is '
                'invalid"}'
            ),
        ),
        (Reply(429), SendResult.retryable("HTTP 429 Too Many Requests")),
        (Reply(500), SendResult.retryable("HTTP 500 Internal Server Error")),
        (Reply(503), SendResult.retryable("HTTP 503 Service Unavailable")),
    ],
)
async def test_failures_are_classified(
    receiver: HttpReceiver,
    make_channel: Callable[..., PagerDutyChannel],
    reply: Reply,
    expected: SendResult,
) -> None:
    receiver.respond(reply)

    assert await make_channel(receiver.url).send(_delivery()) == expected


async def test_a_slow_pagerduty_is_retryable(
    receiver: HttpReceiver, make_channel: Callable[..., PagerDutyChannel]
) -> None:
    receiver.hold()

    result = await make_channel(receiver.url, timeout=0.2).send(_delivery())

    assert result == SendResult.retryable("timed out after 0.2s waiting for the response")


def test_the_routing_key_must_be_a_secret_reference() -> None:
    with pytest.raises(ChannelConfigError) as caught:
        build_channel("pagerduty", {"routing_key": ROUTING_KEY})

    assert caught.value.field == "routing_key"
    assert ROUTING_KEY not in str(caught.value)


def test_the_url_must_be_http() -> None:
    with pytest.raises(ChannelConfigError) as caught:
        build_channel("pagerduty", {"routing_key": {"env": "X"}, "url": "ftp://pd.example/"})

    assert str(caught.value) == "url: must start with http:// or https://"


async def _echoes_the_key(receiver: HttpReceiver) -> None:
    receiver.respond(Reply(400, body=f'{{"errors":["routing_key {ROUTING_KEY} is unknown"]}}'))


async def _throttled(receiver: HttpReceiver) -> None:
    receiver.respond(Reply(429, body=ROUTING_KEY))


async def _delivered(receiver: HttpReceiver) -> None:
    receiver.respond(_accepted("k"))


async def _held(receiver: HttpReceiver) -> None:
    receiver.hold()


@pytest.mark.parametrize("setup", [_echoes_the_key, _throttled, _delivered, _held, None])
async def test_the_routing_key_never_leaks_into_errors_or_logs(
    receiver: HttpReceiver,
    make_channel: Callable[..., PagerDutyChannel],
    caplog: pytest.LogCaptureFixture,
    setup: Callable[[HttpReceiver], Awaitable[None]] | None,
) -> None:
    caplog.set_level(logging.DEBUG)
    if setup is not None:
        await setup(receiver)
    channel = make_channel(receiver.url if setup else closed_port_url(), timeout=0.2)

    result = await channel.send(_delivery())

    logged = caplog.text + "\n".join(record.getMessage() for record in caplog.records)
    assert ROUTING_KEY not in repr(result)
    assert ROUTING_KEY not in logged
    if setup in (_echoes_the_key, _throttled, _delivered):
        assert receiver.requests[0].json()["routing_key"] == ROUTING_KEY  # it was sent
        assert "HTTP Request: POST" in logged
    if setup is _echoes_the_key:
        assert "[redacted]" in result.error
    if setup in (_held, None):
        assert result.status is SendStatus.RETRYABLE
