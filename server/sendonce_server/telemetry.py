"""Metrics (Prometheus, OpenTelemetry names), traces (W3C context from the caller) and log ids.

Metric attributes come from closed sets only (receiver names, outcomes, results, states), never
from uids, so the series count stays bounded by the configuration.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sized
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, NoOpMeterProvider, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Histogram

from . import __version__
from .config import TRACES_OFF, tracing_configured
from .engine.engine import Engine
from .engine.model import CircuitState, DeliveryResult, Key, Outcome
from .engine.observer import AttemptObservation
from .engine.ports import SendStatus

log = logging.getLogger("sendonce.telemetry")

# Seconds, from a 1 ms webhook on loopback to a 30 s receiver timeout.
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)  # fmt: skip
# The codes OpenTelemetry's gRPC conventions mark as a server span's error; the others (bad
# input, not found, a precondition, ...) are the caller's to act on.
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_CIRCUIT_LEVEL = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    # Parent-based: a caller's sampled trace is always continued; new roots use this ratio.
    trace_sample_ratio: float = 0.1


class _Attempt:
    """One attempt being observed; also its own context manager (cheaper than a generator)."""

    __slots__ = ("_receiver", "_span", "_started", "_telemetry", "finished_status")

    def __init__(self, telemetry: Telemetry, receiver: str, number: int) -> None:
        self._telemetry = telemetry
        self._receiver = receiver
        self.finished_status: SendStatus | None = None
        self._span: AbstractContextManager[trace.Span] | None = None
        # A child span only in a trace that is recorded: most calls are not sampled.
        if trace.get_current_span().is_recording():
            self._span = telemetry.tracer.start_as_current_span(
                "sendonce.attempt",
                attributes={"sendonce.receiver": receiver, "sendonce.attempt": number},
            )
        self._started = time.perf_counter()

    def __enter__(self) -> _Attempt:
        counts = self._telemetry
        counts.attempts[self._receiver] = counts.attempts.get(self._receiver, 0) + 1
        counts.in_flight[self._receiver] = counts.in_flight.get(self._receiver, 0) + 1
        if self._span is not None:
            self._span.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        counts = self._telemetry
        counts.in_flight[self._receiver] -= 1
        if self._span is not None:
            span = trace.get_current_span()
            if self.finished_status is not None:
                span.set_attribute("sendonce.result", self.finished_status.value)
                if self.finished_status is not SendStatus.SUCCESS:
                    span.set_status(Status(StatusCode.ERROR))
            self._span.__exit__(*exc)  # type: ignore[arg-type]

    def finished(self, status: SendStatus) -> None:
        self.finished_status = status
        self._telemetry.attempt_duration.observe(
            time.perf_counter() - self._started, self._receiver, status.value
        )


class Durations:
    """A histogram of seconds in the Prometheus registry, its labelled children cached.

    prometheus_client's own, the cheapest histogram to observe on the Deliver path (which makes
    two; docs/performance.md has the measurements). Without a registry (metrics off) it
    observes nothing.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        registry: CollectorRegistry | None,
    ) -> None:
        self._histogram = None
        if registry is not None:
            self._histogram = Histogram(
                name, documentation, labels, buckets=DURATION_BUCKETS, registry=registry
            )
        self._children: dict[tuple[str, ...], Any] = {}

    def observe(self, seconds: float, *values: str) -> None:
        if self._histogram is None:
            return
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._histogram.labels(*values)
        child.observe(seconds)


