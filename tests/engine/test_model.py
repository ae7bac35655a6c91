"""The engine's vocabulary: what must never change between versions."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given
from hypothesis import strategies as st

from sendonce_server.engine.model import Key, Link, Notification, Priority

texts = st.text(max_size=40)  # any code point, lone surrogates and controls included
notifications = st.builds(
    Notification,
    subject=texts,
    body=texts,
    priority=st.sampled_from(Priority),
    metadata=st.dictionaries(texts, texts, max_size=4),
    links=st.lists(st.builds(Link, texts, texts), max_size=3).map(tuple),
)


def reference_fingerprint(notification: Notification) -> str:
    """The definition stored records were made with: sha256 of the canonical JSON."""
    data = json.dumps(notification.canonical(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()[:32]


@given(notifications)
def test_the_fingerprint_is_the_hash_of_the_canonical_json(notification: Notification) -> None:
    assert notification.fingerprint() == reference_fingerprint(notification)


def test_the_fingerprint_of_a_known_notification_never_changes() -> None:
    notification = Notification(
        subject="Backup of db-0 failed",
        body="exit status 3 — ünïcode",
        priority=Priority.HIGH,
        metadata={"namespace": "prod", "app": "db"},
        links=(Link("runbook", "https://runbooks.example/db"),),
    )
    # Computed by the first release: stored records and other replicas hold this value.
    assert notification.fingerprint() == "6b1d6fc1fec59f982f7064110e0b517f"


def test_keys_compare_and_hash_by_value() -> None:
    assert Key("uid-1", "hook") == Key("uid-1", "hook")
    assert len({Key("uid-1", "hook"), Key("uid-1", "hook"), Key("uid-1", "mail")}) == 2
    assert Key("uid-1", "hook").idempotency_key == Key("uid-1", "hook").idempotency_key
    assert Key("uid-1", "hook").idempotency_key != Key("uid-1", "mail").idempotency_key
