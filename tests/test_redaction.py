"""Redaction rules, pattern by pattern (what they hide and what they leave), and notifications."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sendonce_server.engine.model import Link, Notification, Priority
from sendonce_server.redaction import (
    DEFAULT_RULES,
    REDACTED,
    NotificationRedactor,
    RedactionConfig,
    Rule,
)

R = REDACTED
redactor = NotificationRedactor()


def _only(name: str) -> NotificationRedactor:
    (rule,) = [rule for rule in DEFAULT_RULES if rule.name == name]
    return NotificationRedactor([rule])


# (rule, text, what the text becomes); each rule is tried alone, so a case proves that rule.
POSITIVE = [
    ("url_password", "https://admin:hunter2@example.com/x", f"https://admin:{R}@example.com/x"),
    ("url_password", "ftp://:only-pw@files.example", f"ftp://:{R}@files.example"),
    ("url_password", "see (smtp://u:p4ss@mail.example:25)", f"see (smtp://u:{R}@mail.example:25)"),
    ("database_url", "postgres://app:s3cr3t@db:5432/app", f"postgres://app:{R}@db:5432/app"),
    ("database_url", "postgresql+psycopg://a:b@db/x", f"postgresql+psycopg://a:{R}@db/x"),
    ("database_url", "mysql://root:toor@127.0.0.1/mysql", f"mysql://root:{R}@127.0.0.1/mysql"),
    (
        "database_url",
        "mongodb+srv://u:p%40ss@c0.example.net/db",
        f"mongodb+srv://u:{R}@c0.example.net/db",
    ),
    ("database_url", "mongodb://u:pw@h1,h2/db", f"mongodb://u:{R}@h1,h2/db"),
    ("database_url", "redis://:pw123456@cache:6379/0", f"redis://:{R}@cache:6379/0"),
    ("database_url", "REDISS://user:pw@cache", f"REDISS://user:{R}@cache"),
    ("secret_assignment", "password=hunter2 next", f"password={R} next"),
    ("secret_assignment", "PASSWD: hunter2", f"PASSWD: {R}"),
    ("secret_assignment", '"password": "correct horse battery"', f'"password": "{R}"'),
    ("secret_assignment", "{'secret': 'abc'}", f"{{'secret': '{R}'}}"),
    ("secret_assignment", '{\\"token\\":\\"x y\\"}', f'{{\\"token\\":\\"{R}\\"}}'),
    ("secret_assignment", "api_key='abc123'", f"api_key='{R}'"),
    ("secret_assignment", "apikey=abc123&page=2", f"apikey={R}&page=2"),
    ("secret_assignment", "x-api-key: 0123456789", f"x-api-key: {R}"),
    ("secret_assignment", "DB_PASSWORD=s3cret", f"DB_PASSWORD={R}"),
    ("secret_assignment", "GITHUB_TOKEN = abc; more", f"GITHUB_TOKEN = {R}; more"),
    ("secret_assignment", "access_key: AK0123", f"access_key: {R}"),
    ("secret_assignment", "client_secret=xyz", f"client_secret={R}"),
    (
        "secret_assignment",
        "https://x.example/cb?access_token=abc&state=1",
        f"https://x.example/cb?access_token={R}&state=1",
    ),
    (
        "secret_assignment",
        "jdbc:postgresql://db/app?user=a&password=b",
        f"jdbc:postgresql://db/app?user=a&password={R}",
    ),
    (
        "authorization_header",
        "Authorization: Bearer eyJhbGciOi.J9eyJz.dWIi",
        f"Authorization: Bearer {R}",
    ),
    ("authorization_header", "authorization: basic dXNlcjpwYXNz", f"authorization: basic {R}"),
    ("authorization_header", '"Authorization": "Token abc"', f'"Authorization": "Token {R}"'),
    ("bearer_token", "curl -H 'Bearer abcdefghij1234567890'", f"curl -H 'Bearer {R}'"),
    ("bearer_token", "bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", f"bearer {R}"),
    ("slack_token", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", R),
    ("slack_token", "token xoxp-1234-5678-9012-abcdef", f"token {R}"),
    ("slack_token", "xapp-1-A0123456-0123456789-abcdef", R),
    (
        "slack_webhook_url",
        "https://hooks.slack.com/services/T000/B000/XXXXXXXX",
        f"https://hooks.slack.com/services/{R}",
    ),
    ("github_token", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", R),
    ("github_token", "gho_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 and", f"{R} and"),
    ("github_token", "ghs_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", R),
    ("github_token", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", R),
    ("stripe_key", "sk_live_51HABCDEFghijklmno", R),
    ("stripe_key", "key rk_live_0123456789abcdef.", f"key {R}."),
    ("stripe_key", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", R),
    ("openai_key", "sk-proj-abcdefghijklmnopqrstuvwxyz012345", R),
    ("openai_key", "OPENAI=sk-abcdefghijklmnopqrstuvwxyz", f"OPENAI={R}"),
    ("openai_key", "sk-ant-api03-abcdefghijklmnopqrstuvwxyz", R),
    ("google_api_key", "AIzaSyA1234567890abcdefghijklmnopqrstuv", R),
    ("google_api_key", "?key=AIzaSyA1234567890abcdefghijklmnopqrstuv&x", f"?key={R}&x"),
    ("sendgrid_key", "SG.abcdefghijklmnopqrstuv.abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", R),
    ("aws_access_key_id", "AKIAIOSFODNN7EXAMPLE", R),
    ("aws_access_key_id", "id=ASIAY34FZKBOKMUTVV7A,", f"id={R},"),
    (
        "aws_secret_access_key",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        f"aws_secret_access_key = {R}",
    ),
    (
        "aws_secret_access_key",
        'AWS_SECRET_ACCESS_KEY="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"',
        f'AWS_SECRET_ACCESS_KEY="{R}"',
    ),
    (
        "signed_url",
        "https://x.logic.azure.com/paths/invoke?api-version=1&sig=abcDEF123",
        f"https://x.logic.azure.com/paths/invoke?api-version=1&sig={R}",
    ),
    (
        "signed_url",
        "https://b.s3.amazonaws.com/k?X-Amz-Signature=0a1b2c&X-Amz-Date=1",
        f"https://b.s3.amazonaws.com/k?X-Amz-Signature={R}&X-Amz-Date=1",
    ),
    (
        "pem_private_key",
        "a\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK==\n-----END RSA PRIVATE KEY-----\nb",
        f"a\n{R}\nb",
    ),
    ("pem_private_key", "-----BEGIN PRIVATE KEY-----\nMC4CAQ\n-----END PRIVATE KEY-----", R),
    (
        "pem_private_key",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nx\n-----END ENCRYPTED PRIVATE KEY-----",
        R,
    ),
    ("pem_private_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk", R),  # cut short
    (
        "pem_private_key",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\nx\n-----END PGP PRIVATE KEY BLOCK-----",
        R,
    ),
]

NEGATIVE = [
    ("url_password", "https://example.com:8080/path"),
    ("url_password", "mailto:ops@example.com"),
    ("url_password", "https://user@example.com/no-password"),
    ("url_password", "time 12:30 at ops@example.com"),
    ("database_url", "postgres://db.example:5432/app"),
    ("database_url", "mongodb://app@db/x"),
    ("secret_assignment", "the password policy requires 12 characters"),
    ("secret_assignment", "token bucket limiter refilled"),
    ("secret_assignment", "max_tokens=500"),
    ("secret_assignment", "tokens: 500"),
    ("secret_assignment", "secretName: db-creds"),
    ("secret_assignment", "password_policy=strict"),
    ("secret_assignment", "keyboard=us"),
    ("secret_assignment", 'the "password" field is empty: ""'),
    ("secret_assignment", "a secret is out, the key to success"),
    ("authorization_header", "authorization failed for user 42"),
    ("authorization_header", "Authorization: required"),
    ("bearer_token", "the bearer of bad news"),
    ("bearer_token", "Bearer responsibilities"),
    ("slack_token", "xoxb is a Slack bot token prefix"),
    ("github_token", "ghp_short"),
    ("github_token", "the ghost_ town"),
    ("stripe_key", "pk_live_0123456789abcdefgh is publishable; sk_live_ alone"),
    ("openai_key", "task-abcdefghijklmnopqrstuvwxyz"),
    ("openai_key", "sk-short"),
    ("google_api_key", "AIza is a prefix"),
    ("sendgrid_key", "SG.short.x"),
    ("aws_access_key_id", "AKIAIOSFODNN7EXAMPL"),
    ("aws_access_key_id", "AKIAiosfodnn7example"),
    ("aws_access_key_id", "XAKIAIOSFODNN7EXAMPLE1"),
    ("aws_secret_access_key", "aws_secret_access_key is set in the vault"),
    ("signed_url", "https://example.com/?signal=1&design=2"),
    ("pem_private_key", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"),
    ("pem_private_key", "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----"),
    ("pem_private_key", "rotate the private key every year"),
]


@pytest.mark.parametrize(("name", "text", "expected"), POSITIVE)
def test_each_rule_hides_what_it_is_for(name: str, text: str, expected: str) -> None:
    assert _only(name).redact_text(text) == expected


@pytest.mark.parametrize(("name", "text"), NEGATIVE)
def test_each_rule_leaves_lookalikes_alone(name: str, text: str) -> None:
    assert _only(name).redact_text(text) == text


@pytest.mark.parametrize(("name", "text"), NEGATIVE)
def test_no_default_rule_touches_the_lookalikes(name: str, text: str) -> None:
    assert redactor.redact_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "request 123e4567-e89b-12d3-a456-426614174000 failed",
        "trace_id=4bf92f3577b34da6a3ce929d0e0e4736",
        "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "deployment payments-api rolled out to prod-eu-west-1 (12/12 ready)",
        "https://grafana.example.com/d/abc123/payments?orgId=1&from=now-1h",
        "ops@example.com wrote at 12:30",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redactor.redact_text(text) == text


@pytest.mark.parametrize(("name", "text", "expected"), POSITIVE)
def test_the_default_set_gives_the_same_result(name: str, text: str, expected: str) -> None:
    # Rules overlap (a database URL is also a URL with a password): together they must agree.
    assert redactor.redact_text(text) == expected


KUBERNETES_SECRET = """\
apiVersion: v1
data:
  password: MWYyZDFlMmU2N2Rm
  username: YWRtaW4=
  config.yaml: |
    host: db
    pass: zzz
kind: Secret
metadata:
  name: db-creds
stringData:
  "token": plain text value # a comment
type: Opaque
"""


def test_kubernetes_secret_data_values_are_hidden_and_keys_kept() -> None:
    assert (
        _only("kubernetes_secret_data").redact_text(KUBERNETES_SECRET)
        == f"""\
apiVersion: v1
data:
  password: {R}
  username: {R}
  config.yaml: {R}
kind: Secret
metadata:
  name: db-creds
stringData:
  "token": {R}
type: Opaque
"""
    )


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


def test_redaction_is_idempotent_on_the_positive_cases() -> None:
    for _, text, _ in POSITIVE:
        once = redactor.redact_text(text)
        assert redactor.redact_text(once) == once


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


def test_metadata_keys_are_kept() -> None:
    notification = Notification("s", metadata={"password": "x", "note": "password=hunter2"})

    assert redactor.redact(notification).metadata == {"password": "x", "note": f"password={R}"}


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
    whole = NotificationRedactor([Rule("ticket", r"TICKET-\d+")])
    named = NotificationRedactor([Rule("pin", r"pin (?P<secret>\d{4})")])
    numbered = NotificationRedactor([Rule("pin", r"(pin) (\d{4})", group=2)])

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
