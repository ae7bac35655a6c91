"""The email channel against a real SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import base64
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from sendonce_server.channels.email import EmailChannel, EmailSettings
from sendonce_server.channels.registry import ChannelConfigError, build_channel
from sendonce_server.engine.model import Key, Link, Notification, Priority
from sendonce_server.engine.ports import Delivery, SendResult, SendStatus
from tests.support.smtp_server import SmtpServer, TlsFiles, make_tls_files

# aiosmtpd itself sets the attribute it deprecates whenever a login succeeds.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Session.login_data is deprecated:DeprecationWarning"
)

USER = "sendonce-bot"
PASSWORD = "pa55-W0rd-for-smtp-tests"
SENDER = "Sendonce <alerts@example.com>"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "smtp-password"
    path.write_text(PASSWORD + "\n")
    return path


@pytest.fixture
async def plain() -> AsyncIterator[SmtpServer]:
    """A server without TLS or AUTH."""
    async with SmtpServer() as server:
        yield server


def _settings(port: int, **settings: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "from": SENDER,
        "to": ["ops@example.com", "Oncall <oncall@example.com>"],
        "timeout": 5,
        **settings,
    }


def _channel(port: int, **settings: Any) -> EmailChannel:
    return EmailChannel(EmailSettings.model_validate(_settings(port, **settings)))


def _delivery(notification: Notification | None = None, attempt: int = 1) -> Delivery:
    notification = notification or Notification(
        subject="Backup failed on db-1",
        body="The nightly backup of **db-1** failed.\n\n- check `pgbackrest`\n- retry by hand",
        priority=Priority.HIGH,
        metadata={"host": "db-1", "job": "nightly"},
        links=(Link("Runbook", "https://wiki.example/backup?x=1&y=2"),),
    )
    return Delivery(Key("backup-3", "ops-mail"), notification, attempt)


def _parts(message: EmailMessage) -> tuple[str, str]:
    text, html = (part for part in message.iter_parts())
    assert (text.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    assert isinstance(text, EmailMessage)
    assert isinstance(html, EmailMessage)
    # On the wire, lines end with CRLF.
    return text.get_content().replace("\r\n", "\n"), html.get_content().replace("\r\n", "\n")


async def test_sends_a_multipart_message_with_text_and_html(plain: SmtpServer) -> None:
    delivery = _delivery()

    result = await _channel(plain.port, cc=["lead@example.com"]).send(delivery)

    (mail,) = plain.mails
    assert mail.mail_from == "alerts@example.com"
    assert mail.rcpt_tos == ("ops@example.com", "oncall@example.com", "lead@example.com")
    message = mail.message()
    assert message["Subject"] == "Backup failed on db-1"
    assert message["From"] == SENDER
    assert message["To"] == "ops@example.com, Oncall <oncall@example.com>"
    assert message["Cc"] == "lead@example.com"
    assert message["Message-ID"] == f"<{delivery.idempotency_key}@sendonce>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert (message["Importance"], message["X-Priority"]) == ("high", "1")
    assert message["Date"] is not None
    assert message.get_content_type() == "multipart/alternative"
    text, html = _parts(message)
    assert text == (
        "The nightly backup of **db-1** failed.\n\n- check `pgbackrest`\n- retry by hand\n\n"
        "Links:\n- Runbook: https://wiki.example/backup?x=1&y=2\n\n"
        "Priority: high\nhost: db-1\njob: nightly\n"
    )
    assert "<title>Backup failed on db-1</title>" in html
    assert "<p>The nightly backup of <strong>db-1</strong> failed.</p>" in html
    assert "<li>check <code>pgbackrest</code></li>" in html
    assert '<a href="https://wiki.example/backup?x=1&amp;y=2">Runbook</a>' in html
    assert '<tr><th align="left">host</th><td>db-1</td></tr>' in html
    assert result.status is SendStatus.SUCCESS
    assert result.receipt is not None
    assert result.receipt.reference == f"<{delivery.idempotency_key}@sendonce>"
    assert result.receipt.details["recipients"] == "3"
    assert result.receipt.details["response"] == "2.0.0 OK: queued"


async def test_html_in_the_body_or_subject_is_escaped(plain: SmtpServer) -> None:
    notification = Notification("<b>bold</b> & co", "<script>alert(1)</script>")

    await _channel(plain.port).send(_delivery(notification))

    message = plain.mails[0].message()
    _, html = _parts(message)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<title>&lt;b&gt;bold&lt;/b&gt; &amp; co</title>" in html
    assert message["Importance"] is None


async def test_a_multiline_subject_becomes_one_line(plain: SmtpServer) -> None:
    await _channel(plain.port).send(_delivery(Notification("line one\r\nBcc: x@evil.example")))

    message = plain.mails[0].message()
    assert message["Subject"] == "line one Bcc: x@evil.example"
    assert message["Bcc"] is None
    assert plain.mails[0].rcpt_tos == ("ops@example.com", "oncall@example.com")


async def test_the_message_id_is_the_same_for_every_attempt(plain: SmtpServer) -> None:
    plain.reply_to_data("451 4.3.0 Try again later", "250 2.0.0 OK")
    channel = _channel(plain.port)

    first = await channel.send(_delivery(attempt=1))
    second = await channel.send(_delivery(attempt=2))

    assert first == SendResult.retryable(
        "SMTP 451 while sending the message: 4.3.0 Try again later"
    )
    assert second.status is SendStatus.SUCCESS
    ids = [mail.message()["Message-ID"] for mail in plain.mails]
    assert ids == [f"<{_delivery().idempotency_key}@sendonce>"] * 2


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("452 4.3.1 Insufficient system storage", SendStatus.RETRYABLE),
        ("421 4.7.0 Try again later, closing connection", SendStatus.RETRYABLE),
        ("554 5.7.1 Message rejected as spam", SendStatus.PERMANENT),
        ("552 5.3.4 Message too big", SendStatus.PERMANENT),
    ],
)
async def test_replies_to_data_are_classified(
    plain: SmtpServer, reply: str, expected: SendStatus
) -> None:
    plain.reply_to_data(reply)

    result = await _channel(plain.port).send(_delivery())

    code, _, text = reply.partition(" ")
    assert result.status is expected
    assert result.error == f"SMTP {code} while sending the message: {text}"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("450 4.2.0 Mailbox busy", SendStatus.RETRYABLE),
        ("550 5.1.1 No such user", SendStatus.PERMANENT),
    ],
)
async def test_when_every_recipient_is_refused_the_code_decides(
    plain: SmtpServer, reply: str, expected: SendStatus
) -> None:
    plain.refuse("ops@example.com", reply)
    plain.refuse("oncall@example.com", reply)

    result = await _channel(plain.port).send(_delivery())

    assert plain.mails == []
    assert result.status is expected
    assert result.error == f"all 2 recipients refused; ops@example.com: SMTP {reply}"


async def test_one_refused_recipient_does_not_fail_the_others(plain: SmtpServer) -> None:
    plain.refuse("oncall@example.com", "550 5.1.1 No such user")

    result = await _channel(plain.port).send(_delivery())

    (mail,) = plain.mails
    assert mail.rcpt_tos == ("ops@example.com",)
    assert result.status is SendStatus.SUCCESS
    assert result.receipt is not None
    assert result.receipt.details["recipients"] == "1"
    assert result.receipt.details["refused"] == "oncall@example.com: 550 5.1.1 No such user"


async def test_starttls_with_the_ca_file(tls: TlsFiles) -> None:
    async with SmtpServer(starttls=tls, require_starttls=True) as server:
        channel = _channel(server.port, security="starttls", ca_file=str(tls.cert))

        result = await channel.send(_delivery())

    assert result.status is SendStatus.SUCCESS
    (mail,) = server.mails
    assert mail.tls


async def test_an_untrusted_certificate_is_refused(tls: TlsFiles) -> None:
    async with SmtpServer(starttls=tls, require_starttls=True) as server:
        result = await _channel(server.port, security="starttls").send(_delivery())

    assert server.mails == []
    assert result == SendResult.retryable(
        "starting TLS failed: TLS certificate verification failed"
    )


async def test_starttls_is_required_when_configured(plain: SmtpServer) -> None:
    result = await _channel(plain.port, security="starttls").send(_delivery())

    assert plain.mails == []
    assert result == SendResult.permanent("the server does not offer STARTTLS")


async def test_a_server_that_requires_starttls_refuses_plain_text(tls: TlsFiles) -> None:
    async with SmtpServer(starttls=tls, require_starttls=True) as server:
        result = await _channel(server.port, security="none").send(_delivery())

    assert server.mails == []
    assert result == SendResult.permanent(
        "SMTP 530 while sending the message: Must issue a STARTTLS command first"
    )


async def test_implicit_tls(tls: TlsFiles) -> None:
    async with SmtpServer(implicit_tls=tls) as server:
        channel = _channel(server.port, security="tls", ca_file=str(tls.cert))

        result = await channel.send(_delivery())

    assert result.status is SendStatus.SUCCESS
    assert server.mails[0].tls


async def test_auth_with_a_password_from_a_file(tls: TlsFiles, password_file: Path) -> None:
    async with SmtpServer(starttls=tls, credentials=(USER, PASSWORD)) as server:
        channel = _channel(
            server.port,
            security="starttls",
            ca_file=str(tls.cert),
            username=USER,
            password={"file": str(password_file)},
        )

        result = await channel.send(_delivery())

    assert result.status is SendStatus.SUCCESS
    assert server.logins == [(USER, True)]
    assert server.mails[0].login == USER


async def test_a_wrong_password_is_permanent(tls: TlsFiles, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    async with SmtpServer(starttls=tls, credentials=(USER, PASSWORD)) as server:
        channel = _channel(
            server.port,
            security="starttls",
            ca_file=str(tls.cert),
            username=USER,
            password={"file": str(wrong)},
        )

        result = await channel.send(_delivery())

    assert server.mails == []
    assert server.logins[0] == (USER, False)
    assert result == SendResult.permanent(
        "SMTP 535 while authenticating: 5.7.8 Authentication credentials invalid"
    )


async def test_a_server_requiring_auth_refuses_an_anonymous_sender(tls: TlsFiles) -> None:
    async with SmtpServer(starttls=tls, credentials=(USER, PASSWORD)) as server:
        channel = _channel(server.port, security="starttls", ca_file=str(tls.cert))

        result = await channel.send(_delivery())

    assert server.mails == []
    assert result == SendResult.permanent(
        "SMTP 530 while sending the message: 5.7.0 Authentication required"
    )


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connection_refused_is_retryable() -> None:
    result = await _channel(_closed_port()).send(_delivery())

    assert result == SendResult.retryable("connecting failed: connection refused")


async def test_a_server_slower_than_the_timeout_is_retryable(plain: SmtpServer) -> None:
    plain.hold()

    result = await _channel(plain.port, timeout=0.3).send(_delivery())

    assert len(plain.mails) == 1  # the message was sent, the answer did not come in time
    assert result == SendResult.retryable("timed out after 0.3s sending the message")


async def test_recipients_from_the_request_when_allowed(plain: SmtpServer) -> None:
    notification = Notification(
        "s",
        metadata={
            "email.to": "Ana <ana@example.com>, bo@example.com",
            "email.cc": "cy@example.com",
        },
    )

    channel = _channel(plain.port, allow_request_recipients=True)
    result = await channel.send(_delivery(notification))

    assert result.status is SendStatus.SUCCESS
    (mail,) = plain.mails
    assert mail.rcpt_tos == ("ana@example.com", "bo@example.com", "cy@example.com")
    message = mail.message()
    assert message["To"] == "Ana <ana@example.com>, bo@example.com"
    assert message["Cc"] == "cy@example.com"
    text, _ = _parts(message)
    assert "email.to" not in text


async def test_recipients_from_the_request_are_refused_unless_allowed(plain: SmtpServer) -> None:
    notification = Notification("s", metadata={"email.to": "mallory@example.com"})

    result = await _channel(plain.port).send(_delivery(notification))

    assert plain.mails == []
    assert result == SendResult.permanent(
        "metadata 'email.to' asks for other recipients, but this receiver does not allow them "
        "(allow_request_recipients = false)"
    )


async def test_a_bad_request_recipient_is_permanent(plain: SmtpServer) -> None:
    notification = Notification("s", metadata={"email.to": "not an address"})

    result = await _channel(plain.port, allow_request_recipients=True).send(_delivery(notification))

    assert plain.mails == []
    assert result.status is SendStatus.PERMANENT
    assert result.error.startswith("metadata 'email.to': ")


@pytest.mark.parametrize(
    ("settings", "field", "reason"),
    [
        ({"from": "nobody"}, "from", "'nobody' is not an email address"),
        ({"to": ["ops@example.com", "x"]}, "to", "'x' is not an email address"),
        ({"to": []}, "settings", "'to' needs at least one address"),
        ({"username": "u"}, "settings", "give both 'username' and 'password', or neither"),
        ({"security": "ssl"}, "security", "Input should be 'starttls', 'tls' or 'none'"),
        ({"ca_file": "/nonexistent/ca.pem", "security": "tls"}, "ca_file", "cannot be read"),
    ],
)
def test_bad_settings_name_the_setting(settings: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(ChannelConfigError) as caught:
        build_channel("email", _settings(25, **settings))

    assert caught.value.field == field
    assert reason in caught.value.reason


def test_defaults() -> None:
    settings = EmailSettings.model_validate(
        {"host": "smtp.example.com", "from": "a@x.io", "to": ["b@x.io"]}
    )

    assert (settings.security, settings.port, settings.timeout) == ("starttls", None, 30.0)
    assert (settings.cc, settings.allow_request_recipients) == ([], False)


# Each failure kind, made by the server; the leak check below runs against every one.
async def _wrong_password(server: SmtpServer) -> None:
    server.reply_to_data("250 OK")


async def _echoes_the_password(server: SmtpServer) -> None:
    encoded = base64.b64encode(PASSWORD.encode()).decode()
    server.reply_to_data(f"554 5.7.1 rejected: {PASSWORD} {encoded}")


async def _temporary(server: SmtpServer) -> None:
    server.reply_to_data(f"451 4.3.0 later, {PASSWORD}")


async def _held(server: SmtpServer) -> None:
    server.hold()


async def _delivered(server: SmtpServer) -> None:
    server.reply_to_data("250 OK")


@pytest.mark.parametrize(
    "setup", [_wrong_password, _echoes_the_password, _temporary, _held, _delivered, None]
)
async def test_the_password_never_leaks_into_errors_or_logs(
    tls: TlsFiles,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    setup: Callable[[SmtpServer], Awaitable[None]] | None,
) -> None:
    caplog.set_level(logging.DEBUG)
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD if setup is not _wrong_password else PASSWORD + "-wrong")
    async with SmtpServer(starttls=tls, credentials=(USER, PASSWORD)) as server:
        if setup is not None:
            await setup(server)
        channel = _channel(
            server.port if setup is not None else _closed_port(),
            security="starttls",
            ca_file=str(tls.cert),
            username=USER,
            password={"file": str(password_file)},
            timeout=0.5,
        )

        result = await channel.send(_delivery())

    # The test server's own log (aiosmtpd's "mail.log") is the receiver's, not the sidecar's.
    logged = "\n".join(
        record.getMessage() for record in caplog.records if not record.name.startswith("mail")
    )
    forms = [
        PASSWORD,
        base64.b64encode(PASSWORD.encode()).decode(),
        base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(),
    ]
    for secret in forms:
        assert secret not in repr(result)
        assert secret not in logged
    if setup is _echoes_the_password:
        assert result.error == (
            "SMTP 554 while sending the message: 5.7.1 rejected: [redacted] [redacted]"
        )
    if setup is _wrong_password:
        assert result.status is SendStatus.PERMANENT
    if setup in (_temporary, _held, None):
        assert result.status is SendStatus.RETRYABLE
    if setup in (_echoes_the_password, _temporary, _held, _delivered):
        assert server.logins == [(USER, True)]  # it did log in with the password
