"""sendonce-server with Deliver cut short after a stage of its work: a rung of the ladder.

    python -m bench.ladder_server --stage convert [sendonce-server flags]

Everything else is the real server (its settings, its grpc.aio server, health, reflection);
only `DeliveryServicer.Deliver` answers a fixed DELIVERED once the stage is done:

- `servicer`: at once (gRPC, protobuf parsing, the server as configured);
- `convert`: after validating the key and converting the notification;
- `fingerprint`: after computing the payload's fingerprint too;
- `full`: the real Deliver (engine, store, channel, answer).
"""

from __future__ import annotations

import sys
from typing import Any

from sendonce.v1 import delivery_pb2 as pb
from sendonce_server.api import convert
from sendonce_server.api.servicer import DeliveryServicer
from sendonce_server.main import main

from .echo_server import delivered

STAGES = ("servicer", "convert", "fingerprint", "full")


def cut_short(stage: str) -> None:
    if stage == "full":
        return
    answer = delivered()

    async def deliver(
        self: DeliveryServicer, request: pb.DeliverRequest, context: Any
    ) -> pb.DeliverResponse:
        if stage == "servicer":
            return answer
        self._key(request.uid, request.channel)
        notification = convert.notification(request.notification, self.limits)
        if stage == "fingerprint":
            notification.fingerprint()
        return answer

    DeliveryServicer.Deliver = deliver  # type: ignore[method-assign]


if __name__ == "__main__":
    arguments = sys.argv[1:]
    stage = "full"
    if arguments[:1] == ["--stage"]:
        stage, arguments = arguments[1], arguments[2:]
    if stage not in STAGES:
        sys.exit(f"--stage must be one of {', '.join(STAGES)}")
    cut_short(stage)
    sys.exit(main(arguments))
