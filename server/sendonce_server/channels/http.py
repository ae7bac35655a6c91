"""How every HTTP channel posts a request and turns the answer into a SendResult.

One shared rule, like Alertmanager's `notify/util.go` Retrier.Check: 2xx succeeds; 408, 429 and
5xx are worth a retry; any other status is permanent. Transport errors are retryable, except a URL
that can never work. Error texts are built here from safe parts only (status code, the standard
reason phrase, a redacted body excerpt, an errno): never from `str(exc)`, which for httpx usually
contains the URL, and a webhook URL is often a credential. `HttpEndpoint` is the one way the HTTP
channels (webhook, slack, teams, pagerduty) talk to their receiver, so they all obey these rules.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import os
import re
import socket
import ssl
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx

from .. import __version__
from ..engine.model import Receipt
from ..engine.ports import SendResult

REDACTED = "[redacted]"
# Enough of the body for a person to see why the receiver refused; more only adds leak surface.
BODY_EXCERPT_CHARS = 200
# Channels read at most this much of a response body.
BODY_READ_LIMIT = 1024
RETRYABLE_STATUSES = frozenset({408, 429})
# URL parts shorter than this are words like "hooks" or "v1", not credentials.
_MIN_SECRET_PART = 6
_DELAY_SECONDS = re.compile(r"\d+(\.\d+)?")


class Redactor:
    """Replaces known secret strings with `[redacted]`, in whatever encoding they come back.

    A receiver may echo its URL, or the credentials it was sent, in its error body, encoded as
    its framework likes. So the text is first decoded, one unit at a time, keeping where each
    unit came from, and the decoded secrets are looked for in the decoded text; each place
    found is replaced in the text as it was. A unit is a character as itself, or:

    - percent-encoded with upper- or lower-case hex digits, any number of times over (`%2F`,
      `%2f`, `%252F`); `+` and a space count as the same character (form encoding);
    - a JSON escape: `\\/`, or `\\u002f` in either case, behind any number of backslashes (JSON
      inside JSON);
    - an HTML character reference: `&#47;`, `&#x2F;`, and `&amp;` `&lt;` `&gt;` `&quot;` `&apos;`.

    Encodings can mix within one secret. Besides, the standard and URL-safe base64 of each whole
    secret of at least 6 characters, padded or not (a `Basic` credential echoed back). Not
    covered: base64 of a longer text in which the secret starts at another offset, hex or any
    other encoding, and a secret written in another letter case. Decoding and searching take
    time linear in the text.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        # The secrets decoded as a text is (a raw and a percent-decoded form become one), and
        # their base64 without padding: a padding after one is hidden with it.
        plain: set[bytes] = set()
        padded: set[bytes] = set()
        for secret in secrets:
            if not secret:
                continue
            plain.add(_decoded(secret)[0])
            if len(secret) >= _MIN_SECRET_PART:
                data = secret.encode()
                for encoded in {base64.b64encode(data), base64.urlsafe_b64encode(data)}:
                    padded.add(_decoded(encoded.decode().rstrip("="))[0])
        self._needles = tuple((needle, needle in padded) for needle in plain | padded if needle)

    def __call__(self, text: str) -> str:
        if not self._needles or not text:
            return text
        if text.isascii() and "%" not in text and "\\" not in text and "&" not in text:
            # Nothing to decode (the common case): byte i is character i.
            decoded = text.encode().replace(b"+", b" ")
            starts: Sequence[int] = range(len(text))
            ends: Sequence[int] = range(1, len(text) + 1)
        else:
            decoded, starts, ends = _decoded(text)
        spans: list[tuple[int, int]] = []
        for needle, base64_padded in self._needles:
            found = decoded.find(needle)
            while found >= 0:
                last = found + len(needle) - 1
                while base64_padded and last + 1 < len(decoded) and decoded[last + 1] == _PADDING:
                    last += 1
                spans.append((starts[found], ends[last]))
                found = decoded.find(needle, found + 1)
        if not spans:
            return text
        # Places that overlap or touch (a whole URL and its parts) become one `[redacted]`.
        spans.sort()
        pieces, kept_to = [text[: spans[0][0]], REDACTED], spans[0][1]
        for start, end in spans[1:]:
            if start > kept_to:
                pieces += [text[kept_to:start], REDACTED]
            kept_to = max(kept_to, end)
        pieces.append(text[kept_to:])
        return "".join(pieces)


