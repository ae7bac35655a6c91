"""The webhook channel against a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from sendonce_server import __version__
from sendonce_server.channels.webhook import WebhookChannel, WebhookSettings
from sendonce_server.engine.model import Key, Link, Notification, Priority
from sendonce_server.engine.ports import Delivery, SendResult, SendStatus
from tests.support.http_receiver import HttpReceiver, Reply, closed_port_url

SIGNING_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
PATH_TOKEN = "T0KEN-in-the-path-9f8e7d"
QUERY_TOKEN = "qu3ry-t0ken-1a2b3c"


@pytest.fixture
async def receiver() -> AsyncIterator[HttpReceiver]:
    async with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture
def signing_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("WEBHOOK_SIGNING_SECRET", SIGNING_SECRET)
    return "WEBHOOK_SIGNING_SECRET"


@pytest.fixture
async def make_channel() -> AsyncIterator[Callable[..., WebhookChannel]]:
    channels: list[WebhookChannel] = []

    def make(**settings: Any) -> WebhookChannel:
        channel = WebhookChannel(WebhookSettings.model_validate(settings))
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.close()


def _delivery(attempt: int = 1, uid: str = "order-42") -> Delivery:
    notification = Notification(
        subject="Paiement reçu ✓",
        body="Commande n° 42",
        priority=Priority.NORMAL,
        metadata={"shop": "paris"},
        links=(Link("order", "https://shop.example/orders/42"),),
    )
    return Delivery(Key(uid, "orders-hook"), notification, attempt)


def _verifies(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    """Standard Webhooks verification written from the spec, independent of the channel."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    candidates = headers["webhook-signature"].split(" ")
    return any(
        version == "v1" and hmac.compare_digest(signature, expected)
        for version, _, signature in (candidate.partition(",") for candidate in candidates)
    )


async def test_posts_the_delivery_as_signed_json(
    receiver: HttpReceiver, signing_env: str, make_channel: Callable[..., WebhookChannel]
) -> None:
    channel = make_channel(url=f"{receiver.url}/hook", signing_secret={"env": signing_env})
    delivery = _delivery()
    before = int(time.time())

    result = await channel.send(delivery)

    after = int(time.time())
    (request,) = receiver.requests
    assert (request.method, request.path) == ("POST", "/hook")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == f"sendonce/{__version__}"
    assert before <= int(request.headers["webhook-timestamp"]) <= after
    assert _verifies(SIGNING_SECRET, request.headers, request.body)
    assert request.json() == {
        "uid": "order-42",
        "channel": "orders-hook",
        "attempt": 1,
        "idempotency_key": delivery.idempotency_key,
        "subject": "Paiement reçu ✓",
        "body": "Commande n° 42",
        "priority": "normal",
        "metadata": {"shop": "paris"},
        "links": [{"title": "order", "url": "https://shop.example/orders/42"}],
    }
    assert result == SendResult.success(result.receipt)
    assert result.receipt is not None
    assert result.receipt.reference == "HTTP 200"
    assert result.receipt.details == {"status_code": "200"}


async def test_the_independent_check_rejects_a_tampered_body(
    receiver: HttpReceiver, signing_env: str, make_channel: Callable[..., WebhookChannel]
) -> None:
    channel = make_channel(url=receiver.url, signing_secret={"env": signing_env})

    await channel.send(_delivery())

    (request,) = receiver.requests
    assert _verifies(SIGNING_SECRET, request.headers, request.body)
    assert not _verifies(SIGNING_SECRET, request.headers, request.body.replace(b"42", b"43"))
    other_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    assert not _verifies(other_secret, request.headers, request.body)


async def test_webhook_id_is_the_idempotency_key_and_stable_across_attempts(
    receiver: HttpReceiver, signing_env: str, make_channel: Callable[..., WebhookChannel]
) -> None:
    receiver.respond(500, 503, 200)
    channel = make_channel(url=receiver.url, signing_secret={"env": signing_env})

    results = [await channel.send(_delivery(attempt)) for attempt in (1, 2, 3)]

    expected_key = Key("order-42", "orders-hook").idempotency_key
    assert [result.status for result in results] == [
        SendStatus.RETRYABLE,
        SendStatus.RETRYABLE,
        SendStatus.SUCCESS,
    ]
    assert [request.headers["webhook-id"] for request in receiver.requests] == [expected_key] * 3
    assert [request.headers["idempotency-key"] for request in receiver.requests] == [
        expected_key
    ] * 3
    assert [request.json()["attempt"] for request in receiver.requests] == [1, 2, 3]
    assert all(_verifies(SIGNING_SECRET, r.headers, r.body) for r in receiver.requests)


