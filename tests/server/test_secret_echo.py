"""A receiver echoing its secret URL, in any encoding, never gets it into an answer or a log.

A real sidecar delivers to a real HTTP receiver on loopback whose URL is a secret (`url_secret`);
the receiver refuses with a body that repeats the URL (or its Basic credentials) in one encoding.
Then neither `last_error` (of Deliver and AttemptCount, history included) nor any log record holds
the secret in any form a reader could decode.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import html
import json
import logging
import re
from collections.abc import Callable
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import pytest

from sendonce.v1 import delivery_pb2 as pb
from tests.server.conftest import StartSidecar
from tests.support.http_receiver import HttpReceiver, RecordedRequest, Reply

# Distinctive pieces of the secret parts of the URL: none may be seen, whole or in part.
PATH_SECRET = "T0KEN%20in-the-path-9f8e7d"  # a segment with an encoded space
QUERY_SECRET = "qu3ry%2Ft0ken%2B1a2b3c%3D"  # base64 in a query: encoded characters
PASSWORD = "pa55-w0rd-7c6b5a"
PIECES = ("T0KEN", "9f8e7d", "qu3ry", "1a2b3c", "pa55", "7c6b5a")


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda escape: escape.group().lower(), text)


def _go_json(text: str) -> str:
    # encoding/json escapes &, < and >; PHP's json_encode escapes /.
    dumped = json.dumps(text).replace("&", "\\u0026").replace("<", "\\u003c")
    return dumped.replace("/", "\\/")


def _basic_credentials(request: RecordedRequest, url: str) -> str:
    return f"Authorization: {request.headers.get('authorization', '(none)')}"


FORMS: dict[str, Callable[[str], str]] = {
    "raw": lambda url: url,
    "percent-encoded": lambda url: quote(url, safe=""),
    "percent-encoded-lower-case": lambda url: _lower_hex(quote(url, safe="")),
    "query-delimiters-lower-case": lambda url: url.replace("?", "%3f").replace("=", "%3d"),
    "double-percent-encoded": lambda url: quote(quote(url, safe=""), safe=""),
    "double-percent-encoded-lower-case": lambda url: _lower_hex(
        quote(quote(url, safe=""), safe="")
    ),
    "form-encoded-plus-for-space": lambda url: quote_plus(unquote(url)),
    "decoded": unquote,
    "json-escaped-slashes-and-ampersands": _go_json,
    "html-entities": lambda url: html.escape(url).replace("/", "&#x2F;"),
    "base64": lambda url: base64.b64encode(url.encode()).decode(),
    "base64url-unpadded": lambda url: base64.urlsafe_b64encode(url.encode()).decode().rstrip("="),
}


def _readings(text: str) -> list[str]:
    """`text` as a reader could decode it: percent (repeatedly), JSON, HTML and base64 tokens."""
    readings = [text]
    decoded = text
    for _ in range(4):
        decoded = unquote_plus(decoded)
        readings.append(decoded)
    readings.append(decoded.replace("\\/", "/"))
    readings.append(
        re.sub(r"\\+u([0-9a-fA-F]{4})", lambda escape: chr(int(escape.group(1), 16)), decoded)
    )
    readings.append(html.unescape(decoded))
    for token in re.findall(r"[A-Za-z0-9+/_-]{8,}={0,2}", text):
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            with contextlib.suppress(binascii.Error, ValueError):
                readings.append(decode(token + "=" * (-len(token) % 4)).decode(errors="replace"))
    return readings


def _leaks(text: str) -> list[str]:
    return sorted({piece for reading in _readings(text) for piece in PIECES if piece in reading})


def test_the_leak_check_can_see_every_form() -> None:
    url = f"http://u:{PASSWORD}@127.0.0.1:1/hooks/{PATH_SECRET}?a=1&token={QUERY_SECRET}"
    for name, form in FORMS.items():
        assert _leaks(f"HTTP 400 Bad Request: no hook {form(url)} here"), name


@pytest.mark.parametrize("form", [*FORMS, "basic-credentials"])
async def test_an_echoed_secret_url_reaches_no_answer_and_no_log(
    start_sidecar: StartSidecar,
    http_receiver: HttpReceiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    form: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    host = http_receiver.url.removeprefix("http://")
    url = f"http://svc-acct:{PASSWORD}@{host}/hooks/{PATH_SECRET}?a=1&token={QUERY_SECRET}"
    monkeypatch.setenv("HOOK_URL", url)

    def echo(request: RecordedRequest) -> Reply:
        text = _basic_credentials(request, url) if form == "basic-credentials" else FORMS[form](url)
        return Reply(400, body=f"no hook at {text}; check the URL")

    http_receiver.respond_with(echo)
    receivers = {
        "receivers": [
            {"name": "hook", "type": "webhook", "settings": {"url_secret": {"env": "HOOK_URL"}}}
        ]
    }
    sidecar = await start_sidecar(receivers)
    request = pb.DeliverRequest(
        uid="uid-1", channel="hook", notification=pb.Notification(subject="Deploy failed")
    )

    answer = await sidecar.stub.Deliver(request, timeout=10)
    count = await sidecar.stub.AttemptCount(
        pb.AttemptCountRequest(uid="uid-1", channel="hook"), timeout=10
    )

    # The receiver was reached with the secret URL and echoed it: the checks below have a target.
    assert unquote(http_receiver.requests[0].query) == unquote(f"a=1&token={QUERY_SECRET}")
    assert answer.outcome == pb.OUTCOME_FAILED_PERMANENT
    assert answer.last_error.startswith("HTTP 400 Bad Request: no hook at ")
    assert "[redacted]" in answer.last_error
    answers = [answer.last_error, count.last_error, *(a.error for a in count.history)]
    assert [_leaks(text) for text in answers] == [[]] * len(answers)
    assert caplog.records
    logged = [f"{record.getMessage()} {vars(record)}" for record in caplog.records]
    assert [(text, _leaks(text)) for text in logged if _leaks(text)] == []