# One encoded unit of a text: a percent escape (repeated), a JSON escape, an HTML reference.
# A run of backslashes counts from its start only, so that a long run costs linear time.
_ENCODED_UNIT = re.compile(
    r"%(?:25)*(?P<percent>[0-9A-Fa-f]{2})"
    r"|(?<!\\)\\++(?:[uU](?P<json>[0-9A-Fa-f]{4})|(?P<slash>/))"
    r"|&#(?:(?P<decimal>[0-9]{1,7})|[xX](?P<hex>[0-9A-Fa-f]{1,6}));"
    r"|&(?P<name>amp|lt|gt|quot|apos);"
)
_PADDING = ord("=")
_HTML_NAMES = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def _decoded(text: str) -> tuple[bytes, list[int], list[int]]:
    """`text` decoded unit by unit to UTF-8 bytes, `+` as a space; and for each byte, where the
    unit it came from starts and ends in `text`."""
    decoded = bytearray()
    starts: list[int] = []
    ends: list[int] = []

    def keep(start: int, end: int) -> None:
        chunk = text[start:end]
        if chunk.isascii():
            decoded.extend(chunk.encode())
            starts.extend(range(start, end))
            ends.extend(range(start + 1, end + 1))
            return
        for index, char in enumerate(chunk, start):
            data = char.encode(errors="surrogatepass")
            decoded.extend(data)
            starts.extend([index] * len(data))
            ends.extend([index + 1] * len(data))

    position = 0
    for unit in _ENCODED_UNIT.finditer(text):
        keep(position, unit.start())
        data = _unit_bytes(unit)
        decoded.extend(data)
        starts.extend([unit.start()] * len(data))
        ends.extend([unit.end()] * len(data))
        position = unit.end()
    keep(position, len(text))
    return bytes(decoded).replace(b"+", b" "), starts, ends


def _unit_bytes(unit: re.Match[str]) -> bytes:
    if (percent := unit["percent"]) is not None:
        return bytes([int(percent, 16)])
    if unit["slash"] is not None:
        return b"/"
    if (name := unit["name"]) is not None:
        return _HTML_NAMES[name].encode()
    digits, base = next(
        (unit[group], base)
        for group, base in (("json", 16), ("decimal", 10), ("hex", 16))
        if unit[group] is not None
    )
    code = int(digits, base)
    return chr(code).encode(errors="surrogatepass") if code < 0x110000 else b""


def url_secrets(url: str) -> tuple[str, ...]:
    """The parts of a secret URL to hide: everything but scheme, host and port.

    Hosts are not treated as secret: they travel in clear in DNS and TLS anyway.
    """
    parts = urlsplit(url)
    found = [url, parts.path, parts.query, parts.fragment, parts.username, parts.password]
    found += [segment for segment in parts.path.split("/") if len(segment) >= _MIN_SECRET_PART]
    found += [
        value
        for _, value in parse_qsl(parts.query, keep_blank_values=True)
        if len(value) >= _MIN_SECRET_PART
    ]
    found += [unquote(part) for part in found if part]
    if parts.username is not None and parts.password is not None:
        # As sent in a `Basic` authorization header, which a receiver may echo back.
        found.append(f"{unquote(parts.username)}:{unquote(parts.password)}")
    # A path of slashes alone ("/") hides nothing, and would blank every "/" of an error.
    return tuple(sorted({part for part in found if part and part.strip("/")}))


# httpx logs each request's full URL at INFO; httpcore logs response headers at DEBUG.
_HTTP_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


class _HttpLogRedaction(logging.Filter):
    """Scrubs the secrets of registered redactors from the HTTP libraries' own log records."""

    def __init__(self) -> None:
        super().__init__()
        self.redactors: weakref.WeakSet[Redactor] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        redactors = list(self.redactors)
        if redactors:
            message = record.getMessage()
            redacted = message
            for redactor in redactors:
                redacted = redactor(redacted)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


_http_log_redaction = _HttpLogRedaction()


def redact_http_logs(redactor: Redactor) -> None:
    """Scrub this redactor's secrets from httpx and httpcore log records until forgotten."""
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _http_log_redaction not in logger.filters:
            logger.addFilter(_http_log_redaction)
    _http_log_redaction.redactors.add(redactor)


def forget_http_logs(redactor: Redactor) -> None:
    """Stop scrubbing this redactor's secrets (a closed channel no longer needs it)."""
    _http_log_redaction.redactors.discard(redactor)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC too
        when = when.replace(tzinfo=UTC)
    seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def classify_status(
    status_code: int,
    headers: Mapping[str, str],
    body: bytes = b"",
    *,
    redactor: Redactor | None = None,
) -> SendResult:
    """The result for an HTTP response; `body` is (a prefix of) the response body."""
    if 200 <= status_code < 300:
        return SendResult.success(Receipt(f"HTTP {status_code}", {"status_code": str(status_code)}))
    error = _status_text(status_code)
    if 300 <= status_code < 400:
        error += " (redirects are not followed)"
    excerpt = body_excerpt(body, redactor)
    if excerpt:
        error = f"{error}: {excerpt}"
    if status_code in RETRYABLE_STATUSES or 500 <= status_code < 600:
        retry_after = next(
            (value for name, value in headers.items() if name.lower() == "retry-after"), None
        )
        return SendResult.retryable(error, retry_after=parse_retry_after(retry_after))
    return SendResult.permanent(error)