async def test_without_signing_secret_there_is_no_signature(
    receiver: HttpReceiver, make_channel: Callable[..., WebhookChannel]
) -> None:
    channel = make_channel(url=receiver.url)

    await channel.send(_delivery())

    (request,) = receiver.requests
    assert "webhook-signature" not in request.headers
    assert request.headers["webhook-id"] == _delivery().idempotency_key
    assert request.headers["webhook-timestamp"].isdigit()


async def test_static_headers_are_sent(
    receiver: HttpReceiver, make_channel: Callable[..., WebhookChannel]
) -> None:
    channel = make_channel(url=receiver.url, headers={"X-Team": "payments"})

    await channel.send(_delivery())

    assert receiver.requests[0].headers["x-team"] == "payments"


async def test_one_connection_is_reused_across_sends(
    receiver: HttpReceiver, make_channel: Callable[..., WebhookChannel]
) -> None:
    receiver.respond(Reply(200, body="ok"))
    channel = make_channel(url=receiver.url)

    await channel.send(_delivery(1))
    await channel.send(_delivery(2))

    first, second = receiver.requests
    assert first.client_port == second.client_port


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, SendStatus.SUCCESS),
        (201, SendStatus.SUCCESS),
        (204, SendStatus.SUCCESS),
        (400, SendStatus.PERMANENT),
        (401, SendStatus.PERMANENT),
        (404, SendStatus.PERMANENT),
        (410, SendStatus.PERMANENT),
        (408, SendStatus.RETRYABLE),
        (429, SendStatus.RETRYABLE),
        (500, SendStatus.RETRYABLE),
        (503, SendStatus.RETRYABLE),
    ],
)
async def test_status_classification(
    receiver: HttpReceiver,
    make_channel: Callable[..., WebhookChannel],
    status: int,
    expected: SendStatus,
) -> None:
    receiver.respond(status)

    result = await make_channel(url=receiver.url).send(_delivery())

    assert result.status is expected
    if expected is SendStatus.SUCCESS:
        assert result.receipt is not None
        assert result.receipt.reference == f"HTTP {status}"
    else:
        assert result.error.startswith(f"HTTP {status} ")


async def test_error_includes_a_short_excerpt_of_the_body(
    receiver: HttpReceiver, make_channel: Callable[..., WebhookChannel]
) -> None:
    receiver.respond(Reply(422, body='{"error": "subject too long"}' + " " * 100_000 + "tail"))

    result = await make_channel(url=receiver.url).send(_delivery())

    assert result == SendResult.permanent(
        'HTTP 422 Unprocessable Entity: {"error": "subject too long"}'
    )


async def test_retry_after_seconds_is_honoured(
    receiver: HttpReceiver, make_channel: Callable[..., WebhookChannel]
) -> None:
    receiver.respond(Reply(429, headers={"Retry-After": "17"}))

    result = await make_channel(url=receiver.url).send(_delivery())

    assert result.status is SendStatus.RETRYABLE
    assert result.retry_after == 17.0


async def test_retry_after_http_date_is_honoured(
    receiver: HttpReceiver, make_channel: Callable[..., WebhookChannel]
) -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    receiver.respond(Reply(503, headers={"Retry-After": format_datetime(when, usegmt=True)}))

    result = await make_channel(url=receiver.url).send(_delivery())

    assert result.status is SendStatus.RETRYABLE
    assert result.retry_after is not None
    assert 110 <= result.retry_after <= 120


async def test_410_gone_disables_the_receiver_until_a_reload(
    receiver: HttpReceiver, make_channel: Callable[..., WebhookChannel]
) -> None:
    receiver.respond(Reply(410, body="this hook was deleted"))
    channel = make_channel(url=receiver.url)

    first = await channel.send(_delivery(uid="a"))
    receiver.respond(200)
    second = await channel.send(_delivery(uid="b"))

    assert first == SendResult.permanent("HTTP 410 Gone: this hook was deleted")
    assert second == SendResult.permanent(
        "receiver disabled after HTTP 410 Gone; reload or restart the sidecar to enable it"
    )
    assert receiver.hits == 1  # the second send never called the receiver
    # A reload builds a new channel object, which calls the receiver again.
    reloaded = make_channel(url=receiver.url)
    assert (await reloaded.send(_delivery(uid="b"))).status is SendStatus.SUCCESS
    assert receiver.hits == 2


@pytest.mark.parametrize("status", [400, 404, 429, 500])
async def test_other_failures_do_not_disable_the_receiver(
    receiver: HttpReceiver, make_channel: Callable[..., WebhookChannel], status: int
) -> None:
    receiver.respond(status, 200)
    channel = make_channel(url=receiver.url)

    await channel.send(_delivery(uid="a"))
    result = await channel.send(_delivery(uid="b"))

    assert result.status is SendStatus.SUCCESS
    assert receiver.hits == 2


