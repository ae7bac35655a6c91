"""The shared HTTP classification: statuses, Retry-After, transport errors, and no leaks."""

from __future__ import annotations

import base64
import logging
import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from sendonce_server.channels.http import (
    BODY_EXCERPT_CHARS,
    REDACTED,
    Redactor,
    body_excerpt,
    classify_error,
    classify_status,
    forget_http_logs,
    parse_retry_after,
    redact_http_logs,
    url_secrets,
)
from sendonce_server.engine.ports import SendStatus

SECRET_URL = "https://hooks.example.com/services/T0001/B0002/s3cr3tT0k3n?key=qu3ryS3cret"


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_succeeds_with_the_status_as_receipt(status: int) -> None:
    result = classify_status(status, {})

    assert result.status is SendStatus.SUCCESS
    assert result.receipt is not None
    assert result.receipt.reference == f"HTTP {status}"
    assert result.receipt.details == {"status_code": str(status)}


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_408_429_and_5xx_are_retryable(status: int) -> None:
    result = classify_status(status, {})

    assert result.status is SendStatus.RETRYABLE
    assert result.error.startswith(f"HTTP {status}")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 410, 413, 422, 451, 499])
def test_other_4xx_are_permanent(status: int) -> None:
    assert classify_status(status, {}).status is SendStatus.PERMANENT


def test_redirects_are_permanent_and_say_they_are_not_followed() -> None:
    result = classify_status(301, {"Location": "https://elsewhere.example/"})

    assert result.status is SendStatus.PERMANENT
    assert result.error == "HTTP 301 Moved Permanently (redirects are not followed)"
    assert "elsewhere" not in result.error


def test_error_uses_the_standard_reason_phrase_not_the_receivers() -> None:
    assert classify_status(503, {}).error == "HTTP 503 Service Unavailable"
    assert classify_status(599, {}).error == "HTTP 599"


def test_error_carries_a_short_single_line_body_excerpt() -> None:
    body = b"quota\n\texceeded\x00 " + b"x" * 1000

    error = classify_status(429, {}, body).error

    assert error.startswith("HTTP 429 Too Many Requests: quota exceeded xxx")
    assert len(error) <= len("HTTP 429 Too Many Requests: ") + BODY_EXCERPT_CHARS
    assert "\n" not in error
    assert "\x00" not in error


def test_body_excerpt_redacts_secrets_even_when_cut_at_the_limit() -> None:
    token = "s3cr3tT0k3n"
    body = ("a" * (BODY_EXCERPT_CHARS - 5) + token).encode()

    excerpt = body_excerpt(body, Redactor([token]))

    assert excerpt == "a" * (BODY_EXCERPT_CHARS - 5) + REDACTED[:5]


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), (" 120 ", 120.0), ("0", 0.0), ("1.5", 1.5)],
)
def test_retry_after_in_seconds(header: str, expected: float) -> None:
    result = classify_status(503, {"Retry-After": header})

    assert result.status is SendStatus.RETRYABLE
    assert result.retry_after == expected


def test_retry_after_header_name_is_case_insensitive() -> None:
    assert classify_status(429, {"retry-after": "3"}).retry_after == 3.0


def test_retry_after_as_http_date() -> None:
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    header = format_datetime(now + timedelta(seconds=90), usegmt=True)

    assert parse_retry_after(header, now=now.timestamp()) == 90.0


def test_retry_after_in_the_past_means_now() -> None:
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    header = format_datetime(now - timedelta(hours=1), usegmt=True)

    assert parse_retry_after(header, now=now.timestamp()) == 0.0


@pytest.mark.parametrize("header", [None, "", "soon", "-5", "1e3", "Mon, 99 Foo 2030"])
def test_unusable_retry_after_is_ignored(header: str | None) -> None:
    assert parse_retry_after(header) is None


def test_retry_after_is_ignored_on_a_permanent_failure() -> None:
    result = classify_status(400, {"Retry-After": "30"})

    assert result.status is SendStatus.PERMANENT
    assert result.retry_after is None


def _connect_error(cause: BaseException) -> httpx.ConnectError:
    # Built like httpx builds them: a message quoting the URL, the OS error as cause.
    error = httpx.ConnectError(f"All connection attempts failed for {SECRET_URL}")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectTimeout(SECRET_URL), "timed out after 10s while connecting"),
        (httpx.ReadTimeout(SECRET_URL), "timed out after 10s waiting for the response"),
        (httpx.WriteTimeout(SECRET_URL), "timed out after 10s while sending the request"),
        (httpx.PoolTimeout(SECRET_URL), "timed out after 10s waiting for a connection"),
        (TimeoutError(SECRET_URL), "timed out after 10s waiting for the response"),
        (
            _connect_error(ConnectionRefusedError(111, f"refused {SECRET_URL}")),
            "connection failed: connection refused",
        ),
        (
            _connect_error(socket.gaierror(-2, f"unknown {SECRET_URL}")),
            "connection failed: name resolution failed",
        ),
        (
            _connect_error(ssl.SSLCertVerificationError(1, f"bad cert {SECRET_URL}")),
            "connection failed: TLS certificate verification failed",
        ),
        (_connect_error(OSError(SECRET_URL)), "connection failed: unknown error"),
        (
            httpx.RemoteProtocolError(SECRET_URL),
            "the receiver closed the connection or broke the protocol",
        ),
        (httpx.ReadError(SECRET_URL), "network error reading the response: unknown error"),
        (httpx.DecodingError(SECRET_URL), "transport error (DecodingError)"),
    ],
)
def test_transport_errors_are_retryable_with_a_message_of_our_own(
    exc: BaseException, expected: str
) -> None:
    result = classify_error(exc, timeout=10)

    assert result.status is SendStatus.RETRYABLE
    assert result.error == expected


