"""What telemetry itself costs a Deliver, measured without the noise of a loaded machine.

    python -m bench.telemetry_cost

Times, in CPU microseconds per call, the server interceptor (rpc duration, parent-based
sampling at 10 %, a span for sampled calls) around the engine's observers (one attempt, one
answer), against the bare handler. Compare with the server CPU per Deliver in the main
bench's table (srv CPU s/1k): the share is the telemetry overhead on the Deliver path. The
span export (a background thread, 10 % of calls) is not included: the main bench's
telemetry row includes it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from prometheus_client import CollectorRegistry

from sendonce_server.engine.model import DeliveryResult, Key, Outcome
from sendonce_server.engine.ports import SendStatus
from sendonce_server.telemetry import Telemetry, TelemetryInterceptor

CALLS = 20_000
KEY = Key("6d1f0c1e-0b7a-4a5e-9d52-1f3e1c2b9a77", "hook")
ANSWER = DeliveryResult(Outcome.DELIVERED, 1, 1, 5)


class _Context:
    """The part of a servicer context the interceptor reads."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("user-agent", "grpc-python/1.85"),)

    def code(self) -> None:
        return None


async def _per_call(handler: Any, context: _Context) -> float:
    started = time.process_time()
    for _ in range(CALLS):
        await handler(b"", context)
    return (time.process_time() - started) / CALLS * 1e6


async def main() -> None:
    tracing = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    tracing.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    registry = CollectorRegistry()
    meters = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)],
        exemplar_filter=AlwaysOffExemplarFilter(),
    )
    telemetry = Telemetry(meters, tracing, None, sample_ratio=0.1, registry=registry)

    async def observed_engine(request: bytes, context: Any) -> bytes:
        with telemetry.attempt("hook", KEY, 1) as attempt:
            attempt.finished(SendStatus.SUCCESS)
        telemetry.answered(KEY, ANSWER)
        return b""

    async def bare(request: bytes, context: Any) -> bytes:
        return b""

    handler = grpc.unary_unary_rpc_method_handler(observed_engine)
    wrapped = TelemetryInterceptor(telemetry)._wrap("/sendonce.v1.DeliveryService/Deliver", handler)
    context = _Context()
    rows = [
        ("bare handler", await _per_call(bare, context)),
        ("engine observers (attempt + answer)", await _per_call(observed_engine, context)),
        ("interceptor + observers", await _per_call(wrapped.unary_unary, context)),
    ]
    print("| telemetry work per Deliver | CPU µs |\n|---|---|")
    for name, micros in rows:
        print(f"| {name} | {micros:.1f} |")


if __name__ == "__main__":
    asyncio.run(main())
