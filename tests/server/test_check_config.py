"""`sendonce-server check-config`: a summary and exit 0, or every problem and exit 2; no secret."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sendonce_server.main import main

from .process import Children

SECRET = "whsec_c2VuZG9uY2Utbm90LWEtcmVhbC1zZWNyZXQ="
URL_SECRET = "https://hooks.example.test/services/T000/B000/s3cr3t-url-path"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["check-config", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_embedded_default_is_ok_and_summarised(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(capsys)
    assert code == 0, out
    assert "configuration OK" in out
    assert "console (console): at most 5 attempts" in out
    assert "store: memory" in out


def test_a_good_file_is_summarised_without_any_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SIGNING", SECRET)
    url_file = _write(tmp_path / "url", URL_SECRET + "\n")
    config = _write(
        tmp_path / "receivers.toml",
        f"""
[[receivers]]
name = "ops"
type = "webhook"
[receivers.retry]
max_attempts = 7
[receivers.settings]
url_secret = {{ file = "{url_file}" }}
signing_secret = {{ env = "HOOK_SIGNING" }}
""",
    )
    code, out = _run(
        capsys, "--config", str(config), "--store", "redis://:hunter2-pw@127.0.0.1:6379/0"
    )
    assert code == 0, out
    assert "ops (webhook): at most 7 attempts" in out
    assert "redis://:***@127.0.0.1:6379/0" in out
    for secret in (SECRET, URL_SECRET, "s3cr3t", "hunter2"):
        assert secret not in out


def test_every_problem_is_named_not_only_the_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    empty_token = _write(tmp_path / "token", "\n")
    config = _write(
        tmp_path / "receivers.toml",
        """
[[receivers]]
name = "hook"
type = "webhook"
[receivers.settings]
url = "http://127.0.0.1:9/x"
signing_secret = { env = "NOT_SET_ANYWHERE" }

[[receivers]]
name = "mail"
type = "email"
[receivers.settings]
colour = "blue"

[[receivers]]
name = "slow"
type = "console"
[receivers.retry]
initial_backoff = 600.0
max_backoff = 10.0
""",
    )
    code, out = _run(
        capsys,
        "--config",
        str(config),
        "--tls-cert-file",
        str(tmp_path / "missing.crt"),
        "--auth-token-file",
        str(empty_token),
    )
    assert code == 2, out
    assert "5 problems" in out
    assert "TLS needs both --tls-cert-file and --tls-key-file" in out
    assert f"the auth token file {empty_token} is empty" in out
    assert (
        "receiver 'hook': signing_secret: environment variable NOT_SET_ANYWHERE is not set" in out
    )
    mail = next(line for line in out.splitlines() if line.startswith("- receiver 'mail': "))
    assert "colour: unknown setting" in mail
    assert "receiver 'slow': retry." in out


def test_bad_settings_still_check_the_receivers_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(tmp_path / "receivers.toml", "[[receivers]]\nname = 'Bad Name'\ntype = 'x'\n")
    code, out = _run(
        capsys, "--max-body-bytes", "0", "--store", "nosuch://", "--config", str(config)
    )
    assert code == 2, out
    assert "3 problems" in out
    assert "- settings: max_body_bytes: Input should be greater than 0" in out
    assert "- settings: store: Value error, --store (SENDONCE_STORE)" in out
    assert f"- receivers file {config}: receivers.0.name: Value error" in out


def test_an_unreadable_receivers_file_is_a_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(capsys, "--config", str(tmp_path / "absent.toml"))
    assert code == 2, out
    assert "cannot read receivers file" in out


async def test_the_command_serves_nothing_even_on_a_busy_port(tmp_path: Path) -> None:
    """A real process: the address the server would take is in use, and the check still passes."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        async with Children() as children:
            child = await children.run(
                "sendonce_server", "check-config", "--listen", f"127.0.0.1:{port}"
            )
            code = await child.exit_code()
    assert code == 0, child.stdout.text + child.stderr.text
    assert "configuration OK" in child.stdout.text
    assert f"listen: 127.0.0.1:{port}" in child.stdout.text