class Telemetry:
    """The engine's observer: turns its reports into metrics and spans.

    Counts are plain integers read by observable instruments when Prometheus scrapes, so the
    Deliver path pays an integer increment per count, not a synchronous instrument's
    measurement. Durations are prometheus_client histograms in the same registry (two a call,
    see `Durations`).
    """

    def __init__(
        self,
        meters: MeterProvider | None,
        tracing: TracerProvider | None,
        engine: Engine | None,
        sample_ratio: float = 0.1,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.meters = meters
        self.tracing = tracing
        # Share of new traces sampled; 0 without tracing (no span is ever built then).
        self.sample_ratio = sample_ratio if tracing is not None else 0.0
        self.tracer = (tracing or trace.NoOpTracerProvider()).get_tracer("sendonce", __version__)
        meter = (meters or NoOpMeterProvider()).get_meter("sendonce", __version__)
        self.deliveries: dict[tuple[str, Outcome], int] = {}
        self.shared: dict[str, int] = {}
        self.attempts: dict[str, int] = {}
        self.in_flight: dict[str, int] = {}
        meter.create_observable_counter(
            "sendonce.deliveries",
            callbacks=[self._deliveries],
            unit="{call}",
            description="Deliver answers by outcome",
        )
        meter.create_observable_counter(
            "sendonce.deliveries.shared",
            callbacks=[lambda _: _by_receiver(self.shared)],
            unit="{call}",
            description="Deliver calls that shared a concurrent call's attempt",
        )
        meter.create_observable_counter(
            "sendonce.attempts",
            callbacks=[lambda _: _by_receiver(self.attempts)],
            unit="{attempt}",
            description="Attempts started",
        )
        meter.create_observable_up_down_counter(
            "sendonce.attempts.in_flight",
            callbacks=[lambda _: _by_receiver(self.in_flight)],
            unit="{attempt}",
            description="Attempts running",
        )
        # The names the OpenTelemetry exporter would give "sendonce.attempt.duration" and
        # "rpc.server.call.duration" (unit s), with the same labels.
        self.attempt_duration = Durations(
            "sendonce_attempt_duration_seconds",
            "Duration of attempts",
            ("receiver", "result"),
            registry,
        )
        self.rpc_duration = Durations(
            "rpc_server_call_duration_seconds",
            "Duration of gRPC calls",
            ("rpc_method", "rpc_grpc_status_code"),
            registry,
        )
        self._engine = engine
        meter.create_observable_gauge(
            "sendonce.store.records",
            callbacks=[self._records],
            unit="{record}",
            description="Records held by an in-process store",
        )
        meter.create_observable_gauge(
            "sendonce.circuit.state",
            callbacks=[self._circuits],
            description="Circuit breaker per receiver: 0 closed, 1 half-open, 2 open",
        )

    def answered(self, key: Key, result: DeliveryResult) -> None:
        receiver = key.channel
        count = (receiver, result.outcome)
        self.deliveries[count] = self.deliveries.get(count, 0) + 1
        if result.shared:
            self.shared[receiver] = self.shared.get(receiver, 0) + 1
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(
                {
                    "sendonce.uid": key.uid,
                    "sendonce.receiver": receiver,
                    "sendonce.outcome": result.outcome.value,
                    "sendonce.attempt": result.attempt,
                    "sendonce.shared": result.shared,
                }
            )

    def attempt(
        self, receiver: str, key: Key, number: int
    ) -> AbstractContextManager[AttemptObservation]:
        return _Attempt(self, receiver, number)

    def _deliveries(self, options: CallbackOptions) -> Iterable[Observation]:
        for (receiver, outcome), count in list(self.deliveries.items()):
            yield Observation(count, {"receiver": receiver, "outcome": outcome.value})

    def _records(self, options: CallbackOptions) -> Iterable[Observation]:
        store = self._engine.store if self._engine is not None else None
        if isinstance(store, Sized):
            yield Observation(len(store))

    def _circuits(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._engine is None:
            return
        for name, breaker in self._engine.breakers.items():
            yield Observation(_CIRCUIT_LEVEL[breaker.state], {"receiver": name})

    def shutdown(self) -> None:
        if self.tracing is not None:
            self.tracing.shutdown()
        if self.meters is not None:
            self.meters.shutdown()


def _trace_exporter() -> Any | None:
    """OTLP when the standard OTEL_* variables ask for it; none by default."""
    if not tracing_configured():
        return None
    chosen = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if chosen == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if chosen not in ("", "otlp"):
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported; traces are not exported", chosen)
        return None
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    if protocol != "grpc":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s: only grpc is supported", protocol)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter,
    )

    return OTLPSpanExporter()


def _spans_go_to(exporter: Any | None, ratio: float) -> str:
    """Where spans go, for the startup line: an endpoint's host and port, never its query."""
    if exporter is None:
        return TRACES_OFF
    sampling = f"{ratio:g} of new traces sampled, a caller's sampled trace always continued"
    if type(exporter).__name__ == "ConsoleSpanExporter":
        return f"printed on stdout; {sampling}"
    endpoint = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or "http://localhost:4317"
    )
    parts = urlsplit(endpoint)
    where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if parts.netloc else endpoint
    return f"exported over OTLP/gRPC to {where}; {sampling}"


