"""Redaction rules, pattern by pattern (what they hide and what they leave), and notifications."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sendonce_server.engine.model import Link, Notification, Priority
from sendonce_server.redaction import (
    DEFAULT_RULES,
    REDACTED,
    RedactionConfig,
    Redactor,
    Rule,
)

R = REDACTED
redactor = Redactor()


def _only(name: str) -> Redactor:
    (rule,) = [rule for rule in DEFAULT_RULES if rule.name == name]
    return Redactor([rule])


CORPUS = tomllib.loads((Path(__file__).parent / "redaction_corpus.toml").read_text())["case"]


def _case_id(case: dict[str, Any]) -> str:
    shown = case.get("text") or repr(case.get("metadata"))
    return f"{case.get('rule', 'none')}:{shown[:40]}"


@pytest.mark.parametrize("case", CORPUS, ids=[_case_id(case) for case in CORPUS])
def test_corpus(case: dict[str, Any]) -> None:
    """The default rules give the expected result (none: the input as it was); the case's rule
    alone gives the same; the hints prefilter skips no rule that would have matched; a second
    pass changes nothing. A text is also checked as a notification's body."""
    rule = case.get("rule")
    alone = _only(rule) if rule is not None else None
    if "text" in case:
        text, expected = case["text"], case.get("expected", case["text"])
        assert redactor.redact_text(text) == expected
        every_rule = frozenset(range(len(redactor._compiled)))
        assert redactor._redact(text, every_rule) == expected
        assert redactor.redact_text(expected) == expected
        if alone is not None:
            assert alone.redact_text(text) == expected
        assert redactor.redact(Notification("s", body=text)).body == expected
    else:
        metadata = case["metadata"]
        expected_metadata = case.get("expected_metadata", metadata)
        assert redactor.redact(Notification("s", metadata=metadata)).metadata == expected_metadata
        if alone is not None:
            assert alone.redact(Notification("s", metadata=metadata)).metadata == expected_metadata


def test_the_corpus_proves_every_default_rule() -> None:
    named = {case["rule"] for case in CORPUS if "rule" in case}
    assert named == {rule.name for rule in DEFAULT_RULES}


def test_kubernetes_data_in_an_indented_document() -> None:
    text = "items:\n  - kind: Secret\n    data:\n      tls.key: LS0tLS1CRUdJTg==\n    type: tls\n"

    assert _only("kubernetes_secret_data").redact_text(text) == (
        f"items:\n  - kind: Secret\n    data:\n      tls.key: {R}\n    type: tls\n"
    )


@pytest.mark.parametrize(
    "text",
    [
        "metadata:\n  name: db-creds\n  namespace: prod\n",
        "data: 42\nname: x\n",
        "data:\nname: not indented under it\n",
    ],
)
def test_yaml_outside_a_data_block_is_left_alone(text: str) -> None:
    assert _only("kubernetes_secret_data").redact_text(text) == text


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_any_text_is_redacted_without_error_and_idempotently(text: str) -> None:
    once = redactor.redact_text(text)

    assert redactor.redact_text(once) == once


# Texts that made early versions of the patterns backtrack quadratically (seconds at 64 KB).
ADVERSARIAL = {
    "dotted run": "a." * 32_000 + " key token password @ ://",
    "dashed run": "a-" * 32_000 + " key @ ://",
    "colons": "a:" * 32_000 + " @ password",
    "schemes": "x://a:" * 10_000,
    "keys without values": "password " * 7_000,
    "assignments": "password=" * 7_000,
    "long word": "A" * 64_000 + " key @",
    "yaml": "data:\n" + "  a: |\n" * 9_000,
    "pem starts": "-----BEGIN RSA PRIVATE KEY-----\n" * 2_000,
    "multi-word value": "password: " + "a " * 32_000,
    "spaces after a value": "password: a" + " " * 64_000 + "#",
    "escaped quotes": '"password": "' + '\\"' * 32_000,
    "json in json": '\\"token\\":\\"' + "a\\\\" * 20_000,
    "doubled single quotes": "password: '" + "''" * 32_000,
    "backslashes": 'password="' + "\\" * 64_000,
    "cookie pairs": "Cookie: " + "a=" * 32_000,
    "encoded assignments": "password%3D" * 6_000,
    "encoded userinfo": "https%3A%2F%2F" + "a%3A" * 16_000,
    "encoded twice": "x%253A%252F%252F" + "a%253A" * 10_000,
    "json data objects": '"data": {' * 8_000,
    "kinds before data": '"kind":"Secret",' * 4_000 + '"data":{',
    "data objects without kind": '"data": {"a": "b"} ' * 3_000,
    "arrows": "password =>" * 6_000,
}


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_hostile_text_costs_linear_time(text: str) -> None:
    started = time.perf_counter()
    redactor.redact_text(text)
    elapsed = time.perf_counter() - started

    assert elapsed < 1.0  # about 40 ms at most here; the quadratic versions took 7 to 40 s


