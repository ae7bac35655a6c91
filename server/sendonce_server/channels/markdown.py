"""A notification body's Markdown, as Slack `mrkdwn` or as HTML (for email).

Both parse with markdown-it-py (CommonMark plus `~~strikethrough~~`), with raw HTML off: tags in
a body are shown as text, never passed through, and unsafe link schemes (`javascript:`, ...) are
not turned into links.
"""

from __future__ import annotations

from collections.abc import Sequence

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

_parser = MarkdownIt("commonmark", {"html": False}).enable("strikethrough")
# What each inline emphasis becomes in mrkdwn.
_MRKDWN_MARKS = {"strong": "*", "em": "_", "s": "~"}
_INDENT = "    "


def to_html(markdown: str) -> str:
    """The body as an HTML fragment (raw HTML in it is escaped)."""
    html: str = _parser.render(markdown)
    return html


def to_mrkdwn(markdown: str) -> str:
    """The body as Slack mrkdwn: *bold*, _italic_, ~strike~, `code`, <url|text>, lists, quotes."""
    return _blocks(SyntaxTreeNode(_parser.parse(markdown)).children, "\n\n").strip("\n")


def escape_mrkdwn(text: str) -> str:
    """Slack's three control characters, escaped as Slack asks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _blocks(nodes: Sequence[SyntaxTreeNode], separator: str) -> str:
    return separator.join(_block(node) for node in nodes)


def _block(node: SyntaxTreeNode) -> str:
    if node.type in ("paragraph", "heading"):
        text = _inline(node.children[0].children) if node.children else ""
        return f"*{text}*" if node.type == "heading" and text else text
    if node.type in ("bullet_list", "ordered_list"):
        return _list(node)
    if node.type == "blockquote":
        inner = _blocks(node.children, "\n")
        return "\n".join(f"> {line}" if line else ">" for line in inner.split("\n"))
    if node.type in ("fence", "code_block"):
        return f"```\n{escape_mrkdwn(node.content.rstrip(chr(10)))}\n```"
    if node.type == "hr":
        return "───"
    return escape_mrkdwn(node.content.rstrip("\n"))  # html_block (shown as text), anything new


def _list(node: SyntaxTreeNode) -> str:
    ordered = node.type == "ordered_list"
    number = int(node.attrs.get("start", 1)) if ordered else 0
    lines: list[str] = []
    for offset, item in enumerate(node.children):
        marker = f"{number + offset}." if ordered else "•"
        first, *rest = _blocks(item.children, "\n").split("\n")
        lines.append(f"{marker} {first}".rstrip())
        lines += [f"{_INDENT}{line}" if line else "" for line in rest]
    return "\n".join(lines)


def _inline(nodes: Sequence[SyntaxTreeNode]) -> str:
    parts: list[str] = []
    for node in nodes:
        if node.type in _MRKDWN_MARKS:
            mark = _MRKDWN_MARKS[node.type]
            parts.append(f"{mark}{_inline(node.children)}{mark}")
        elif node.type == "code_inline":
            parts.append(f"`{escape_mrkdwn(node.content)}`")
        elif node.type == "link":
            parts.append(_link(str(node.attrs["href"]), _inline(node.children)))
        elif node.type == "image":
            alt = escape_mrkdwn(node.content)  # the alt text, flattened
            parts.append(_link(str(node.attrs["src"]), alt))
        elif node.type in ("softbreak", "hardbreak"):
            parts.append("\n")
        else:  # text, html_inline (shown as text)
            parts.append(escape_mrkdwn(node.content))
    return "".join(parts)


def _link(url: str, text: str) -> str:
    url = escape_mrkdwn(url)
    # `|` ends the URL in Slack's syntax; markdown-it has percent-encoded it already.
    return f"<{url}|{text}>" if text and text != url else f"<{url}>"
