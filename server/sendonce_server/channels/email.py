"""The `email` channel: one message per delivery, sent over SMTP with aiosmtplib.

The message is multipart/alternative: the Markdown body as the text part and rendered as the HTML
part, the links and details after it. `Message-ID` is derived from the idempotency key, so a
message sent twice (an attempt that timed out after the server took it) is the same message to
the mail systems that deduplicate. SMTP replies are classified like HTTP statuses: 4xx (and
connection failures, timeouts) are worth a retry, 5xx are permanent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import ssl
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, parseaddr
from pathlib import Path
from typing import Literal, Self

import aiosmtplib
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..engine.model import Notification, Priority, Receipt
from ..engine.ports import Delivery, SendResult
from .http import ReceiverSecretMasker, body_excerpt, root_cause
from .markdown import to_html
from .secrets import SecretError, SecretRef

DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
# Per-request recipients, read only when the receiver allows them.
TO_KEY = "email.to"
CC_KEY = "email.cc"
_URGENT = frozenset({Priority.HIGH, Priority.CRITICAL})


def mailbox(value: str) -> str:
    """The address of `Name <address>` or `address`; ValueError if it is not one."""
    if "\r" in value or "\n" in value:
        raise ValueError("an address must be a single line")
    _, address = parseaddr(value)
    local, at, domain = address.rpartition("@")
    if not (at and local and domain) or any(char.isspace() for char in address):
        raise ValueError(f"{value!r} is not an email address")
    return address


def _mailboxes(values: Sequence[str]) -> list[str]:
    for value in values:
        mailbox(value)
    return list(values)


class EmailSettings(BaseModel):
    """Settings of an `email` receiver."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    ca_file: Path | None = None
    username: str | None = Field(default=None, min_length=1)
    password: SecretRef | None = None
    sender: str = Field(alias="from")
    to: list[str] = Field(default_factory=list)
    cc: list[str] = Field(default_factory=list)
    allow_request_recipients: bool = False
    local_hostname: str | None = None
    timeout: float = Field(default=30.0, gt=0, le=300)

    @field_validator("sender")
    @classmethod
    def _valid_sender(cls, sender: str) -> str:
        mailbox(sender)
        return sender

    @field_validator("to", "cc")
    @classmethod
    def _valid_recipients(cls, recipients: list[str]) -> list[str]:
        return _mailboxes(recipients)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both 'username' and 'password', or neither")
        if not self.to and not self.allow_request_recipients:
            raise ValueError("'to' needs at least one address")
        if self.ca_file is not None and self.security == "none":
            raise ValueError("'ca_file' needs security = 'starttls' or 'tls'")
        return self