def _notification() -> Notification:
    return Notification(
        subject="DB down: postgres://app:s3cr3t@db:5432/app",
        body="Connection failed.\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig\nRetrying.",
        priority=Priority.HIGH,
        metadata={
            "dsn": "mysql://root:toor@db/mysql",
            "env": "API_KEY=abc123",
            "cluster": "eu-1",
        },
        links=(
            Link("logs", "https://admin:hunter2@logs.example/q?x=1"),
            Link("aws AKIAIOSFODNN7EXAMPLE", "https://console.example/"),
        ),
    )


def test_every_field_of_a_notification_is_redacted() -> None:
    redacted = redactor.redact(_notification())

    assert redacted == Notification(
        subject=f"DB down: postgres://app:{R}@db:5432/app",
        body=f"Connection failed.\nAuthorization: Bearer {R}\nRetrying.",
        priority=Priority.HIGH,
        metadata={"dsn": f"mysql://root:{R}@db/mysql", "env": f"API_KEY={R}", "cluster": "eu-1"},
        links=(
            Link("logs", f"https://admin:{R}@logs.example/q?x=1"),
            Link(f"aws {R}", "https://console.example/"),
        ),
    )
    assert _notification().subject.endswith("s3cr3t@db:5432/app")  # the original is untouched


def test_metadata_keys_are_kept_and_a_secret_name_hides_the_whole_value() -> None:
    notification = Notification("s", metadata={"password": "a b", "note": "password=hunter2"})

    assert redactor.redact(notification).metadata == {"password": R, "note": f"password={R}"}


def test_a_notification_without_secrets_is_returned_as_is() -> None:
    notification = Notification(
        "Rollout done", "All **12** pods ready.", metadata={"team": "payments"},
        links=(Link("dashboard", "https://grafana.example/d/1?orgId=1"),),
    )  # fmt: skip

    assert redactor.redact(notification) is notification


def test_the_fingerprint_changes_with_redaction() -> None:
    # Why the engine must fingerprint before redacting: two different secrets, one redacted form.
    first = Notification("s", body="password=one")
    second = Notification("s", body="password=two")

    assert first.fingerprint() != second.fingerprint()
    assert redactor.redact(first).fingerprint() == redactor.redact(second).fingerprint()


def test_a_rule_replaces_its_group_or_the_whole_match() -> None:
    whole = Redactor([Rule("ticket", r"TICKET-\d+")])
    named = Redactor([Rule("pin", r"pin (?P<secret>\d{4})")])
    numbered = Redactor([Rule("pin", r"(pin) (\d{4})", group=2)])

    assert whole.redact_text("see TICKET-123 now") == f"see {R} now"
    assert named.redact_text("pin 1234 ok") == f"pin {R} ok"
    assert numbered.redact_text("pin 1234 ok") == f"pin {R} ok"


def test_config_adds_rules_after_the_defaults() -> None:
    config = RedactionConfig.model_validate(
        {"rules": [{"name": "employee_id", "pattern": r"\bEMP-\d{6}\b"}]}
    )

    redactor = config.redactor()

    assert [rule.name for rule in redactor.rules][-1] == "employee_id"
    assert len(redactor.rules) == len(DEFAULT_RULES) + 1
    assert redactor.redact_text("EMP-123456 password=x") == f"{R} password={R}"


def test_config_can_switch_default_rules_off() -> None:
    config = RedactionConfig(disabled_rules=["bearer_token"])

    redactor = config.redactor()

    assert "bearer_token" not in [rule.name for rule in redactor.rules]
    assert redactor.redact_text("bearer abcdefghij1234567890") == "bearer abcdefghij1234567890"


def test_disabled_redaction_changes_nothing() -> None:
    redactor = RedactionConfig(enabled=False).redactor()

    notification = _notification()
    assert redactor.rules == ()
    assert redactor.redact(notification) is notification


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"rules": [{"name": "x", "pattern": "("}]}, "pattern is not a valid regular expression"),
        ({"rules": [{"name": "x", "pattern": "a*"}]}, "pattern matches the empty string"),
        ({"rules": [{"name": "x", "pattern": "a", "group": "secret"}]}, "no group named 'secret'"),
        ({"rules": [{"name": "x", "pattern": "(a)", "group": 2}]}, "the pattern has no group 2"),
        ({"rules": [{"name": "x", "pattern": "a", "extra": 1}]}, "Extra inputs are not permitted"),
        (
            {"rules": [{"name": "pem_private_key", "pattern": "a"}]},
            "'pem_private_key' is used twice",
        ),
        ({"disabled_rules": ["nope"]}, "unknown default rule 'nope'"),
        ({"enabled": True, "colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_config_is_refused(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RedactionConfig.model_validate(config)


def test_rule_names_are_unique() -> None:
    names = [rule.name for rule in DEFAULT_RULES]

    assert len(names) == len(set(names))