def setup(
    settings: TelemetrySettings, engine: Engine, registry: CollectorRegistry | None = None
) -> Telemetry:
    """Metrics into `registry` (none without one) and tracing as the OTEL_* variables ask."""
    resource = Resource.create({"service.name": "sendonce", "service.version": __version__})
    meters = None
    if registry is not None:
        reader = PrometheusMetricReader(registry=registry)
        meters = MeterProvider(
            metric_readers=[reader],
            resource=resource,
            # Exemplars would cost every measurement a trace lookup; Prometheus text drops them.
            exemplar_filter=AlwaysOffExemplarFilter(),
        )
    tracing = None
    exporter = _trace_exporter()
    log.info("traces: %s", _spans_go_to(exporter, settings.trace_sample_ratio))
    if exporter is not None:
        # New roots are sampled by the interceptor (at the ratio) before a span is built; the
        # SDK then follows the parent, which is how every span below a server span is sampled.
        tracing = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_ON))
        tracing.add_span_processor(BatchSpanProcessor(exporter))
    telemetry = Telemetry(
        meters, tracing, engine, sample_ratio=settings.trace_sample_ratio, registry=registry
    )
    engine.observer = telemetry
    return telemetry


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class TelemetryInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """A server span per call, continuing the caller's W3C trace, and the call's duration."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        # Keyed by method *and* handler: an inner interceptor (the token check, the shutdown
        # gate) answers one method with its refusal on one call and the real handler on the next.
        # The handler is kept in the value so that its id is never reused.
        self._wrapped: dict[tuple[str, int], tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method
        key = (method, id(handler))
        cached = self._wrapped.get(key)
        if cached is None:
            cached = self._wrapped[key] = (handler, self._wrap(method, handler))
        return cached[1]

    def _wrap(self, method: str, handler: Handler) -> Handler:
        inner: Any = handler.unary_unary
        tracer = self.telemetry.tracer
        duration = self.telemetry.rpc_duration
        service, _, name = method.lstrip("/").partition("/")

        ratio = self.telemetry.sample_ratio
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            parent = _remote_parent(context.invocation_metadata())
            # Parent-based sampling, decided before any span object exists: most calls are
            # not sampled, and a span built only to be dropped would cost every call.
            if parent is None:
                sampled = random.random() < ratio
            else:
                sampled = trace.get_current_span(parent).get_span_context().trace_flags.sampled
            code = grpc.StatusCode.OK
            try:
                if not sampled:
                    if parent is None:
                        return await inner(request, context)
                    # Not recorded, but the caller's trace id still reaches the log lines.
                    token = otel_context.attach(parent)
                    try:
                        return await inner(request, context)
                    finally:
                        otel_context.detach(token)
                with tracer.start_as_current_span(
                    method.lstrip("/"),
                    context=parent,
                    kind=SpanKind.SERVER,
                    attributes=attributes,
                    record_exception=False,
                    set_status_on_exception=False,
                ) as span:
                    try:
                        return await inner(request, context)
                    except BaseException:
                        code = _code(context)
                        raise
                    finally:
                        # OpenTelemetry's RPC conventions: the code as an int on every span; an
                        # error only for the codes that are the server's fault.
                        span.set_attribute("rpc.grpc.status_code", code.value[0])
                        if code in SERVER_FAULTS:
                            span.set_status(Status(StatusCode.ERROR, code.name))
            except BaseException:
                code = _code(context)
                raise
            finally:
                duration.observe(time.perf_counter() - started, name, code.name)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _by_receiver(counts: dict[str, int]) -> Iterable[Observation]:
    # A copy: the scrape runs on the HTTP server's thread while the loop counts on.
    return [Observation(count, {"receiver": name}) for name, count in list(counts.items())]


def _remote_parent(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context | None:
    """The caller's W3C trace context, when it sent one."""
    pairs = tuple(metadata or ())
    if not any(key == "traceparent" for key, _ in pairs):
        return None  # most calls: no carrier is built
    return propagate.extract({key: value for key, value in pairs if isinstance(value, str)})


def _code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    status = context.code()
    return status if isinstance(status, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
