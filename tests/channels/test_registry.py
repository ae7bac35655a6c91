"""Building channels from a receiver's type and settings, and the errors a person can act on."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from sendonce_server.channels.console import ConsoleChannel
from sendonce_server.channels.file import FileChannel
from sendonce_server.channels.noop import NoopChannel
from sendonce_server.channels.registry import CHANNEL_TYPES, ChannelConfigError, build_channel
from sendonce_server.channels.webhook import WebhookChannel
from sendonce_server.engine.model import Key, Notification
from sendonce_server.engine.ports import Channel, Delivery, SendStatus

SIGNING_SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
SECRET_URL = "https://hooks.example.com/services/T0KEN-abcdef123456"


@pytest.fixture
async def build() -> AsyncIterator[Callable[[str, Mapping[str, Any]], Channel]]:
    built: list[Channel] = []

    def _build(kind: str, settings: Mapping[str, Any]) -> Channel:
        channel = build_channel(kind, settings)
        built.append(channel)
        return channel

    yield _build
    for channel in built:
        await channel.close()


def _config_error(kind: str, settings: Mapping[str, Any]) -> ChannelConfigError:
    with pytest.raises(ChannelConfigError) as caught:
        build_channel(kind, settings)
    return caught.value


def test_known_types() -> None:
    assert CHANNEL_TYPES == (
        "console",
        "email",
        "file",
        "noop",
        "pagerduty",
        "slack",
        "teams",
        "webhook",
    )


async def test_builds_each_type_with_its_default_timeout(
    build: Callable[[str, Mapping[str, Any]], Channel], tmp_path: Path
) -> None:
    console = build("console", {})
    file = build("file", {"path": str(tmp_path / "out.jsonl")})
    noop = build("noop", {})
    webhook = build("webhook", {"url": "https://hooks.example.com/x"})

    assert isinstance(console, ConsoleChannel)
    assert isinstance(file, FileChannel)
    assert isinstance(noop, NoopChannel)
    assert isinstance(webhook, WebhookChannel)
    assert (console.timeout, file.timeout, noop.timeout, webhook.timeout) == (5, 5, 5, 10)


async def test_settings_from_text_are_coerced(
    build: Callable[[str, Mapping[str, Any]], Channel],
) -> None:
    assert build("noop", {"timeout": "2.5"}).timeout == 2.5


async def test_noop_succeeds_without_doing_anything(
    build: Callable[[str, Mapping[str, Any]], Channel],
) -> None:
    delivery = Delivery(Key("u1", "bench"), Notification("hi"), 1)

    result = await build("noop", {}).send(delivery)

    assert result.status is SendStatus.SUCCESS
    assert result.receipt is not None
    assert result.receipt.reference == "noop"


def test_unknown_type_lists_the_known_ones() -> None:
    error = _config_error("sms", {})

    assert error.field == "type"
    assert str(error) == (
        "type: unknown channel type 'sms' "
        "(known: console, email, file, noop, pagerduty, slack, teams, webhook)"
    )


def test_a_typo_in_a_setting_names_it_and_the_known_settings() -> None:
    error = _config_error("file", {"paht": "/tmp/x"})

    assert error.field == "path"
    assert error.reason == (
        "required setting is missing; also paht: unknown setting (known: path, timeout)"
    )


@pytest.mark.parametrize("timeout", [0, -1, 301, "soon"])
def test_timeout_out_of_range(timeout: object) -> None:
    error = _config_error("webhook", {"url": "https://hooks.example.com/x", "timeout": timeout})

    assert error.field == "timeout"


def test_console_stream_must_be_stdout_or_stderr() -> None:
    error = _config_error("console", {"stream": "stdlog"})

    assert (error.field, error.reason) == ("stream", "Input should be 'stdout' or 'stderr'")


def test_file_path_must_not_be_empty() -> None:
    assert str(_config_error("file", {"path": ""})) == "path: must name a file"


@pytest.mark.parametrize(
    "settings",
    [{}, {"url": "https://hooks.example.com/x", "url_secret": {"env": "HOOK_URL"}}],
)
def test_webhook_needs_exactly_one_url(settings: Mapping[str, Any]) -> None:
    error = _config_error("webhook", settings)

    assert str(error) == "url_secret: give exactly one of 'url' (not secret) or 'url_secret'"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/x", "must start with http:// or https://"),
        ("hooks.example.com/x", "must start with http:// or https://"),
        ("http:///x", "must name a host"),
    ],
)
def test_webhook_url_must_be_http(url: str, reason: str) -> None:
    assert str(_config_error("webhook", {"url": url})) == f"url: {reason}"


def test_secret_url_errors_do_not_quote_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_URL", "ftp://hooks.example.com/services/T0KEN-abcdef123456")

    error = _config_error("webhook", {"url_secret": {"env": "HOOK_URL"}})

    assert str(error) == "url_secret: the URL it holds must start with http:// or https://"


def test_unset_secret_names_the_setting_and_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOOK_URL", raising=False)

    error = _config_error("webhook", {"url_secret": {"env": "HOOK_URL"}})

    assert str(error) == "url_secret: environment variable HOOK_URL is not set"


def test_missing_secret_file_names_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "signing"
    settings = {"url": "https://hooks.example.com/x", "signing_secret": {"file": str(path)}}

    error = _config_error("webhook", settings)

    assert str(error) == f"signing_secret: file {path} does not exist"


def test_inline_secrets_are_refused_without_quoting_them() -> None:
    settings = {"url": "https://hooks.example.com/x", "signing_secret": {"value": SIGNING_SECRET}}

    error = _config_error("webhook", settings)

    assert error.field == "signing_secret"
    assert "inline secret values are not accepted" in error.reason
    assert SIGNING_SECRET not in str(error)


def test_unknown_secret_source_is_named() -> None:
    settings = {"url": "https://hooks.example.com/x", "signing_secret": {"vault": "x", "env": "Y"}}

    assert str(_config_error("webhook", settings)) == "signing_secret.vault: unknown setting"


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("not-a-whsec-secret-at-all-but-long", "must start with 'whsec_'"),
        ("whsec_***not base64***", "must be 'whsec_' followed by base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "must encode 24 to 64 bytes"),
    ],
)
def test_malformed_signing_secret_is_refused_without_quoting_it(
    monkeypatch: pytest.MonkeyPatch, secret: str, reason: str
) -> None:
    monkeypatch.setenv("HOOK_SIGNING_SECRET", secret)
    settings = {
        "url": "https://hooks.example.com/x",
        "signing_secret": {"env": "HOOK_SIGNING_SECRET"},
    }

    error = _config_error("webhook", settings)

    assert error.field == "signing_secret"
    assert error.reason.startswith(reason)
    assert secret not in str(error)
    assert secret.removeprefix("whsec_") not in str(error)


async def test_valid_secrets_build_a_webhook(
    build: Callable[[str, Mapping[str, Any]], Channel], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_URL", SECRET_URL)
    monkeypatch.setenv("HOOK_SIGNING_SECRET", SIGNING_SECRET)
    settings = {"url_secret": {"env": "HOOK_URL"}, "signing_secret": {"env": "HOOK_SIGNING_SECRET"}}

    channel = build("webhook", settings)

    assert isinstance(channel, WebhookChannel)
    assert "T0KEN" not in repr(channel)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Webhook-Signature": "v1,x"}, "'Webhook-Signature' is set by sendonce"),
        ({"Idempotency-Key": "k"}, "'Idempotency-Key' is set by sendonce"),
        ({"Bad Header": "x"}, "'Bad Header' is not a valid header name"),
        ({"X-Ok": "a\r\nX-Injected: 1"}, "the value of 'X-Ok' must be a single line"),
    ],
)
def test_static_headers_are_checked(headers: dict[str, str], reason: str) -> None:
    error = _config_error("webhook", {"url": "https://hooks.example.com/x", "headers": headers})

    assert error.field == "headers"
    assert error.reason.startswith(reason)
