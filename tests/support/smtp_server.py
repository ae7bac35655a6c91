"""A real SMTP server (aiosmtpd) on 127.0.0.1 for tests: records every message, replies as told.

    async with SmtpServer() as server:                       # accepts everything
        server.reply_to_data("451 4.3.0 try again later")    # the next DATA replies (last repeats)
        server.refuse("nobody@example.com", "550 5.1.1 no such user")
        ...                                                  # point a channel at server.port
        (mail,) = server.mails
        assert mail.message()["Subject"] == "..."

It runs in the test's own event loop: no thread, no sleep. `make_tls_files` makes a throwaway
self-signed certificate for 127.0.0.1 with the `openssl` command, for STARTTLS and implicit TLS.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM files)."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_tls_files(directory: Path) -> TlsFiles:
    """Generate a certificate valid for a day with the `openssl` command line."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return TlsFiles(cert, key)


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    """One message as the server got it after DATA, and what the server answered."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    reply: str
    tls: bool  # the session was encrypted (STARTTLS or implicit TLS)
    login: str | None  # the authenticated user, if any

    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)


class SmtpServer:
    """A real SMTP server on a free port of 127.0.0.1; use it as an async context manager.

    `starttls` offers STARTTLS with this certificate (`require_starttls` refuses mail without
    it); `implicit_tls` speaks TLS from the first byte instead. `credentials` (user, password)
    requires AUTH; a wrong password gets aiosmtpd's "535 5.7.8 Authentication credentials
    invalid".
    """

    def __init__(
        self,
        *,
        starttls: TlsFiles | None = None,
        require_starttls: bool = False,
        implicit_tls: TlsFiles | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.mails: list[ReceivedMail] = []
        self.logins: list[tuple[str, bool]] = []  # (user, accepted) of every AUTH attempt
        self._starttls = starttls
        self._require_starttls = require_starttls
        self._implicit_tls = implicit_tls
        self._credentials = credentials
        self._data_replies = ["250 2.0.0 OK: queued"]
        self._refused: dict[str, str] = {}
        self._server: asyncio.Server | None = None
        self._sessions: list[SMTP] = []
        self._gate = asyncio.Event()
        self._gate.set()
        self.port = 0

    def reply_to_data(self, *replies: str) -> None:
        """Answer the following DATA commands with these replies in turn; the last repeats."""
        self._data_replies = list(replies)

    def refuse(self, address: str, reply: str) -> None:
        """Answer RCPT TO for `address` with `reply` (e.g. "550 5.1.1 no such user")."""
        self._refused[address] = reply

    def hold(self) -> None:
        """Keep the replies to DATA waiting until `release()`."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol,
            host="127.0.0.1",
            port=0,
            ssl=self._implicit_tls.server_context() if self._implicit_tls else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.release()
        if self._server is not None:
            self._server.close()
            for session in self._sessions:
                if session.transport is not None:
                    session.transport.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _protocol(self) -> SMTP:
        session = SMTP(
            self,
            hostname="smtp.test",
            tls_context=self._starttls.server_context() if self._starttls else None,
            require_starttls=self._require_starttls,
            auth_required=self._credentials is not None,
            # aiosmtpd only knows about STARTTLS; with implicit TLS the session is encrypted too.
            auth_require_tls=self._implicit_tls is None,
            authenticator=self._authenticate if self._credentials else None,
        )
        self._sessions.append(session)
        return session

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self._credentials is not None
        assert isinstance(auth_data, LoginPassword)
        user, password = auth_data.login.decode(), auth_data.password.decode()
        accepted = (user, password) == self._credentials
        self.logins.append((user, accepted))
        # handled=False: aiosmtpd answers a failure itself, with 535.
        return AuthResult(success=accepted, handled=False, auth_data=user if accepted else None)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self._refused:
            return self._refused[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self._data_replies[0]
        if len(self._data_replies) > 1:
            self._data_replies = self._data_replies[1:]
        transport = server.transport
        self.mails.append(
            ReceivedMail(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=bytes(envelope.original_content or b""),
                reply=reply,
                tls=transport is not None and transport.get_extra_info("ssl_object") is not None,
                login=session.auth_data if session.authenticated else None,
            )
        )
        await self._gate.wait()
        return reply