class EmailChannel:
    """Sends each delivery as an email through one SMTP server (a connection per message)."""

    def __init__(self, settings: EmailSettings) -> None:
        self._settings = settings
        self._port = settings.port or DEFAULT_PORTS[settings.security]
        self._password: str | None = None
        secrets: list[str] = []
        if settings.password is not None and settings.username is not None:
            self._password = settings.password.resolve("password").get_secret_value()
            secrets += _password_forms(settings.username, self._password)
        self._redactor = ReceiverSecretMasker(secrets)
        self._tls_context: ssl.SSLContext | None = None
        if settings.security != "none":
            cafile = str(settings.ca_file) if settings.ca_file is not None else None
            try:
                self._tls_context = ssl.create_default_context(cafile=cafile)
            except (OSError, ssl.SSLError):
                reason = f"{settings.ca_file} cannot be read as PEM certificates"
                raise SecretError("ca_file", reason) from None

    @property
    def timeout(self) -> float:
        return self._settings.timeout

    async def send(self, delivery: Delivery) -> SendResult:
        try:
            to, cc = self._recipients(delivery.notification.metadata)
        except ValueError as exc:
            return SendResult.permanent(str(exc))
        message = build_message(delivery, sender=self._settings.sender, to=to, cc=cc)
        envelope = [mailbox(address) for address in (*to, *cc)]
        return await self._transmit(message, envelope)

    async def close(self) -> None:
        return None

    def _recipients(self, metadata: Mapping[str, str]) -> tuple[list[str], list[str]]:
        to, cc = list(self._settings.to), list(self._settings.cc)
        requested = [key for key in (TO_KEY, CC_KEY) if key in metadata]
        if requested and not self._settings.allow_request_recipients:
            raise ValueError(
                f"metadata {requested[0]!r} asks for other recipients, but this receiver does "
                "not allow them (allow_request_recipients = false)"
            )
        if TO_KEY in metadata:
            to = _request_addresses(metadata, TO_KEY)
        if CC_KEY in metadata:
            cc = _request_addresses(metadata, CC_KEY)
        if not to and not cc:
            raise ValueError("no recipients: neither 'to' nor metadata 'email.to' gives one")
        return to, cc

    async def _transmit(self, message: EmailMessage, envelope: list[str]) -> SendResult:
        settings = self._settings
        smtp = aiosmtplib.SMTP(
            hostname=settings.host,
            port=self._port,
            use_tls=settings.security == "tls",
            start_tls=False,  # done below, so that a server without STARTTLS is refused
            tls_context=self._tls_context,
            local_hostname=settings.local_hostname,
            timeout=settings.timeout,
        )
        stage = "connecting"
        refused: Mapping[str, aiosmtplib.SMTPResponse] = {}
        reply = ""
        sent = False
        try:
            async with asyncio.timeout(settings.timeout):
                await smtp.connect()
                if settings.security == "starttls":
                    stage = "starting TLS"
                    await smtp.ehlo()
                    if not smtp.supports_extension("starttls"):
                        return SendResult.permanent("the server does not offer STARTTLS")
                    await smtp.starttls()
                if settings.username is not None and self._password is not None:
                    stage = "authenticating"
                    await smtp.ehlo()
                    if not smtp.supports_extension("auth"):
                        return SendResult.permanent("the server does not offer AUTH")
                    await smtp.login(settings.username, self._password)
                stage = "sending the message"
                refused, reply = await smtp.send_message(
                    message, sender=mailbox(settings.sender), recipients=envelope
                )
                sent = True
                # The message was taken: a QUIT that fails changes nothing.
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await smtp.quit()
        except TimeoutError:  # aiosmtplib's timeouts are TimeoutErrors too
            if sent:  # the time ran out during QUIT
                return self._delivered(message, envelope, refused, reply)
            return SendResult.retryable(f"timed out after {settings.timeout:g}s {stage}")
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return self._all_refused(exc.recipients)
        except aiosmtplib.SMTPResponseException as exc:
            return self._reply_result(exc.code, exc.message, stage)
        except aiosmtplib.SMTPServerDisconnected:
            return SendResult.retryable(f"the server closed the connection while {stage}")
        except OSError as exc:  # SMTPConnectError is a ConnectionError; TLS errors are OSErrors
            return SendResult.retryable(f"{stage} failed: {root_cause(exc)}")
        except aiosmtplib.SMTPException as exc:
            # What is left: the server cannot do what the settings ask (an AUTH mechanism, ...).
            return SendResult.permanent(f"{stage} failed: {self._excerpt(exc.message)}")
        finally:
            smtp.close()
        return self._delivered(message, envelope, refused, reply)

    def _delivered(
        self,
        message: EmailMessage,
        envelope: list[str],
        refused: Mapping[str, aiosmtplib.SMTPResponse],
        reply: str,
    ) -> SendResult:
        message_id = str(message["Message-ID"])
        details = {
            "message_id": message_id,
            "recipients": str(len(envelope) - len(refused)),
            "response": self._excerpt(reply),
        }
        if refused:
            details["refused"] = "; ".join(
                f"{address}: {response.code} {self._excerpt(response.message)}"
                for address, response in sorted(refused.items())
            )
        return SendResult.success(Receipt(message_id, details))

    def _reply_result(self, code: int, text: str, stage: str) -> SendResult:
        error = f"SMTP {code} while {stage}: {self._excerpt(text)}".rstrip(": ")
        if 400 <= code < 500:
            return SendResult.retryable(error)
        return SendResult.permanent(error)

    def _all_refused(self, refusals: Sequence[aiosmtplib.SMTPRecipientRefused]) -> SendResult:
        first = refusals[0]
        error = (
            f"all {len(refusals)} recipients refused; {first.recipient}: "
            f"SMTP {first.code} {self._excerpt(first.message)}"
        ).rstrip()
        # A temporary refusal may pass later; nobody got the message, so a retry is safe.
        if any(400 <= refusal.code < 500 for refusal in refusals):
            return SendResult.retryable(error)
        return SendResult.permanent(error)

    def _excerpt(self, text: str) -> str:
        return body_excerpt(text.encode(), self._redactor)


