"""Redaction: secrets in a notification replaced with `[REDACTED]` before any channel sees it.

The rule set is data: each `Rule` is a name, a regular expression and, optionally, the group of it
that holds the secret (the rest of the match, e.g. `password=`, is kept so a reader still sees
what was hidden). `DEFAULT_RULES` covers the common shapes; `RedactionConfig` adds rules from the
configuration and can switch default ones off. A `Redactor` applies a rule set:

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
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .engine.model import Link, Notification

REDACTED = "[REDACTED]"
SECRET_GROUP = "secret"  # noqa: S105 (a group name)
Target = Literal["text", "metadata_key"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One kind of secret.

    `pattern` finds it; `group` (a name or number) is the part replaced, the whole match when
    None, or the group named `secret` when the pattern has one. With `within`, the rule only
    looks inside the regions that `within` matches (e.g. the lines under a YAML `data:` key).
    `hints` are lowercase substrings of which at least one must occur for the rule to be tried:
    a cheap test that keeps the cost low for text with no secret (empty: always tried).
    With `target="metadata_key"` the pattern is searched in each metadata key instead, and the
    whole value of a key it finds is replaced (the key stays): `{"db_password": "…"}`.
    """

    name: str
    pattern: str
    group: str | int | None = None
    within: str | None = None
    hints: tuple[str, ...] = ()
    target: Target = "text"


# Key names that say their value is a secret: `DB_PASSWORD`, `x-api-key`, `DJANGO_SECRET_KEY`.
# A key must end with one of them (`password_policy`, `max_tokens`, `secretName` do not).
_SECRET_NAMES = (
    r"passw(?:or)?d|pwd|passphrase|secret|token|credentials?|api[_-]?key|access[_-]?key"  # noqa: S105
    r"|(?:secret|signing|encryption|private|master)[_-]?key|client[_-]?secret"
)
# One word of an unquoted value: a backslash counts, unless it escapes a quote.
_WORD = r"""(?:[^\s"'`,;&<>{}\\]|\\(?!["']))+"""
# The value after `key: `, `key=`, `"key": `: the whole of a quoted value, escapes included, to
# its closing quote (or the end of the line when it has none); unquoted, to the end of the line
# after a space (`password: correct horse battery staple`, stopping at `,` `;` `&` a quote, a
# bracket or a ` #` comment), or one word right after the separator (`password=hunter2 next`).
_VALUE = (
    r"(?P<secret>"
    # Inside a JSON string inside JSON (`{\"token\":\"x y\"}`): to the next unescaped `\"`.
    r"""(?<=\\")(?:[^"\\\n]|\\\\\\"|\\[^"\n])+?(?=\\")"""
    r"""|(?<=")(?:[^"\\\n]|\\.)+(?=["\n]|\Z)"""
    r"""|(?<=')(?:[^'\\\n]|\\.|'')+(?=['\n]|\Z)"""
    rf"|(?<=[ \t]){_WORD}(?:[ \t]+(?!#){_WORD})*"
    rf"|{_WORD}"
    r")"
)
# `user:password@` of a URL; bounded, so that a long run without `@` costs little.
_USERINFO = r"[^\s:/?#@]{0,256}:(?P<secret>[^\s/?#@]{1,256})@"
# The same, percent-encoded once or twice (`https%3A%2F%2Fuser%3Apass%40host`).
_ENCODED_USERINFO = (
    r"(?:[^\s%:/?#@]|%(?!(?:25)?(?:3A|40))[0-9A-F]{2}){0,256}%(?:25)?3A"
    r"(?P<secret>(?:[^\s%:/?#@]|%(?!(?:25)?40)[0-9A-F]{2}){1,256})%(?:25)?40"
)
_JSON_KIND_SECRET = r'\\?"kind\\?"\s*:\s*\\?"Secret\\?"'  # noqa: S105 (a pattern)
_YAML_BLOCK_SCALAR = r"[|>][-+0-9]*[ \t]*(?:\n(?:(?P=indent)[ \t]+[^\n]*|[ \t]*(?=\n)))*"

DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        "pem_private_key",
        # Up to the END line, or to the end of the text when the block was cut short.
        r"(?i)-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
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
        "kubernetes_secret_json",
        # Each value of a JSON `"data": {…}` / `"stringData": {…}` object beside `"kind":
        # "Secret"` (`kubectl get secret -o json`), also inside the JSON string of the
        # `last-applied-configuration` annotation. Other `"data"` objects (API answers) stay.
        r'\\?"[^"\\\n]+\\?"[ \t]*:[ \t]*\\?"' + _VALUE,
        # (Up to the next `"kind"` only: a run of them costs linear time, not quadratic.)
        within=rf"(?:({_JSON_KIND_SECRET})(?:(?!{_JSON_KIND_SECRET})[^{{}}])*)?"
        r'\\?"(?:data|stringData)\\?"\s*:\s*\{(?P<secret>[^{}]*)\}'
        rf"(?(1)|(?=[^{{}}]*{_JSON_KIND_SECRET}))",
        hints=('data"', 'data\\"'),
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
        "url_password_encoded",
        rf"(?i)(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{{0,31}}%(?:25)?3A%(?:25)?2F%(?:25)?2F"
        rf"{_ENCODED_USERINFO}",
        hints=("%40", "%2540"),
    ),
    Rule(
        "authorization_header",
        r"(?i)\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?"
        r"(?:bearer|basic|token|digest|negotiate|apikey)\s+(?P<secret>[^\s\"',;]+)",
        hints=("authorization",),
    ),
    Rule(
        # Every value of a `Cookie:` or `Set-Cookie:` header; the cookie names stay.
        "cookie_header",
        r"""=(?P<secret>[^;\s"'\\,]+)""",
        within=r"""(?i)\b(?:set-)?cookie\\?["']?[ \t]*:[ \t]*(?P<secret>[^\r\n]+)""",
        hints=("cookie",),
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
        # `password=…`, `"api_key": "…"`, `DB_PASSWORD: …`, `x-api-key: …`, `?token=…`,
        # `password => …`, `secret := …`.
        "secret_assignment",
        rf"(?i)(?<![\w.-])[\w.-]{{0,40}}?(?:{_SECRET_NAMES})"
        rf"\\?[\"']?[ \t]*(?::=|=>|[:=])[ \t]*\\?[\"']?{_VALUE}",
        hints=("passw", "pwd", "passphrase", "secret", "token", "credential", "key"),
    ),
    Rule(
        # The same, percent-encoded (a query inside a query, a form body): `password%3Dhunter2`.
        "secret_assignment_encoded",
        rf"(?i)(?<![\w.-])[\w.-]{{0,40}}?(?:{_SECRET_NAMES})%(?:25)?3[AD](?:%(?:25)?20|\+)*"
        r"(?P<secret>(?:[^\s%&\"'<>]|%(?!(?:25)?26)[0-9A-F]{2})+)",
        hints=("%3d", "%3a", "%253d", "%253a"),
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
    Rule(
        "secret_metadata_key",
        rf"(?i)(?:{_SECRET_NAMES}|authorization|cookie)\s*$",
        target="metadata_key",
        hints=("pass", "pwd", "secret", "token", "credential", "key", "authorization", "cookie"),
    ),
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


def _any_of(hints: Sequence[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(map(re.escape, hints)), re.IGNORECASE) if hints else None


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


_KEY_VERDICTS = 4096  # metadata keys whose verdict a Redactor remembers


class Redactor:
    """Applies a rule set to text and to every text field of a notification."""

    def __init__(self, rules: Iterable[Rule] = DEFAULT_RULES) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        text_rules = [rule for rule in self.rules if rule.target == "text"]
        # Per key rule: its pattern, and its hints as one case-blind search (None: no hints).
        self._key_rules = tuple(
            (re.compile(rule.pattern), _any_of(rule.hints))
            for rule in self.rules
            if rule.target == "metadata_key"
        )
        self._key_verdicts: dict[str, bool] = {}
        self._compiled = tuple(_Compiled(rule) for rule in text_rules)
        self._always = frozenset(i for i, rule in enumerate(text_rules) if not rule.hints)
        self._hints: dict[str, frozenset[int]] = {}
        for i, rule in enumerate(text_rules):
            for hint in rule.hints:
                self._hints[hint] = self._hints.get(hint, frozenset()) | {i}

    def redact_text(self, text: str) -> str:
        """`text` with every secret the rules find replaced by `[REDACTED]`."""
        return self._redact(text, self._candidates(text))

    def redact(self, notification: Notification) -> Notification:
        """A copy with subject, body, metadata values and link titles and URLs redacted, and
        the whole value of each metadata key that names a secret; the same object when there
        was nothing to redact."""
        texts = [notification.subject, notification.body, *notification.metadata.values()]
        texts += [part for link in notification.links for part in (link.title, link.url)]
        secret_keys = {
            key
            for key, value in notification.metadata.items()
            if value and self._key_rules and self._names_a_secret(key)
        }
        # One cheap look at all the text decides which rules can match at all.
        if not secret_keys and not self._candidates("\n".join(texts)):
            return notification
        subject = self.redact_text(notification.subject)
        body = self.redact_text(notification.body)
        metadata = {
            key: REDACTED if key in secret_keys else self.redact_text(value)
            for key, value in notification.metadata.items()
        }
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

    def _names_a_secret(self, key: str) -> bool:
        # Controllers send the same few keys again and again: remember the verdicts.
        verdict = self._key_verdicts.get(key)
        if verdict is None:
            verdict = any(
                pattern.search(key)
                for pattern, hints in self._key_rules
                if hints is None or hints.search(key)
            )
            if len(self._key_verdicts) >= _KEY_VERDICTS:
                self._key_verdicts.clear()
            self._key_verdicts[key] = verdict
        return verdict

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
    target: Target = "text"

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
        return Rule(self.name, self.pattern, self.group, target=self.target)


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

    def redactor(self) -> Redactor:
        return Redactor(self.active_rules())