async def test_retry_after_in_the_past_means_now(
    receiver: HttpReceiver, make_channel: Callable[..., WebhookChannel]
) -> None:
    when = datetime.now(UTC) - timedelta(seconds=60)
    receiver.respond(Reply(503, headers={"Retry-After": format_datetime(when, usegmt=True)}))

    result = await make_channel(url=receiver.url).send(_delivery())

    assert result == SendResult.retryable("HTTP 503 Service Unavailable", retry_after=0.0)


async def test_an_unusable_retry_after_is_ignored(
    receiver: HttpReceiver, make_channel: Callable[..., WebhookChannel]
) -> None:
    receiver.respond(Reply(429, headers={"Retry-After": "soon"}))

    result = await make_channel(url=receiver.url).send(_delivery())

    assert result == SendResult.retryable("HTTP 429 Too Many Requests", retry_after=None)


async def test_a_receiver_slower_than_the_timeout_is_retryable(
    receiver: HttpReceiver, make_channel: Callable[..., WebhookChannel]
) -> None:
    receiver.hold()
    channel = make_channel(url=receiver.url, timeout=0.2)

    result = await channel.send(_delivery())

    assert receiver.hits == 1
    assert result.status is SendStatus.RETRYABLE
    assert result.error == "timed out after 0.2s waiting for the response"


async def test_connection_refused_is_retryable(
    make_channel: Callable[..., WebhookChannel],
) -> None:
    result = await make_channel(url=closed_port_url()).send(_delivery())

    assert result == SendResult.retryable("connection failed: connection refused")


async def test_timeout_defaults_to_ten_seconds(make_channel: Callable[..., WebhookChannel]) -> None:
    assert make_channel(url="https://hooks.example.com/x").timeout == 10.0


# Each failure kind: how to make the receiver fail, and whether an HTTP response comes back.
async def _echo_500(receiver: HttpReceiver) -> None:
    receiver.respond(Reply(500, body=f"no hook at /hooks/{PATH_TOKEN}?key={QUERY_TOKEN}"))


async def _echo_404_encoded(receiver: HttpReceiver) -> None:
    receiver.respond(Reply(404, body=f"unknown: {receiver.url}/hooks/{PATH_TOKEN}%3Fkey%3D"))


async def _throttled(receiver: HttpReceiver) -> None:
    receiver.respond(Reply(429, headers={"Retry-After": "5"}, body=QUERY_TOKEN))


async def _redirect(receiver: HttpReceiver) -> None:
    receiver.respond(Reply(302, headers={"Location": f"/new/{PATH_TOKEN}?key={QUERY_TOKEN}"}))


async def _delivered(receiver: HttpReceiver) -> None:
    receiver.respond(200)


async def _held(receiver: HttpReceiver) -> None:
    receiver.hold()


@pytest.mark.parametrize(
    ("setup", "answers"),
    [
        (_echo_500, True),
        (_echo_404_encoded, True),
        (_throttled, True),
        (_redirect, True),
        (_delivered, True),
        (_held, False),
        (None, False),  # connection refused
    ],
)
async def test_secrets_never_leak_into_errors_or_logs(
    receiver: HttpReceiver,
    make_channel: Callable[..., WebhookChannel],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    setup: Callable[[HttpReceiver], Awaitable[None]] | None,
    answers: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    base = receiver.url if setup is not None else closed_port_url()
    monkeypatch.setenv("HOOK_URL", f"{base}/hooks/{PATH_TOKEN}?key={QUERY_TOKEN}")
    monkeypatch.setenv("HOOK_SIGNING_SECRET", SIGNING_SECRET)
    if setup is not None:
        await setup(receiver)
    channel = make_channel(
        url_secret={"env": "HOOK_URL"}, signing_secret={"env": "HOOK_SIGNING_SECRET"}, timeout=0.2
    )

    result = await channel.send(_delivery())

    logged = caplog.text + "\n".join(record.getMessage() for record in caplog.records)
    signing_key = SIGNING_SECRET.removeprefix("whsec_")
    for secret in (PATH_TOKEN, QUERY_TOKEN, SIGNING_SECRET, signing_key):
        assert secret not in result.error
        assert secret not in repr(result)
        assert secret not in logged
    if answers:
        # The request really went out, and httpx logged it: the check above had a target.
        assert receiver.requests[0].query == f"key={QUERY_TOKEN}"
        assert "HTTP Request: POST" in logged
    else:
        assert result.status is SendStatus.RETRYABLE
