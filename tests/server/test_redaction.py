"""Secrets in a notification never reach a receiver, and redaction does not change the key."""

from __future__ import annotations

from sendonce.v1 import delivery_pb2 as pb
from tests.server.conftest import StartSidecar
from tests.support.http_receiver import HttpReceiver

PASSWORD = "hunter2-Xq81"
TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"


async def test_secrets_are_redacted_before_the_receiver_sees_them(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(
        {"receivers": [{"name": "hook", "type": "webhook", "settings": {"url": http_receiver.url}}]}
    )
    note = pb.Notification(
        subject="Backup failed",
        body=f"connect postgres://backup:{PASSWORD}@db:5432/app failed; token={TOKEN}",
        metadata={"auth": f"Bearer {TOKEN}"},
    )

    first = await sidecar.stub.Deliver(
        pb.DeliverRequest(uid="u1", channel="hook", notification=note)
    )
    again = await sidecar.stub.Deliver(
        pb.DeliverRequest(uid="u1", channel="hook", notification=note)
    )

    sent = http_receiver.requests[0].body.decode()
    assert first.outcome == pb.OUTCOME_DELIVERED
    assert PASSWORD not in sent
    assert TOKEN not in sent
    assert "[REDACTED]" in sent
    assert "Backup failed" in sent
    # The key's fingerprint is of the payload as given: the same call is recognised.
    assert again.outcome == pb.OUTCOME_ALREADY_DELIVERED
    assert http_receiver.hits == 1


async def test_whole_values_and_secret_metadata_keys_never_reach_the_receiver(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(
        {"receivers": [{"name": "hook", "type": "webhook", "settings": {"url": http_receiver.url}}]}
    )
    note = pb.Notification(
        subject="Config drift",
        body='password: correct horse battery staple\n{"api_token": "ab\\"cd-tail"}',
        metadata={"db_password": "Tr0ub4dor-and-3", "cluster": "eu-1"},
    )

    answer = await sidecar.stub.Deliver(
        pb.DeliverRequest(uid="u3", channel="hook", notification=note)
    )

    sent = http_receiver.requests[0].json()
    assert answer.outcome == pb.OUTCOME_DELIVERED
    for secret in ("horse", "battery", "staple", "cd-tail", "Tr0ub4dor"):
        assert secret not in http_receiver.requests[0].body.decode()
    assert sent["metadata"] == {"db_password": "[REDACTED]", "cluster": "eu-1"}


async def test_redaction_can_be_turned_off(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(
        {
            "redaction": {"enabled": False},
            "receivers": [
                {"name": "hook", "type": "webhook", "settings": {"url": http_receiver.url}}
            ],
        }
    )
    note = pb.Notification(subject="s", body=f"password={PASSWORD}")

    await sidecar.stub.Deliver(pb.DeliverRequest(uid="u2", channel="hook", notification=note))

    assert PASSWORD in http_receiver.requests[0].body.decode()
