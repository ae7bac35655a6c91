"""Where a channel's secret lives, and reading it without ever echoing it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class SecretError(ValueError):
    """A secret that cannot be used; `field` names the setting, `reason` never holds the value."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class SecretRef(BaseModel):
    """Exactly one of `file` (e.g. a mounted Kubernetes secret) or `env` (a variable's name).

    There is deliberately no inline `value`: configuration gets logged, diffed and committed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: Path | None = None
    env: str | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "value" in data:
            raise ValueError(
                "inline secret values are not accepted; give 'file' (a mounted secret) or 'env'"
            )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of 'file' or 'env'")
        return self

    def resolve(self, field: str) -> SecretStr:
        """Read the secret now; `field` names the setting in a `SecretError`."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise SecretError(field, f"environment variable {self.env} is not set")
            if not value:
                raise SecretError(field, f"environment variable {self.env} is empty")
            return SecretStr(value)
        assert self.file is not None
        try:
            # Secret files usually end with a newline that is not part of the secret.
            value = self.file.read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            raise SecretError(field, f"file {self.file} does not exist") from None
        except UnicodeDecodeError:
            raise SecretError(field, f"file {self.file} is not UTF-8 text") from None
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else type(exc).__name__
            raise SecretError(field, f"file {self.file} cannot be read: {reason}") from None
        if not value:
            raise SecretError(field, f"file {self.file} is empty")
        return SecretStr(value)
