"""The echo floor: a bare grpc.aio server with one no-op unary method.

`/bench.Echo/Call` takes any request bytes and answers a fixed, pre-serialised DeliverResponse
(the size of a real DELIVERED answer): no protobuf parsing, no interceptor, no logging. It is the
fastest a Python gRPC sidecar can answer on this machine, the floor the scenarios are divided by.
It runs on the event loop sendonce-server runs on (uvloop when installed).
Health is served too, so the bench waits for it the same way as for sendonce-server.

With --otlp it also sinks OTLP/gRPC exports (traces, metrics, logs), counting them, so the
telemetry scenario exports to a real endpoint. Counts are printed to stdout on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from sendonce.v1 import delivery_pb2 as pb

ECHO_METHOD = "/bench.Echo/Call"
# The same with protobuf both ways, as a generated servicer has it: the floor of any handler
# that reads its request, before it does anything with it.
TYPED_METHOD = "/bench.Echo/Typed"


def delivered() -> pb.DeliverResponse:
    """The answer of a real DELIVERED attempt (its size), without a Deliver behind it."""
    return pb.DeliverResponse(
        outcome=pb.OUTCOME_DELIVERED,
        attempt=1,
        attempts_used=1,
        max_attempts=5,
        final=True,
        receipt=pb.Receipt(reference="noop"),
    )


RESPONSE = delivered().SerializeToString()
_OTLP_SERVICES = (
    "opentelemetry.proto.collector.trace.v1.TraceService",
    "opentelemetry.proto.collector.metrics.v1.MetricsService",
    "opentelemetry.proto.collector.logs.v1.LogsService",
)


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return RESPONSE


async def _typed(
    request: pb.DeliverRequest,
    context: grpc.aio.ServicerContext[pb.DeliverRequest, pb.DeliverResponse],
) -> pb.DeliverResponse:
    return delivered()


def _sink(counts: dict[str, int]) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    handlers = {}
    for service in _OTLP_SERVICES:
        kind = service.split(".")[3]

        async def export(
            request: bytes, context: grpc.aio.ServicerContext[bytes, bytes], kind: str = kind
        ) -> bytes:
            counts[f"{kind}_exports"] = counts.get(f"{kind}_exports", 0) + 1
            counts[f"{kind}_bytes"] = counts.get(f"{kind}_bytes", 0) + len(request)
            return b""  # an empty Export*ServiceResponse: everything accepted

        handlers[service] = grpc.method_handlers_generic_handler(
            service, {"Export": grpc.unary_unary_rpc_method_handler(export)}
        )
    return _Several(list(handlers.values()))


class _Several(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, handlers: list[grpc.GenericRpcHandler]) -> None:  # type: ignore[type-arg]
        self._handlers = handlers

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        for handler in self._handlers:
            found = handler.service(handler_call_details)
            if found is not None:
                return found
        return None


async def serve(listen: str, unix_socket: str | None, otlp: bool) -> dict[str, int]:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Echo",
                {
                    "Call": grpc.unary_unary_rpc_method_handler(_echo),
                    "Typed": grpc.unary_unary_rpc_method_handler(
                        _typed,
                        request_deserializer=pb.DeliverRequest.FromString,
                        response_serializer=pb.DeliverResponse.SerializeToString,
                    ),
                },
            ),
        )
    )
    counts: dict[str, int] = {}
    if otlp:
        server.add_generic_rpc_handlers((_sink(counts),))
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    if listen:
        server.add_insecure_port(listen)
    if unix_socket:
        server.add_insecure_port(f"unix:{unix_socket}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:50052", help="host:port; empty: none")
    parser.add_argument("--unix-socket", default=None)
    parser.add_argument("--otlp", action="store_true", help="also sink OTLP/gRPC exports")
    args = parser.parse_args()
    # The event loop sendonce-server runs on (its --event-loop auto), so the floor is as fast.
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        counts = runner.run(serve(args.listen, args.unix_socket, args.otlp))
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