@pytest.mark.parametrize(
    "exc", [httpx.UnsupportedProtocol(SECRET_URL), httpx.InvalidURL(SECRET_URL)]
)
def test_a_url_that_can_never_work_is_permanent(exc: Exception) -> None:
    result = classify_error(exc, timeout=10)

    assert result.status is SendStatus.PERMANENT
    assert "hooks.example.com" not in result.error


def test_fractional_timeouts_are_printed_plainly() -> None:
    assert classify_error(httpx.ReadTimeout(""), timeout=0.25).error.startswith(
        "timed out after 0.25s"
    )


def test_url_secrets_cover_path_query_and_credentials_but_not_the_host() -> None:
    parts = url_secrets("https://user:pa55word@hooks.example.com/hooks/abc%2Fdef123?token=t0k3n123")

    assert {"/hooks/abc%2Fdef123", "abc%2Fdef123", "abc/def123", "t0k3n123", "pa55word"} <= set(
        parts
    )
    assert "hooks.example.com" not in parts
    assert "hooks" not in parts


def test_a_bare_slash_path_is_no_secret() -> None:
    redact = Redactor(url_secrets("https://hooks.example.com/?token=t0k3n123"))

    assert (
        redact("see https://docs.example/e/404 t0k3n123")
        == f"see https://docs.example/e/404 {REDACTED}"
    )


def test_redactor_replaces_raw_and_percent_encoded_forms() -> None:
    redact = Redactor(["a/b c"])

    assert redact("x a/b c y a%2Fb%20c z a/b%20c") == f"x {REDACTED} y {REDACTED} z {REDACTED}"


@pytest.mark.parametrize(
    "echoed",
    [
        "a%2fb%20c",  # lower-case hex
        "a%252Fb%2520c",  # encoded twice
        "a%2Fb+c",  # form encoding
        "a\\/b\\u0020c",  # JSON escapes
        "a\\\\\\/b c",  # JSON inside JSON
        "a&#x2f;b&#32;c",  # HTML references
        "%61/b%20c",  # an encoded letter, mixed with raw ones
    ],
)
def test_redactor_replaces_every_encoding_of_a_secret(echoed: str) -> None:
    assert Redactor(["a/b c"])(f"x {echoed} y") == f"x {REDACTED} y"


def test_redactor_replaces_base64_of_a_whole_secret() -> None:
    redact = Redactor(["user:pa55word"])
    basic = base64.b64encode(b"user:pa55word").decode()

    assert redact(f"Authorization: Basic {basic}") == f"Authorization: Basic {REDACTED}"


@pytest.mark.parametrize("text", ["a/b", "a/b  c", "A/B C", "a%2Fb%2", "a&amp;b c", "%"])
def test_redactor_leaves_text_that_is_not_the_secret(text: str) -> None:
    assert Redactor(["a/b c"])(text) == text


@pytest.mark.parametrize("run", ["\\", "%25", "%", "&#0", "+"])
def test_redactor_stays_linear_on_long_runs(run: str) -> None:
    redact = Redactor(url_secrets("https://u:p%25w@h.example.com/a%25b/c\\d?t=%5C%25%2B%2F%26x"))
    text = run * (64 * 1024 // len(run))

    started = time.perf_counter()
    redact(text)

    assert time.perf_counter() - started < 2.0  # quadratic takes minutes here


def test_http_library_logs_are_scrubbed_while_registered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    redactor = Redactor(url_secrets(SECRET_URL))

    redact_http_logs(redactor)
    logging.getLogger("httpx").info('HTTP Request: %s %s "%s"', "POST", SECRET_URL, "200 OK")
    logging.getLogger("httpcore.http11").debug(f"headers=[(b'Location', b'{SECRET_URL}')]")
    forget_http_logs(redactor)
    logging.getLogger("httpx").info("after: %s", "s3cr3tT0k3n")

    first, second, third = (record.getMessage() for record in caplog.records)
    for message in (first, second):
        assert "s3cr3tT0k3n" not in message
        assert "qu3ryS3cret" not in message
        assert REDACTED in message
    assert third == "after: s3cr3tT0k3n"
