"""Redaction: secrets in a notification replaced with `[REDACTED]` before any channel sees it.

The rule set is data: each `Rule` is a name, a regular expression and, optionally, the group of it
that holds the secret (the rest of the match, e.g. `password=`, is kept so a reader still sees
what was hidden). `DEFAULT_RULES` covers the common shapes; `RedactionConfig` adds rules from the
configuration and can switch default ones off. A `NotificationRedactor` applies a rule set:

    redactor = RedactionConfig().redactor()
    safe = redactor.redact(notification)     # a copy, or the same object when nothing matched

Rules are heuristics over text: they catch secrets in the shapes listed here, not a password
written in prose ("the password is hunter2"). They err towards hiding: a `key: value` under a
YAML `data:` block is hidden even when the document is a ConfigMap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .engine.model import Link, Notification

REDACTED = "[REDACTED]"
SECRET_GROUP = "secret"  # noqa: S105 (a group name)


@dataclass(frozen=True, slots=True)
class Rule:
    """One kind of secret.

    `pattern` finds it; `group` (a name or number) is the part replaced, the whole match when
    None, or the group named `secret` when the pattern has one. With `within`, the rule only
    looks inside the regions that `within` matches (e.g. the lines under a YAML `data:` key).
    `hints` are lowercase substrings of which at least one must occur for the rule to be tried:
    a cheap test that keeps the cost low for text with no secret (empty: always tried).
    """

    name: str
    pattern: str
    group: str | int | None = None
    within: str | None = None
    hints: tuple[str, ...] = ()


_VALUE = r"""(?P<secret>(?<=")[^"\n]+?(?=\\?")|(?<=')[^'\n]+(?=')|[^\s"'`,;&<>{}\\]+)"""
_SECRET_KEYS = (
    r"passw(?:or)?d|secret|token|api[_-]?key|access[_-]?key|client[_-]?secret|private[_-]?key"  # noqa: S105
)
# `user:password@` of a URL; bounded, so that a long run without `@` costs little.
_USERINFO = r"[^\s:/?#@]{0,256}:(?P<secret>[^\s/?#@]{1,256})@"
_YAML_BLOCK_SCALAR = r"[|>][-+0-9]*[ \t]*(?:\n(?:(?P=indent)[ \t]+[^\n]*|[ \t]*(?=\n)))*"

DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        "pem_private_key",
        # Up to the END line, or to the end of the text when the block was cut short.
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
        r"[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
        hints=("private key",),
    ),
    Rule(
        "kubernetes_secret_data",
        # Each value (or block scalar) of the lines indented under `data:` / `stringData:`.
        r"(?m)^(?P<indent>[ \t]+)(?:-[ \t]+)?[\"']?[\w.-]+[\"']?:[ \t]*"
        rf"(?P<secret>{_YAML_BLOCK_SCALAR}|[^\s#|>][^\n]*?(?=[ \t]*$))",
        within=r"(?m)^(?P<head>[ \t]*)(?:data|stringData):[ \t]*\n"
        r"(?P<secret>(?:(?P=head)[ \t]+[^\n]*(?:\n|\Z)|[ \t]*\n)+)",
        hints=("data:",),
    ),
    Rule(
        "database_url",
        r"(?i)\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|mssql|sqlserver"
        rf"|oracle|cockroachdb|clickhouse|amqps?)(?:\+[a-z0-9]+)?://{_USERINFO}",
        hints=("@",),
    ),
    Rule(
        "url_password",
        # Starts only where a scheme can start; bounded parts keep the cost linear.
        rf"(?i)(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{{0,31}}://{_USERINFO}",
        hints=("@",),
    ),
    Rule(
        "authorization_header",
        r"(?i)\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?"
        r"(?:bearer|basic|token|digest|negotiate|apikey)\s+(?P<secret>[^\s\"',;]+)",
        hints=("authorization",),
    ),
    Rule(
        # A token-like word (16+ characters, a digit among them) after "Bearer".
        "bearer_token",
        r"(?i)\bbearer\s+(?P<secret>(?=[\w.~+/-]*\d)[\w.~+/-]{16,}=*)",
        hints=("bearer",),
    ),
    Rule(
        "aws_secret_access_key",
        r"(?i)\baws_?secret_?access_?key[\"']?\s*[:=]\s*[\"']?(?P<secret>[A-Za-z0-9/+=]{40})\b",
        hints=("aws",),
    ),
    Rule(
        # `password=…`, `"api_key": "…"`, `DB_PASSWORD: …`, `x-api-key: …`, `?token=…`.
        "secret_assignment",
        rf"(?i)(?<![\w.-])[\w.-]{{0,40}}?(?:{_SECRET_KEYS})"
        rf"\\?[\"']?[ \t]*[:=][ \t]*\\?[\"']?{_VALUE}",
        hints=("passw", "secret", "token", "key"),
    ),
    Rule(
        "signed_url",
        r"(?i)[?&](?:sig|signature|x-amz-signature|x-amz-security-token|x-goog-signature)="
        r"(?P<secret>[^&#\s\"'<>]+)",
        hints=("sig",),
    ),
    Rule(
        "slack_webhook_url",
        r"(?i)\bhooks\.slack\.com/(?:services|workflows|triggers)/(?P<secret>[\w/-]+)",
        hints=("hooks.slack.com",),
    ),
    Rule(
        "slack_token",
        r"\bxox[abeoprs]-[0-9A-Za-z-]{10,}|\bxapp-\d-[0-9A-Za-z-]{10,}",
        hints=("xox", "xapp-"),
    ),
    Rule(
        "github_token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b",
        hints=("gh", "github_pat_"),
    ),
    Rule(
        "stripe_key",
        r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{10,}\b|\bwhsec_[A-Za-z0-9+/=]{20,}",
        hints=("_live_", "_test_", "whsec_"),
    ),
    Rule("openai_key", r"\bsk-[A-Za-z0-9_-]{20,}", hints=("sk-",)),
    Rule("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])", hints=("aiza",)),
    Rule("sendgrid_key", r"\bSG\.[\w-]{16,}\.[\w-]{16,}", hints=("sg.",)),
    Rule("aws_access_key_id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", hints=("akia", "asia")),
)


