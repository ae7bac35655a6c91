"""The slack channel against a real HTTP receiver on 127.0.0.1 playing Slack's incoming webhook."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from sendonce_server.channels.registry import ChannelConfigError, build_channel
from sendonce_server.channels.slack import SlackChannel, SlackSettings
from sendonce_server.engine.model import Key, Link, Notification, Priority
from sendonce_server.engine.ports import Delivery, SendResult, SendStatus
from tests.support.http_receiver import HttpReceiver, Reply, closed_port_url

WEBHOOK_TOKEN = "xOxWeBhOoKtOkEn0123456789"
WEBHOOK_PATH = f"/services/T0TEAM1234/B0HOOK5678/{WEBHOOK_TOKEN}"


@pytest.fixture
async def receiver() -> AsyncIterator[HttpReceiver]:
    async with HttpReceiver(Reply(200, body="ok")) as receiver:
        yield receiver


@pytest.fixture
async def make_channel(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Callable[..., SlackChannel]]:
    channels: list[SlackChannel] = []

    def make(base_url: str, **settings: Any) -> SlackChannel:
        monkeypatch.setenv("SLACK_WEBHOOK_URL", base_url + WEBHOOK_PATH)
        channel = SlackChannel(
            SlackSettings.model_validate({"webhook_url": {"env": "SLACK_WEBHOOK_URL"}, **settings})
        )
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.close()


def _delivery(notification: Notification | None = None) -> Delivery:
    notification = notification or Notification(
        subject="Disk almost full on db-1",
        body="Volume **/var/lib/pg** is at _97%_.\n\n- grow the volume\n- or prune `wal/`",
        priority=Priority.CRITICAL,
        metadata={"team": "storage", "cluster": "eu-1"},
        links=(
            Link("Runbook", "https://wiki.example/runbooks/disk"),
            Link("Dashboard", "https://grafana.example/d/disk?var=db-1&from=now-1h"),
        ),
    )
    return Delivery(Key("alert-7", "ops-slack"), notification, 1)


async def test_posts_a_block_kit_message(
    receiver: HttpReceiver, make_channel: Callable[..., SlackChannel]
) -> None:
    result = await make_channel(receiver.url).send(_delivery())

    (request,) = receiver.requests
    assert (request.method, request.path) == ("POST", WEBHOOK_PATH)
    assert request.headers["content-type"] == "application/json"
    body = "Volume */var/lib/pg* is at _97%_.\n\n• grow the volume\n• or prune `wal/`"
    assert request.json() == {
        "text": f"Disk almost full on db-1\n{body}",
        "blocks": [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": "Disk almost full on db-1", "emoji": True},
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": body}},
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": "link-0",
                        "text": {"type": "plain_text", "text": "Runbook"},
                        "url": "https://wiki.example/runbooks/disk",
                    },
                    {
                        "type": "button",
                        "action_id": "link-1",
                        "text": {"type": "plain_text", "text": "Dashboard"},
                        "url": "https://grafana.example/d/disk?var=db-1&from=now-1h",
                    },
                ],
            },
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": "*Priority:* critical  |  *cluster:* eu-1  |  *team:* storage",
                    }
                ],
            },
        ],
    }
    assert result.status is SendStatus.SUCCESS
    assert result.receipt is not None
    assert result.receipt.reference == "HTTP 200"


async def test_a_bare_notification_is_a_header_and_the_fallback_text(
    receiver: HttpReceiver, make_channel: Callable[..., SlackChannel]
) -> None:
    await make_channel(receiver.url).send(_delivery(Notification("Backup <done> & verified")))

    assert receiver.requests[0].json() == {
        "text": "Backup &lt;done&gt; &amp; verified",
        "blocks": [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": "Backup <done> & verified", "emoji": True},
            }
        ],
    }


async def test_metadata_is_escaped_in_the_context(
    receiver: HttpReceiver, make_channel: Callable[..., SlackChannel]
) -> None:
    notification = Notification("s", priority=Priority.LOW, metadata={"who": "<!channel> & co"})

    await make_channel(receiver.url).send(_delivery(notification))

    (context,) = [b for b in receiver.requests[0].json()["blocks"] if b["type"] == "context"]
    assert context["elements"][0]["text"] == "*Priority:* low  |  *who:* &lt;!channel&gt; &amp; co"


async def test_texts_are_cut_to_slack_limits(
    receiver: HttpReceiver, make_channel: Callable[..., SlackChannel]
) -> None:
    notification = Notification(
        subject="S" * 400, body="b" * 5000, links=(Link("L" * 100, "https://x.example/"),)
    )

    await make_channel(receiver.url).send(_delivery(notification))

    header, section, actions = receiver.requests[0].json()["blocks"]
    assert header["text"]["text"] == "S" * 149 + "…"
    assert section["text"]["text"] == "b" * 2999 + "…"
    assert actions["elements"][0]["text"]["text"] == "L" * 74 + "…"
    assert len(receiver.requests[0].json()["text"]) == 3000


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(200, body="ok"), None),
        (
            Reply(400, body="invalid_payload"),
            SendResult.permanent("HTTP 400 Bad Request: invalid_payload"),
        ),
        (
            Reply(403, body="action_prohibited"),
            SendResult.permanent("HTTP 403 Forbidden: action_prohibited"),
        ),
        (
            Reply(404, body="channel_not_found"),
            SendResult.permanent("HTTP 404 Not Found: channel_not_found"),
        ),
        (
            Reply(410, body="channel_is_archived"),
            SendResult.permanent("HTTP 410 Gone: channel_is_archived"),
        ),
        (
            Reply(429, headers={"Retry-After": "30"}, body="rate_limited"),
            SendResult.retryable("HTTP 429 Too Many Requests: rate_limited", retry_after=30.0),
        ),
        (
            Reply(500, body="rollup_error"),
            SendResult.retryable("HTTP 500 Internal Server Error: rollup_error"),
        ),
        (Reply(503), SendResult.retryable("HTTP 503 Service Unavailable")),
    ],
)
async def test_slack_answers_are_classified(
    receiver: HttpReceiver,
    make_channel: Callable[..., SlackChannel],
    reply: Reply,
    expected: SendResult | None,
) -> None:
    receiver.respond(reply)

    result = await make_channel(receiver.url).send(_delivery())

    if expected is None:
        assert result.status is SendStatus.SUCCESS
    else:
        assert result == expected


async def test_a_slow_slack_is_retryable(
    receiver: HttpReceiver, make_channel: Callable[..., SlackChannel]
) -> None:
    receiver.hold()

    result = await make_channel(receiver.url, timeout=0.2).send(_delivery())

    assert receiver.hits == 1
    assert result == SendResult.retryable("timed out after 0.2s waiting for the response")


async def test_the_webhook_url_must_be_a_secret_reference() -> None:
    with pytest.raises(ChannelConfigError) as caught:
        build_channel("slack", {"webhook_url": "https://hooks.slack.com/services/T/B/x"})

    assert caught.value.field == "webhook_url"


async def test_a_webhook_url_that_is_not_http_is_refused_without_quoting_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLACK_URL", f"ftp://hooks.example/{WEBHOOK_TOKEN}")

    with pytest.raises(ChannelConfigError) as caught:
        build_channel("slack", {"webhook_url": {"env": "SLACK_URL"}})

    assert str(caught.value) == (
        "webhook_url: the URL it holds must start with http:// or https://"
    )


# Each failure kind: how to make the receiver fail.
async def _echoes_the_url(receiver: HttpReceiver) -> None:
    receiver.respond(Reply(404, body=f"no_service for {receiver.url}{WEBHOOK_PATH}"))


async def _throttled(receiver: HttpReceiver) -> None:
    receiver.respond(Reply(429, headers={"Retry-After": "1"}, body=WEBHOOK_TOKEN))


async def _server_error(receiver: HttpReceiver) -> None:
    receiver.respond(Reply(500, body=f"hook {WEBHOOK_TOKEN} failed"))


async def _delivered(receiver: HttpReceiver) -> None:
    receiver.respond(Reply(200, body="ok"))


async def _held(receiver: HttpReceiver) -> None:
    receiver.hold()


@pytest.mark.parametrize(
    "setup", [_echoes_the_url, _throttled, _server_error, _delivered, _held, None]
)
async def test_the_webhook_url_never_leaks_into_errors_or_logs(
    receiver: HttpReceiver,
    make_channel: Callable[..., SlackChannel],
    caplog: pytest.LogCaptureFixture,
    setup: Callable[[HttpReceiver], Awaitable[None]] | None,
) -> None:
    caplog.set_level(logging.DEBUG)
    if setup is not None:
        await setup(receiver)
    channel = make_channel(receiver.url if setup else closed_port_url(), timeout=0.2)

    result = await channel.send(_delivery())

    logged = caplog.text + "\n".join(record.getMessage() for record in caplog.records)
    for secret in (WEBHOOK_TOKEN, WEBHOOK_PATH, "B0HOOK5678"):
        assert secret not in repr(result)
        assert secret not in logged
    if setup in (_echoes_the_url, _throttled, _server_error, _delivered):
        # The request went out and httpx logged it: the check above had something to look at.
        assert receiver.requests[0].path == WEBHOOK_PATH
        assert "HTTP Request: POST" in logged
    else:
        assert result.status is SendStatus.RETRYABLE
