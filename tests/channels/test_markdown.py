"""Markdown bodies rendered as Slack mrkdwn and as HTML."""

from __future__ import annotations

import pytest

from sendonce_server.channels.markdown import escape_mrkdwn, to_html, to_mrkdwn


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("plain text", "plain text"),
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("~~gone~~", "~gone~"),
        ("`x < y`", "`x &lt; y`"),
        (
            "[runbook](https://wiki.example/run?a=1&b=2)",
            "<https://wiki.example/run?a=1&amp;b=2|runbook>",
        ),
        ("<https://example.com/x>", "<https://example.com/x>"),
        ("![graph](https://g.example/p.png)", "<https://g.example/p.png|graph>"),
        ("# Disk full", "*Disk full*"),
        ("a & b <c>", "a &amp; b &lt;c&gt;"),
        ("<b>raw html</b>", "&lt;b&gt;raw html&lt;/b&gt;"),
        ("line one\nline two", "line one\nline two"),
        ("first\n\nsecond", "first\n\nsecond"),
        ("- one\n- two", "• one\n• two"),
        ("3. three\n4. four", "3. three\n4. four"),
        ("- one\n  - nested\n- two", "• one\n    • nested\n• two"),
        ("1. one\n   continued", "1. one\n    continued"),
        ("> quoted\n> more", "> quoted\n> more"),
        ("```python\nif a < b:\n    pass\n```", "```\nif a &lt; b:\n    pass\n```"),
        ("    indented code", "```\nindented code\n```"),
        ("above\n\n---\n\nbelow", "above\n\n───\n\nbelow"),
        ("", ""),
    ],
)
def test_to_mrkdwn(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn


def test_unsafe_link_schemes_stay_text() -> None:
    assert to_mrkdwn("[click](javascript:alert(1))") == "[click](javascript:alert(1))"


def test_a_whole_message() -> None:
    markdown = (
        "## Rollout stuck\n\n"
        "Deployment **payments-api** is at _3/10_ pods.\n\n"
        "1. Check the [dashboard](https://grafana.example/d/1)\n"
        "2. Roll back with `kubectl rollout undo`\n"
    )

    assert to_mrkdwn(markdown) == (
        "*Rollout stuck*\n\n"
        "Deployment *payments-api* is at _3/10_ pods.\n\n"
        "1. Check the <https://grafana.example/d/1|dashboard>\n"
        "2. Roll back with `kubectl rollout undo`"
    )


def test_escape_mrkdwn() -> None:
    assert escape_mrkdwn("<@U123> & <!here>") == "&lt;@U123&gt; &amp; &lt;!here&gt;"


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("**bold** _it_", "<p><strong>bold</strong> <em>it</em></p>\n"),
        (
            "[a](https://x.example/?q=1&r=2)",
            '<p><a href="https://x.example/?q=1&amp;r=2">a</a></p>\n',
        ),
        ("- one\n- two", "<ul>\n<li>one</li>\n<li>two</li>\n</ul>\n"),
        ("~~gone~~", "<p><s>gone</s></p>\n"),
        ("<script>alert(1)</script>", "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>\n"),
        ("[x](javascript:alert(1))", "<p>[x](javascript:alert(1))</p>\n"),
    ],
)
def test_to_html(markdown: str, html: str) -> None:
    assert to_html(markdown) == html