def _request_addresses(metadata: Mapping[str, str], key: str) -> list[str]:
    addresses = [
        f"{name} <{address}>" if name else address
        for name, address in getaddresses([metadata[key]])
        if name or address
    ]
    try:
        return _mailboxes(addresses)
    except ValueError as exc:
        raise ValueError(f"metadata {key!r}: {exc}") from None


def _password_forms(username: str, password: str) -> list[str]:
    """The password, and the AUTH PLAIN / LOGIN encodings a server might echo back."""
    plain = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
    login = base64.b64encode(password.encode()).decode()
    return [password, plain, login]


def message_id(delivery: Delivery) -> str:
    """The same for every attempt of a key, so mail systems see one message."""
    return f"<{delivery.idempotency_key}@sendonce>"


def build_message(
    delivery: Delivery, *, sender: str, to: Sequence[str], cc: Sequence[str]
) -> EmailMessage:
    """The MIME message of a delivery: text (the Markdown) and HTML alternatives."""
    notification = delivery.notification
    message = EmailMessage()
    message["Subject"] = " ".join(notification.subject.split())
    message["From"] = sender
    if to:
        message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = message_id(delivery)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
    if notification.priority in _URGENT:
        message["Importance"] = "high"
        message["X-Priority"] = "1"
    message.set_content(text_part(notification))
    message.add_alternative(html_part(notification), subtype="html")
    return message


def _details(notification: Notification) -> list[tuple[str, str]]:
    details = []
    if notification.priority is not Priority.UNSPECIFIED:
        details.append(("Priority", notification.priority.value))
    details += [
        (key, value)
        for key, value in sorted(notification.metadata.items())
        if key not in (TO_KEY, CC_KEY)
    ]
    return details


def text_part(notification: Notification) -> str:
    """The Markdown body as is, then the links and the details."""
    sections = [notification.body.strip()] if notification.body.strip() else []
    if notification.links:
        lines = [f"- {link.title}: {link.url}" for link in notification.links]
        sections.append("\n".join(["Links:", *lines]))
    if details := _details(notification):
        sections.append("\n".join(f"{key}: {value}" for key, value in details))
    return "\n\n".join(sections) + "\n"


def html_part(notification: Notification) -> str:
    """The body rendered from Markdown, then the links and the details, in a small page."""
    escape = html.escape
    parts = [to_html(notification.body)]
    if notification.links:
        items = "".join(
            f'<li><a href="{escape(link.url)}">{escape(link.title or link.url)}</a></li>'
            for link in notification.links
        )
        parts.append(f"<ul>{items}</ul>")
    if details := _details(notification):
        rows = "".join(
            f'<tr><th align="left">{escape(key)}</th><td>{escape(value)}</td></tr>'
            for key, value in details
        )
        parts.append(f"<table>{rows}</table>")
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{escape(notification.subject)}</title></head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
