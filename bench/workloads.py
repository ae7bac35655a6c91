"""What each scenario sends: serialised requests and how an answer is labelled."""

from __future__ import annotations

from sendonce.v1 import delivery_pb2 as pb

from .echo_server import ECHO_METHOD, TYPED_METHOD
from .load import Workload

DELIVER = "/sendonce.v1.DeliveryService/Deliver"
ATTEMPT_COUNT = "/sendonce.v1.DeliveryService/AttemptCount"
CHANNEL = "noop"
# A typical alert: a subject, a short body, a label; the same payload for every key.
NOTIFICATION = pb.Notification(
    subject="Backup of db-0 failed",
    body="exit status 3",
    priority=pb.PRIORITY_HIGH,
    metadata={"namespace": "prod"},
)


def uid(run: int, index: int) -> str:
    """A 36-character uid shaped like a Kubernetes metadata.uid (a UUID)."""
    return f"{run:08x}-0000-4000-8000-{index:012x}"


def _deliver_request(key_uid: str) -> bytes:
    return pb.DeliverRequest(
        uid=key_uid, channel=CHANNEL, notification=NOTIFICATION
    ).SerializeToString()


def _outcome(answer: bytes) -> str:
    return pb.Outcome.Name(pb.DeliverResponse.FromString(answer).outcome)


def _found(answer: bytes) -> str:
    return "found" if pb.AttemptCountResponse.FromString(answer).found else "not_found"


def echo(run: int) -> Workload:
    """The same bytes as deliver_unique, to a method that does nothing with them."""
    return Workload(ECHO_METHOD, lambda i: _deliver_request(uid(run, i)), _outcome)


def typed_echo(run: int) -> Workload:
    """The same bytes, parsed into a DeliverRequest and answered with a built DeliverResponse."""
    return Workload(TYPED_METHOD, lambda i: _deliver_request(uid(run, i)), _outcome)


def deliver_unique(run: int) -> Workload:
    """Every call a new key: reserve, send (noop), complete."""
    return Workload(DELIVER, lambda i: _deliver_request(uid(run, i)), _outcome)


def deliver_hot(run: int, keys: int) -> Workload:
    """Every call on one of a few keys: coalesced flights, then ALREADY_DELIVERED."""
    requests = [_deliver_request(uid(run, i)) for i in range(keys)]
    return Workload(DELIVER, lambda i: requests[i % keys], _outcome)


def attempt_count(run: int, keys: int) -> Workload:
    """Reads of keys delivered before (see `deliver_unique` with the same run)."""
    requests = [
        pb.AttemptCountRequest(uid=uid(run, i), channel=CHANNEL).SerializeToString()
        for i in range(keys)
    ]
    return Workload(ATTEMPT_COUNT, lambda i: requests[i % keys], _found)
