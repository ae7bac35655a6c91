"""What lenient parsing (sendonce_server/wire.py) adds to a call, alone.

    python -m bench.parse_cost

A Deliver request's bytes through the generated method handler and through the one the server
registers, with a servicer that answers at once: the extra Python call around the parse and the
extra coroutine around the servicer, nothing else. CPU per call, best of 5, in rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import grpc

from sendonce.v1 import delivery_pb2 as pb
from sendonce_server.wire import lenient_handler

from .workloads import CHANNEL, NOTIFICATION

_RAW = pb.DeliverRequest(uid="u-1", channel=CHANNEL, notification=NOTIFICATION).SerializeToString()
_ANSWER = pb.DeliverResponse()


async def _deliver(request: pb.DeliverRequest, context: Any) -> pb.DeliverResponse:
    return _ANSWER


async def _per_call(handler: Any, calls: int) -> float:
    parse, behaviour = handler.request_deserializer, handler.unary_unary
    started = time.process_time()
    for _ in range(calls):
        await behaviour(parse(_RAW), None)
    return (time.process_time() - started) / calls * 1e6


async def measure(calls: int, rounds: int) -> None:
    generated = grpc.unary_unary_rpc_method_handler(
        _deliver, pb.DeliverRequest.FromString, pb.DeliverResponse.SerializeToString
    )
    handlers = {"generated": generated, "served": lenient_handler("Deliver", generated)}
    print(f"{'round':<6}{'generated µs':>14}{'served µs':>12}")
    for index in range(rounds):
        best = {}
        for name, handler in handlers.items():
            best[name] = min([await _per_call(handler, calls) for _ in range(5)])
        print(f"{index + 1:<6}{best['generated']:>14.3f}{best['served']:>12.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(measure(args.calls, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
