"""Secret references: exactly one source, read without ever echoing the value."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from sendonce_server.channels.secrets import SecretError, SecretRef

SECRET = "whsec_dG9wLXNlY3JldC12YWx1ZS0xMjM0NTY3OA=="


def test_file_secret_loses_its_trailing_newline_only(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f" {SECRET}\n")

    resolved = SecretRef(file=path).resolve("signing_secret")

    assert isinstance(resolved, SecretStr)
    assert resolved.get_secret_value() == f" {SECRET}"


def test_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)

    assert SecretRef(env="HOOK_SECRET").resolve("signing_secret").get_secret_value() == SECRET


def test_resolved_secret_does_not_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    resolved = SecretRef(env="HOOK_SECRET").resolve("signing_secret")

    assert SECRET not in repr(resolved)
    assert SECRET not in str(resolved)


def test_missing_file_names_the_field_and_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent"

    with pytest.raises(SecretError) as caught:
        SecretRef(file=path).resolve("url_secret")

    assert caught.value.field == "url_secret"
    assert str(caught.value) == f"url_secret: file {path} does not exist"


@pytest.mark.parametrize("content", ["", "\n", "\r\n\n"])
def test_empty_file_is_an_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token"
    path.write_text(content)

    with pytest.raises(SecretError, match=r"^signing_secret: file .* is empty$"):
        SecretRef(file=path).resolve("signing_secret")


def test_directory_instead_of_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match=r"^signing_secret: file .* cannot be read: is a dir"):
        SecretRef(file=tmp_path).resolve("signing_secret")


def test_non_utf8_file_is_an_error_without_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"abc\xffdef")

    with pytest.raises(SecretError) as caught:
        SecretRef(file=path).resolve("signing_secret")

    assert caught.value.reason == f"file {path} is not UTF-8 text"
    assert caught.value.__suppress_context__


def test_unset_env_names_the_field_and_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOOK_SECRET", raising=False)

    with pytest.raises(SecretError) as caught:
        SecretRef(env="HOOK_SECRET").resolve("signing_secret")

    assert caught.value.field == "signing_secret"
    assert caught.value.reason == "environment variable HOOK_SECRET is not set"


def test_empty_env_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "")

    with pytest.raises(SecretError, match="environment variable HOOK_SECRET is empty"):
        SecretRef(env="HOOK_SECRET").resolve("signing_secret")


@pytest.mark.parametrize("data", [{}, {"file": "/run/secret", "env": "HOOK_SECRET"}])
def test_exactly_one_source(data: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="give exactly one of 'file' or 'env'"):
        SecretRef.model_validate(data)


def test_inline_values_are_refused_without_echoing_them() -> None:
    with pytest.raises(ValidationError) as caught:
        SecretRef.model_validate({"value": SECRET})

    assert "inline secret values are not accepted" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        SecretRef.model_validate({"env": "HOOK_SECRET", "fiel": "/run/secret"})
