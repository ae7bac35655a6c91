"""Input rules for requests. Each failure names the field and the reason."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_UID_LENGTH = 253
MAX_SUBJECT_LENGTH = 500
MAX_METADATA_ENTRIES = 64
MAX_LINKS = 16
# Receiver names are DNS-label-like so they are safe as metric labels, file names and keys.
CHANNEL_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class InvalidInput(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 64 * 1024


def check_uid(uid: str, field: str = "uid") -> None:
    if not uid:
        raise InvalidInput(field, "must not be empty")
    if len(uid) > MAX_UID_LENGTH:
        raise InvalidInput(field, f"must be at most {MAX_UID_LENGTH} characters, got {len(uid)}")
    if not uid.isprintable() or uid != uid.strip():
        raise InvalidInput(field, "must be printable with no leading or trailing whitespace")


def check_channel(channel: str, field: str = "channel") -> None:
    if not channel:
        raise InvalidInput(field, "must not be empty")
    if not CHANNEL_PATTERN.match(channel):
        raise InvalidInput(
            field,
            f"{channel[:70]!r} is not a receiver name: use 1-63 lowercase letters, digits "
            "and '-', starting and ending with a letter or digit",
        )


def check_subject(subject: str, field: str = "notification.subject") -> None:
    if not subject.strip():
        raise InvalidInput(field, "must not be empty")
    if len(subject) > MAX_SUBJECT_LENGTH:
        raise InvalidInput(
            field, f"must be at most {MAX_SUBJECT_LENGTH} characters, got {len(subject)}"
        )


def check_body(body: str, limits: Limits, field: str = "notification.body") -> None:
    if len(body) * 4 <= limits.max_body_bytes:
        return  # at most 4 bytes a character in UTF-8: no need to encode it to know
    size = len(body.encode())
    if size > limits.max_body_bytes:
        raise InvalidInput(field, f"must be at most {limits.max_body_bytes} bytes, got {size}")


def check_metadata(metadata: dict[str, str], field: str = "notification.metadata") -> None:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidInput(field, f"must have at most {MAX_METADATA_ENTRIES} entries")
    if any(not key.strip() for key in metadata):
        raise InvalidInput(field, "keys must not be empty")


def check_links(count: int) -> None:
    if count > MAX_LINKS:
        raise InvalidInput(
            "notification.links", f"must have at most {MAX_LINKS} links, got {count}"
        )


def check_link(title: str, url: str, index: int) -> None:
    if not url.strip():
        raise InvalidInput(f"notification.links[{index}].url", "must not be empty")
    if not title.strip():
        raise InvalidInput(f"notification.links[{index}].title", "must not be empty")
