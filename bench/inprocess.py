"""The sidecar's own CPU per Deliver, without gRPC: the servicer driven directly, in-process.

    python -m bench.inprocess                 # 64 callers in flight, memory store, noop receiver
    python -m bench.inprocess --log-level info
    python -m bench.inprocess --handler generated --handler served   # parsing included

What the RPC scenarios cannot separate: of the server CPU per call, how much is sendonce's own
work (validation, conversion, fingerprint, engine, store, answer) and how much gRPC's. The
servicer's `Deliver` gets parsed requests (parsing is gRPC's part, as in the typed echo row)
and its answers are serialised; CPU is this process's (`time.process_time`), per call, the
request building subtracted. The best of `--repeats` measurements is printed as JSON.

With `--handler`, the servicer is driven through the method handler gRPC calls, from the
request's bytes: its deserializer, then its behaviour. `generated` is the handler generated
code registers, `served` the one the server registers (sendonce_server/wire.py, which never
lets a parse error escape); one line per handler, measured in turn in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from itertools import count
from typing import Any

from sendonce.v1 import delivery_pb2 as pb
from sendonce.v1 import delivery_pb2_grpc as pb_grpc
from sendonce_server.api.servicer import DeliveryServicer
from sendonce_server.api.validation import Limits
from sendonce_server.channels.registry import build_channel
from sendonce_server.engine.engine import Engine, Receiver
from sendonce_server.logs import configure
from sendonce_server.store.memory import MemoryStore
from sendonce_server.wire import lenient_handler

from .workloads import CHANNEL, NOTIFICATION, uid

_RUN = 0x1C0DE


class _Context:
    """What the servicer asks of a grpc.aio context on the success path."""

    def time_remaining(self) -> float:
        return 29.9  # the bench client's 30 s deadline, just begun

    async def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"{code}: {details}")


def _raw(index: int) -> bytes:
    return pb.DeliverRequest(
        uid=uid(_RUN, index), channel=CHANNEL, notification=NOTIFICATION
    ).SerializeToString()


def _request(index: int) -> pb.DeliverRequest:
    return pb.DeliverRequest.FromString(_raw(index))


class _Capture:
    """Takes the handlers generated code registers, as a server would."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers = handlers


def _deliver(servicer: DeliveryServicer, handler: str) -> tuple[Any, Any]:
    """(make a request from an index, the Deliver behaviour that takes it)."""
    if handler == "none":
        return _request, servicer.Deliver
    capture: Any = _Capture()
    pb_grpc.add_DeliveryServiceServicer_to_server(servicer, capture)
    generated = capture.handlers["Deliver"]
    chosen = generated if handler == "generated" else lenient_handler("Deliver", generated)
    parse: Any = chosen.request_deserializer
    behaviour: Any = chosen.unary_unary

    async def deliver(raw: bytes, context: Any) -> Any:
        return await behaviour(parse(raw), context)

    return _raw, deliver


async def measure(callers: int, calls: int, repeats: int, handler: str = "none") -> dict[str, Any]:
    engine = Engine(MemoryStore(), [Receiver(CHANNEL, build_channel("noop", {}))])
    servicer = DeliveryServicer(engine, Limits())
    make, deliver = _deliver(servicer, handler)
    context: Any = _Context()
    indices = count()

    async def caller(share: int) -> None:
        for _ in range(share):
            answer = await deliver(make(next(indices)), context)
            answer.SerializeToString()

    started = time.process_time()
    for _ in range(calls):
        make(next(indices))  # what building a request costs
    building = (time.process_time() - started) / calls

    await asyncio.gather(*(caller(calls // callers // 4) for _ in range(callers)))  # warm-up
    samples = []
    for _ in range(repeats):
        started = time.process_time()
        await asyncio.gather(*(caller(calls // callers) for _ in range(callers)))
        elapsed = time.process_time() - started
        samples.append(elapsed / (calls // callers * callers) - building)
    return {
        "handler": handler,
        "callers": callers,
        "calls": calls,
        "us_per_deliver": round(min(samples) * 1e6, 1),
        "us_samples": [round(sample * 1e6, 1) for sample in samples],
        "records": len(engine.store),  # type: ignore[arg-type]
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--calls", type=int, default=32_000, help="per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--log-level", default="warning", help="info: with the attempt log line")
    parser.add_argument(
        "--handler",
        action="append",
        choices=["none", "generated", "served"],
        help="drive Deliver through this method handler (repeatable); none: the servicer",
    )
    args = parser.parse_args()
    # Log lines as the server formats them, written to /dev/null by the writer thread.
    handler = configure(args.log_level, "text", open("/dev/null", "w"))  # noqa: SIM115
    try:
        for chosen in args.handler or ["none"]:
            result = asyncio.run(measure(args.callers, args.calls, args.repeats, chosen))
            result["log_level"] = args.log_level
            print(json.dumps(result), flush=True)
    finally:
        handler.close()
        logging.getLogger().handlers.clear()
    return 0


if __name__ == "__main__":
    sys.exit(main())