class _Compiled:
    __slots__ = ("group", "hints", "name", "pattern", "within", "within_group")

    def __init__(self, rule: Rule) -> None:
        self.name = rule.name
        self.pattern = re.compile(rule.pattern)
        self.group = _group(self.pattern, rule.group)
        self.hints = rule.hints
        self.within = re.compile(rule.within) if rule.within is not None else None
        self.within_group = _group(self.within, None) if self.within is not None else 0

    def apply(self, text: str) -> str:
        if self.within is None:
            return self._sub(text)
        group = self.within_group
        return self.within.sub(
            lambda region: _splice(region, group, self._sub(region.group(group))), text
        )

    def _sub(self, text: str) -> str:
        return self.pattern.sub(lambda match: _splice(match, self.group, REDACTED), text)


def _group(pattern: re.Pattern[str], group: str | int | None) -> str | int:
    if group is None:
        return SECRET_GROUP if SECRET_GROUP in pattern.groupindex else 0
    if isinstance(group, str) and group not in pattern.groupindex:
        raise ValueError(f"the pattern has no group named {group!r}")
    if isinstance(group, int) and not 0 <= group <= pattern.groups:
        raise ValueError(f"the pattern has no group {group}")
    return group


def _splice(match: re.Match[str], group: str | int, replacement: str) -> str:
    """The whole match with `group` replaced (unchanged when that group took no part)."""
    start, end = match.span(group)
    if start < 0:
        return match.group(0)
    offset = match.start()
    whole = match.group(0)
    return whole[: start - offset] + replacement + whole[end - offset :]


class NotificationRedactor:
    """Applies a rule set to text and to every text field of a notification."""

    def __init__(self, rules: Iterable[Rule] = DEFAULT_RULES) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._compiled = tuple(_Compiled(rule) for rule in self.rules)
        self._always = frozenset(i for i, rule in enumerate(self.rules) if not rule.hints)
        self._hints: dict[str, frozenset[int]] = {}
        for i, rule in enumerate(self.rules):
            for hint in rule.hints:
                self._hints[hint] = self._hints.get(hint, frozenset()) | {i}

    def redact_text(self, text: str) -> str:
        """`text` with every secret the rules find replaced by `[REDACTED]`."""
        return self._redact(text, self._candidates(text))

    def redact(self, notification: Notification) -> Notification:
        """A copy with subject, body, metadata values and link titles and URLs redacted; the
        same object when there was nothing to redact."""
        texts = [notification.subject, notification.body, *notification.metadata.values()]
        texts += [part for link in notification.links for part in (link.title, link.url)]
        # One cheap look at all the text decides which rules can match at all.
        if not self._candidates("\n".join(texts)):
            return notification
        subject = self.redact_text(notification.subject)
        body = self.redact_text(notification.body)
        metadata = {key: self.redact_text(value) for key, value in notification.metadata.items()}
        links = tuple(
            Link(self.redact_text(link.title), self.redact_text(link.url))
            for link in notification.links
        )
        if (
            subject == notification.subject
            and body == notification.body
            and metadata == notification.metadata
            and links == notification.links
        ):
            return notification
        return replace(notification, subject=subject, body=body, metadata=metadata, links=links)

    def _candidates(self, text: str) -> frozenset[int]:
        """The rules worth trying on `text`: those without hints, and those whose hint occurs."""
        if not text:
            return frozenset()
        lowered = text.lower()
        found = [rules for hint, rules in self._hints.items() if hint in lowered]
        return self._always.union(*found)

    def _redact(self, text: str, candidates: frozenset[int]) -> str:
        for i in sorted(candidates):  # in the order of the rule set
            text = self._compiled[i].apply(text)
        return text


class RedactionRuleConfig(BaseModel):
    """An extra rule from the configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    pattern: str = Field(min_length=1)
    group: str | int | None = None

    @model_validator(mode="after")
    def _compiles(self) -> Self:
        try:
            compiled = re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"pattern is not a valid regular expression: {exc.msg}") from None
        if compiled.match(""):
            raise ValueError("pattern matches the empty string")
        _group(compiled, self.group)
        return self

    def rule(self) -> Rule:
        return Rule(self.name, self.pattern, self.group)


class RedactionConfig(BaseModel):
    """The `[redaction]` part of the server configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    rules: list[RedactionRuleConfig] = Field(default_factory=list)
    disabled_rules: list[str] = Field(default_factory=list)

    @field_validator("disabled_rules")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        known = {rule.name for rule in DEFAULT_RULES}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(
                f"unknown default rule {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        return names

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        names = [rule.name for rule in self.active_rules()]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"rule name {duplicates[0]!r} is used twice")
        return self

    def active_rules(self) -> Sequence[Rule]:
        """The default rules not disabled, then the configured ones; none when disabled."""
        if not self.enabled:
            return ()
        defaults = [rule for rule in DEFAULT_RULES if rule.name not in self.disabled_rules]
        return [*defaults, *(rule.rule() for rule in self.rules)]

    def redactor(self) -> NotificationRedactor:
        return NotificationRedactor(self.active_rules())