def body_excerpt(body: bytes, redactor: Redactor | None = None) -> str:
    """A short, printable, single-line, redacted excerpt of a response body."""
    text = body[:BODY_READ_LIMIT].decode("utf-8", errors="replace")
    text = "".join(char if char.isprintable() else " " for char in text)
    if redactor is not None:
        # Before truncating, so that a secret cut in half at the limit is still found whole.
        text = redactor(text)
    return " ".join(text[:BODY_EXCERPT_CHARS].split())


def classify_error(exc: BaseException, *, timeout: float) -> SendResult:
    """The result for a transport error (an httpx exception, or TimeoutError of the attempt)."""
    if isinstance(exc, httpx.ConnectTimeout):
        return SendResult.retryable(f"timed out after {timeout:g}s while connecting")
    if isinstance(exc, httpx.WriteTimeout):
        return SendResult.retryable(f"timed out after {timeout:g}s while sending the request")
    if isinstance(exc, httpx.PoolTimeout):
        return SendResult.retryable(f"timed out after {timeout:g}s waiting for a connection")
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return SendResult.retryable(f"timed out after {timeout:g}s waiting for the response")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return SendResult.permanent("invalid URL: the scheme must be http or https")
    if isinstance(exc, httpx.ProxyError):
        return SendResult.retryable(f"proxy error: {root_cause(exc)}")
    if isinstance(exc, httpx.ConnectError):
        return SendResult.retryable(f"connection failed: {root_cause(exc)}")
    if isinstance(exc, httpx.RemoteProtocolError):
        return SendResult.retryable("the receiver closed the connection or broke the protocol")
    if isinstance(exc, httpx.ReadError):
        return SendResult.retryable(f"network error reading the response: {root_cause(exc)}")
    if isinstance(exc, httpx.WriteError):
        return SendResult.retryable(f"network error sending the request: {root_cause(exc)}")
    return SendResult.retryable(f"transport error ({type(exc).__name__})")


def _status_text(status_code: int) -> str:
    # The standard phrase, not the receiver's: that one is free text it chose.
    try:
        return f"HTTP {status_code} {HTTPStatus(status_code).phrase}"
    except ValueError:
        return f"HTTP {status_code}"


def root_cause(exc: BaseException) -> str:
    """A safe description of the deepest cause: from its errno or type, never its message."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    description = "unknown error"
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, socket.gaierror):
            return "name resolution failed"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return "TLS certificate verification failed"
        if isinstance(cause, ssl.SSLError):
            description = "TLS error"
        elif isinstance(cause, OSError) and cause.errno is not None:
            return os.strerror(cause.errno).lower()
        cause = cause.__cause__ or cause.__context__
    return description


def url_problem(url: str) -> str | None:
    """Why `url` cannot be an HTTP target, in words that do not repeat it; None if it can."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "is not a valid URL"
    if parsed.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parsed.host:
        return "must name a host"
    return None


@dataclass(frozen=True, slots=True)
class HttpReply:
    """What came back: status, headers, and the start of the body (at most BODY_READ_LIMIT)."""

    status_code: int
    headers: httpx.Headers
    body: bytes


class HttpEndpoint:
    """One receiver URL behind one pooled httpx client: posts, bounds the attempt, classifies.

    `secrets` are the strings to keep out of errors and of httpx's logs (see `url_secrets`).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        secrets: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._url = url
        self._timeout = timeout
        secrets = tuple(secrets)
        self.redactor = Redactor(secrets)
        self._scrubbing = any(secrets)
        if self._scrubbing:
            redact_http_logs(self.redactor)
        self._client = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            headers={**(headers or {}), "User-Agent": f"sendonce/{__version__}"},
        )

    async def post(
        self, content: bytes, headers: Mapping[str, str]
    ) -> tuple[SendResult, HttpReply | None]:
        """The classified result, and the reply when one came back (None on a transport error)."""
        try:
            # httpx bounds each phase; this bounds the whole attempt, slow trickles included.
            async with asyncio.timeout(self._timeout):
                reply = await self._exchange(content, headers)
        except (TimeoutError, httpx.HTTPError, httpx.InvalidURL) as exc:
            return classify_error(exc, timeout=self._timeout), None
        result = classify_status(
            reply.status_code, reply.headers, reply.body, redactor=self.redactor
        )
        return result, reply

    async def _exchange(self, content: bytes, headers: Mapping[str, str]) -> HttpReply:
        request = self._client.build_request("POST", self._url, content=content, headers=headers)
        response = await self._client.send(request, stream=True)
        try:
            # A short body read to its end leaves the connection reusable; a long one is cut.
            start = b""
            async for chunk in response.aiter_bytes():
                start += chunk
                if len(start) >= BODY_READ_LIMIT:
                    break
            return HttpReply(response.status_code, response.headers, start[:BODY_READ_LIMIT])
        finally:
            await response.aclose()

    async def close(self) -> None:
        await self._client.aclose()
        if self._scrubbing:
            forget_http_logs(self.redactor)
