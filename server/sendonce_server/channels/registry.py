"""Builds a channel from a receiver's type name and its settings mapping."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from .base import Channel
from .console import ConsoleChannel, ConsoleSettings
from .email import EmailChannel, EmailSettings
from .file import FileChannel, FileSettings
from .noop import NoopChannel, NoopSettings
from .pagerduty import PagerDutyChannel, PagerDutySettings
from .secrets import SecretError
from .slack import SlackChannel, SlackSettings
from .teams import TeamsChannel, TeamsSettings
from .webhook import WebhookChannel, WebhookSettings

_KINDS: Final[Mapping[str, tuple[type[BaseModel], Callable[[Any], Channel]]]] = {
    "console": (ConsoleSettings, ConsoleChannel),
    "email": (EmailSettings, EmailChannel),
    "file": (FileSettings, FileChannel),
    "noop": (NoopSettings, NoopChannel),
    "pagerduty": (PagerDutySettings, PagerDutyChannel),
    "slack": (SlackSettings, SlackChannel),
    "teams": (TeamsSettings, TeamsChannel),
    "webhook": (WebhookSettings, WebhookChannel),
}
CHANNEL_TYPES: Final[tuple[str, ...]] = tuple(sorted(_KINDS))


class ChannelConfigError(ValueError):
    """A receiver that cannot be built; `field` names the setting (dotted when nested).

    The message says what to change and never contains a secret value.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def build_channel(kind: str, settings: Mapping[str, Any]) -> Channel:
    """A ready channel of type `kind`; raises ChannelConfigError on any bad setting."""
    try:
        model, factory = _KINDS[kind]
    except KeyError:
        known = ", ".join(CHANNEL_TYPES)
        raise ChannelConfigError(
            "type", f"unknown channel type {kind!r} (known: {known})"
        ) from None
    try:
        return factory(model.model_validate(dict(settings)))
    except ValidationError as exc:
        raise _config_error(model, exc) from None
    except SecretError as exc:
        raise ChannelConfigError(exc.field, exc.reason) from None


def _config_error(model: type[BaseModel], exc: ValidationError) -> ChannelConfigError:
    # Built from each error's location and message only: pydantic's own text quotes the input.
    problems = [_describe(model, error) for error in exc.errors()]
    (field, reason), others = problems[0], problems[1:]
    if others:
        reason += "; also " + "; ".join(f"{name}: {why}" for name, why in others)
    return ChannelConfigError(field, reason)


def _describe(model: type[BaseModel], error: ErrorDetails) -> tuple[str, str]:
    loc, kind = error["loc"], error["type"]
    field = ".".join(str(part) for part in loc) or "settings"
    if kind == "extra_forbidden":
        reason = "unknown setting"
        if len(loc) == 1:
            known = (field.alias or name for name, field in model.model_fields.items())
            reason += f" (known: {', '.join(known)})"
        return field, reason
    if kind == "missing":
        return field, "required setting is missing"
    if kind == "value_error":
        return field, str(error.get("ctx", {}).get("error", error["msg"]))
    return field, str(error["msg"])
