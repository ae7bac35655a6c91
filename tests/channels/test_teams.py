"""The teams channel against a real HTTP receiver on 127.0.0.1 playing a Teams Workflows webhook."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import pytest

from sendonce_server.channels.registry import ChannelConfigError, build_channel
from sendonce_server.channels.teams import TeamsChannel, TeamsSettings
from sendonce_server.engine.model import Key, Link, Notification, Priority
from sendonce_server.engine.ports import Delivery, SendResult, SendStatus
from tests.support.http_receiver import HttpReceiver, Reply, closed_port_url

SIGNATURE = "SiGnAtUrE-0123456789abcdef"
WORKFLOW_ID = "3f1c9a7e5d2b4c6a8e0f1a2b3c4d5e6f"
WEBHOOK_PATH = f"/workflows/{WORKFLOW_ID}/triggers/manual/paths/invoke"
WEBHOOK_QUERY = f"api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={SIGNATURE}"


@pytest.fixture
async def receiver() -> AsyncIterator[HttpReceiver]:
    async with HttpReceiver(202) as receiver:
        yield receiver


@pytest.fixture
async def make_channel(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Callable[..., TeamsChannel]]:
    channels: list[TeamsChannel] = []

    def make(base_url: str, **settings: Any) -> TeamsChannel:
        monkeypatch.setenv("TEAMS_WEBHOOK_URL", f"{base_url}{WEBHOOK_PATH}?{WEBHOOK_QUERY}")
        channel = TeamsChannel(
            TeamsSettings.model_validate({"webhook_url": {"env": "TEAMS_WEBHOOK_URL"}, **settings})
        )
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.close()


def _delivery(notification: Notification | None = None) -> Delivery:
    notification = notification or Notification(
        subject="Certificate expires in 3 days",
        body="The certificate of **api.example.com** expires on _2026-06-01_.\n\n- renew it",
        priority=Priority.HIGH,
        metadata={"namespace": "edge", "issuer": "letsencrypt"},
        links=(Link("Runbook", "https://wiki.example/certs"),),
    )
    return Delivery(Key("cert-9", "ops-teams"), notification, 1)


def _card(request_json: Any) -> Any:
    (attachment,) = request_json["attachments"]
    return attachment["content"]


async def test_posts_an_adaptive_card_message(
    receiver: HttpReceiver, make_channel: Callable[..., TeamsChannel]
) -> None:
    result = await make_channel(receiver.url).send(_delivery())

    (request,) = receiver.requests
    assert (request.method, request.path) == ("POST", WEBHOOK_PATH)
    assert parse_qs(request.query) == parse_qs(WEBHOOK_QUERY)
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": [
                        {
                            "type": "TextBlock",
                            "text": "Certificate expires in 3 days",
                            "weight": "Bolder",
                            "size": "Large",
                            "wrap": True,
                            "color": "Attention",
                        },
                        {
                            "type": "TextBlock",
                            "text": "The certificate of **api.example.com** expires on "
                            "_2026-06-01_.\n\n- renew it",
                            "wrap": True,
                        },
                        {
                            "type": "FactSet",
                            "facts": [
                                {"title": "Priority", "value": "high"},
                                {"title": "issuer", "value": "letsencrypt"},
                                {"title": "namespace", "value": "edge"},
                            ],
                        },
                    ],
                    "actions": [
                        {
                            "type": "Action.OpenUrl",
                            "title": "Runbook",
                            "url": "https://wiki.example/certs",
                        }
                    ],
                },
            }
        ],
    }
    assert result.status is SendStatus.SUCCESS
    assert result.receipt is not None
    assert result.receipt.reference == "HTTP 202"


async def test_a_bare_notification_is_only_the_title(
    receiver: HttpReceiver, make_channel: Callable[..., TeamsChannel]
) -> None:
    await make_channel(receiver.url).send(_delivery(Notification("Nightly backup done")))

    assert _card(receiver.requests[0].json()) == {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {
                "type": "TextBlock",
                "text": "Nightly backup done",
                "weight": "Bolder",
                "size": "Large",
                "wrap": True,
            }
        ],
    }


@pytest.mark.parametrize(
    ("priority", "color"),
    [
        (Priority.CRITICAL, "Attention"),
        (Priority.HIGH, "Attention"),
        (Priority.NORMAL, None),
        (Priority.LOW, None),
        (Priority.UNSPECIFIED, None),
    ],
)
async def test_urgent_titles_are_in_the_attention_colour(
    receiver: HttpReceiver,
    make_channel: Callable[..., TeamsChannel],
    priority: Priority,
    color: str | None,
) -> None:
    await make_channel(receiver.url).send(_delivery(Notification("s", priority=priority)))

    title = _card(receiver.requests[0].json())["body"][0]
    assert title.get("color") == color


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(200, body="1"), None),
        (Reply(202), None),
        (Reply(400, body="Bad payload"), SendResult.permanent("HTTP 400 Bad Request: Bad payload")),
        (Reply(401), SendResult.permanent("HTTP 401 Unauthorized")),
        (Reply(404), SendResult.permanent("HTTP 404 Not Found")),
        (
            Reply(429, headers={"Retry-After": "12"}),
            SendResult.retryable("HTTP 429 Too Many Requests", retry_after=12.0),
        ),
        (Reply(502), SendResult.retryable("HTTP 502 Bad Gateway")),
    ],
)
async def test_teams_answers_are_classified(
    receiver: HttpReceiver,
    make_channel: Callable[..., TeamsChannel],
    reply: Reply,
    expected: SendResult | None,
) -> None:
    receiver.respond(reply)

    result = await make_channel(receiver.url).send(_delivery())

    if expected is None:
        assert result.status is SendStatus.SUCCESS
    else:
        assert result == expected


async def test_a_slow_teams_is_retryable(
    receiver: HttpReceiver, make_channel: Callable[..., TeamsChannel]
) -> None:
    receiver.hold()

    result = await make_channel(receiver.url, timeout=0.2).send(_delivery())

    assert receiver.hits == 1
    assert result == SendResult.retryable("timed out after 0.2s waiting for the response")


async def test_the_webhook_url_must_be_a_secret_reference() -> None:
    with pytest.raises(ChannelConfigError) as caught:
        build_channel("teams", {"webhook_url": "https://example.webhook.office.com/x"})

    assert caught.value.field == "webhook_url"


async def _echoes_the_url(receiver: HttpReceiver) -> None:
    receiver.respond(Reply(400, body=f"bad trigger {WEBHOOK_PATH}?{WEBHOOK_QUERY}"))


async def _throttled(receiver: HttpReceiver) -> None:
    receiver.respond(Reply(429, headers={"Retry-After": "1"}, body=f"sig={SIGNATURE}"))


async def _delivered(receiver: HttpReceiver) -> None:
    receiver.respond(202)


async def _held(receiver: HttpReceiver) -> None:
    receiver.hold()


@pytest.mark.parametrize("setup", [_echoes_the_url, _throttled, _delivered, _held, None])
async def test_the_webhook_url_never_leaks_into_errors_or_logs(
    receiver: HttpReceiver,
    make_channel: Callable[..., TeamsChannel],
    caplog: pytest.LogCaptureFixture,
    setup: Callable[[HttpReceiver], Awaitable[None]] | None,
) -> None:
    caplog.set_level(logging.DEBUG)
    if setup is not None:
        await setup(receiver)
    channel = make_channel(receiver.url if setup else closed_port_url(), timeout=0.2)

    result = await channel.send(_delivery())

    logged = caplog.text + "\n".join(record.getMessage() for record in caplog.records)
    for secret in (SIGNATURE, WORKFLOW_ID):
        assert secret not in repr(result)
        assert secret not in logged
    if setup in (_echoes_the_url, _throttled, _delivered):
        assert parse_qs(receiver.requests[0].query)["sig"] == [SIGNATURE]
        assert "HTTP Request: POST" in logged
    else:
        assert result.status is SendStatus.RETRYABLE
