"""Telemetry of a real sidecar: the Prometheus scrape, the spans of a Deliver continuing the
caller's W3C trace, and the JSON log lines of the real process."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from google.protobuf.duration_pb2 import Duration
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from sendonce.v1 import delivery_pb2 as pb
from sendonce_server import telemetry
from sendonce_server.config import ConfigError, ServerSettings
from sendonce_server.logs import TraceIdFilter
from sendonce_server.server import start
from tests.server.conftest import Running, StartSidecar
from tests.server.process import Children, free_tcp_port
from tests.support.http_receiver import HttpReceiver, Reply
from tests.support.wait import until

NOTE = pb.Notification(subject="Deployment web failed", body="3 of 3 pods crashlooping")
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_SPAN_ID = 0x00F067AA0BA902B7


def deliver(uid: str, channel: str = "hook", **fields: Any) -> pb.DeliverRequest:
    return pb.DeliverRequest(uid=uid, channel=channel, notification=NOTE, **fields)


def traceparent(trace_id: int = TRACE_ID, sampled: bool = True) -> tuple[tuple[str, str], ...]:
    flags = "01" if sampled else "00"
    return (("traceparent", f"00-{trace_id:032x}-{PARENT_SPAN_ID:016x}-{flags}"),)


# ---------------------------------------------------------------------------------------------
# Metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(address: str) -> tuple[str, Samples]:
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"http://{address}/metrics", timeout=10)
    reply.raise_for_status()
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }
    return reply.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The value of the one sample with this name whose labels include `labels`."""
    wanted = set(labels.items())
    found = [v for (n, have), v in samples.items() if n == name and wanted <= have]
    assert len(found) == 1, f"{len(found)} samples {name}{labels}: {sorted(samples)}"
    return found[0]


async def test_metrics_count_by_receiver_and_outcome_and_never_name_a_uid(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    async with HttpReceiver(500) as failing:
        metrics = f"127.0.0.1:{free_tcp_port()}"
        sidecar = await start_sidecar(
            {
                "receivers": [
                    {"name": "hook", "type": "webhook", "settings": {"url": http_receiver.url}},
                    {
                        "name": "down",
                        "type": "webhook",
                        "breaker": {"failures": 1, "open_seconds": 60},
                        "settings": {"url": failing.url},
                    },
                ]
            },
            metrics_listen=metrics,
        )
        stub, engine = sidecar.stub, sidecar.sidecar.engine

        solo = await stub.Deliver(deliver("uid-solo-7Hq2"))
        http_receiver.hold()
        herd = [asyncio.ensure_future(stub.Deliver(deliver("uid-herd-Xw9k"))) for _ in range(200)]
        await http_receiver.wait_for_hits(2)
        await until(lambda: engine.waiting == 200)
        _, during = await scrape(metrics)
        http_receiver.release()
        shared = await asyncio.gather(*herd)
        failed = await stub.Deliver(deliver("uid-down-Pz4m", "down"))
        refused = await stub.Deliver(deliver("uid-open-Lc8r", "down"))
        text, after = await scrape(metrics)

    assert solo.outcome == pb.OUTCOME_DELIVERED
    assert sum(answer.shared for answer in shared) == 199
    assert (failed.outcome, refused.outcome) == (pb.OUTCOME_FAILED, pb.OUTCOME_CIRCUIT_OPEN)
    assert (http_receiver.hits, failing.hits) == (2, 1)

    deliveries = "sendonce_deliveries_total"
    assert value(after, deliveries, receiver="hook", outcome="delivered") == 201
    assert value(after, deliveries, receiver="down", outcome="failed") == 1
    assert value(after, deliveries, receiver="down", outcome="circuit_open") == 1
    assert value(after, "sendonce_deliveries_shared_total", receiver="hook") == 199
    assert value(after, "sendonce_attempts_total", receiver="hook") == 2
    assert value(after, "sendonce_attempts_total", receiver="down") == 1
    assert value(during, "sendonce_attempts_in_flight", receiver="hook") == 1
    assert value(after, "sendonce_attempts_in_flight", receiver="hook") == 0

    duration = "sendonce_attempt_duration_seconds"
    buckets = {
        float(dict(labels)["le"])
        for (name, labels), _ in after.items()
        if name == f"{duration}_bucket" and ("receiver", "hook") in labels
    }
    assert {0.001, 30.0, float("inf")} <= buckets, sorted(buckets)
    assert value(after, f"{duration}_count", receiver="hook", result="success") == 2
    assert value(after, f"{duration}_count", receiver="down", result="retryable") == 1

    assert value(after, "sendonce_store_records") == len(engine.store)  # type: ignore[arg-type]
    assert value(after, "sendonce_store_records") >= 3
    assert value(after, "sendonce_circuit_state", receiver="hook") == 0
    assert value(after, "sendonce_circuit_state", receiver="down") == 2

    rpc = "rpc_server_call_duration_seconds_count"
    assert value(after, rpc, rpc_method="Deliver", rpc_grpc_status_code="OK") == 203

    # Labels come from closed sets: no uid, in any series or help text.
    assert "uid-" not in text
    assert not [word for word in ("7Hq2", "Xw9k", "Pz4m", "Lc8r") if word in text]


async def test_the_metrics_port_is_released_when_the_sidecar_stops() -> None:
    port = free_tcp_port()
    sidecar = await start(ServerSettings(listen="127.0.0.1:0", metrics_listen=f"127.0.0.1:{port}"))
    await scrape(f"127.0.0.1:{port}")
    await sidecar.stop()

    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "still serving /metrics after stop"


async def test_a_metrics_address_that_cannot_be_used_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ConfigError, match=f"cannot serve the admin port on {re.escape(busy)}"):
            await start(ServerSettings(listen="127.0.0.1:0", metrics_listen=busy))
    with pytest.raises(ConfigError, match=r"cannot serve the admin port on 127\.0\.0\.1:http"):
        await start(ServerSettings(listen="127.0.0.1:0", metrics_listen="127.0.0.1:http"))


# ---------------------------------------------------------------------------------------------
# Traces


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """Spans exported by the sidecar's own tracing setup, kept in memory instead of OTLP."""
    exporter = InMemorySpanExporter()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")  # the standard switch that turns it on
    monkeypatch.setattr(telemetry, "_trace_exporter", lambda: exporter)
    return exporter


def finished(sidecar: Running, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    tracing = sidecar.sidecar.telemetry.tracing if sidecar.sidecar.telemetry else None
    assert tracing is not None
    assert tracing.force_flush()
    return list(exporter.get_finished_spans())


def webhook(receiver: HttpReceiver) -> dict[str, Any]:
    return {"receivers": [{"name": "hook", "type": "webhook", "settings": {"url": receiver.url}}]}


async def test_a_deliver_continues_the_callers_trace_with_the_attempt_as_child(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver, spans: InMemorySpanExporter
) -> None:
    # Ratio 0: only the callers' sampled parents make these spans recorded.
    sidecar = await start_sidecar(webhook(http_receiver), trace_sample_ratio=0.0)
    other_trace = TRACE_ID + 1
    http_receiver.hold()
    leader = asyncio.ensure_future(
        sidecar.stub.Deliver(deliver("uid-traced"), metadata=traceparent(TRACE_ID))
    )
    await http_receiver.wait_for_hits(1)
    joiner = asyncio.ensure_future(
        sidecar.stub.Deliver(deliver("uid-traced"), metadata=traceparent(other_trace))
    )
    await until(lambda: sidecar.sidecar.engine.waiting == 2)
    http_receiver.release()
    await asyncio.gather(leader, joiner)

    recorded = finished(sidecar, spans)
    by_trace = {
        trace: [s for s in recorded if s.context is not None and s.context.trace_id == trace]
        for trace in (TRACE_ID, other_trace)
    }
    assert len(recorded) == 3, [s.name for s in recorded]
    (call, attempt) = sorted(by_trace[TRACE_ID], key=lambda s: s.name != DELIVER_SPAN)
    (shared_call,) = by_trace[other_trace]

    for server_span in (call, shared_call):
        assert server_span.name == DELIVER_SPAN
        assert server_span.kind is SpanKind.SERVER
        assert server_span.parent is not None
        assert server_span.parent.span_id == PARENT_SPAN_ID
        assert server_span.parent.is_remote
    assert call.attributes is not None
    assert shared_call.attributes is not None
    assert call.attributes["sendonce.outcome"] == "delivered"
    assert call.attributes["sendonce.shared"] is False
    assert call.attributes["rpc.system"] == "grpc"
    assert shared_call.attributes["sendonce.shared"] is True

    assert attempt.name == "sendonce.attempt"
    assert attempt.parent is not None
    assert call.context is not None
    assert attempt.parent.span_id == call.context.span_id
    assert dict(attempt.attributes or {}) == {
        "sendonce.receiver": "hook",
        "sendonce.attempt": 1,
        "sendonce.result": "success",
    }


DELIVER_SPAN = "sendonce.v1.DeliveryService/Deliver"


@pytest.mark.parametrize(
    ("ratio", "parent", "recorded"),
    [
        (0.0, None, 0),  # a new trace at ratio 0: nothing
        (1.0, None, 2),  # a new trace at ratio 1: the call and its attempt, as a new root
        (0.0, "sampled", 2),  # the caller's sampled trace is always continued
        (1.0, "unsampled", 0),  # and the caller's decision not to sample is kept
    ],
)
async def test_sampling_follows_the_parent_then_the_ratio(
    start_sidecar: StartSidecar,
    http_receiver: HttpReceiver,
    spans: InMemorySpanExporter,
    ratio: float,
    parent: str | None,
    recorded: int,
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver), trace_sample_ratio=ratio)
    metadata = traceparent(sampled=parent == "sampled") if parent else None

    answer = await sidecar.stub.Deliver(deliver("uid-sampling"), metadata=metadata)

    assert answer.outcome == pb.OUTCOME_DELIVERED
    got = finished(sidecar, spans)
    assert sorted(s.name for s in got) == sorted([DELIVER_SPAN, "sendonce.attempt"][:recorded])
    if got and parent is None:
        assert {s.context.trace_id for s in got if s.context} != {TRACE_ID}
        assert [s.parent for s in got if s.name == DELIVER_SPAN] == [None]


async def test_spans_carry_the_status_code_and_mark_only_server_faults_as_errors(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver, spans: InMemorySpanExporter
) -> None:
    """OpenTelemetry's RPC conventions: `rpc.grpc.status_code` as an int on every span, an
    error status only for codes that are the server's fault."""
    sidecar = await start_sidecar(webhook(http_receiver), trace_sample_ratio=1.0)
    ok = await sidecar.stub.Deliver(deliver("uid-span-ok"))
    with pytest.raises(grpc.aio.AioRpcError) as not_found:
        await sidecar.stub.Deliver(deliver("uid-span-nf", channel="nowhere"))
    sidecar.sidecar.gate.closed = True  # as at shutdown: UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError) as unavailable:
        await sidecar.stub.Deliver(deliver("uid-span-down"))
    sidecar.sidecar.gate.closed = False

    assert ok.outcome == pb.OUTCOME_DELIVERED
    assert not_found.value.code() is grpc.StatusCode.NOT_FOUND
    assert unavailable.value.code() is grpc.StatusCode.UNAVAILABLE
    calls = [s for s in finished(sidecar, spans) if s.name == DELIVER_SPAN]
    seen = [
        (dict(s.attributes or {}).get("rpc.grpc.status_code"), s.status.status_code) for s in calls
    ]
    assert seen == [
        (0, StatusCode.UNSET),
        (5, StatusCode.UNSET),  # NOT_FOUND: the caller's to fix
        (14, StatusCode.ERROR),  # UNAVAILABLE: the server's
    ]
    assert dict(calls[0].attributes or {})["sendonce.uid"] == "uid-span-ok"
    assert not calls[1].events, "no exception event for a refusal"


async def test_an_unsampled_callers_trace_id_still_reaches_the_log_lines(
    start_sidecar: StartSidecar,
    http_receiver: HttpReceiver,
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver), trace_sample_ratio=0.0)
    caplog.handler.addFilter(TraceIdFilter())
    caplog.set_level(logging.INFO, logger="sendonce.engine")

    await sidecar.stub.Deliver(deliver("uid-unsampled"), metadata=traceparent(sampled=False))
    await sidecar.stub.Deliver(deliver("uid-no-parent"))

    assert finished(sidecar, spans) == []
    lines = {r.uid: getattr(r, "trace_id", None) for r in caplog.records if hasattr(r, "uid")}
    assert lines == {"uid-unsampled": f"{TRACE_ID:032x}", "uid-no-parent": None}


async def test_the_start_says_where_spans_go(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO)
    sidecar = await start(ServerSettings(listen="127.0.0.1:0"))
    await sidecar.stop()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://user:pw@otel-collector:4317")
    sidecar = await start(ServerSettings(listen="127.0.0.1:0", trace_sample_ratio=0.25))
    await sidecar.stop()

    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("traces: ")]
    assert said == [
        "traces: not exported (set OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER)",
        "traces: exported over OTLP/gRPC to http://otel-collector:4317; 0.25 of new traces "
        "sampled, a caller's sampled trace always continued",
    ]


# ---------------------------------------------------------------------------------------------
# Logs of the real process


@pytest_asyncio.fixture
async def children() -> AsyncIterator[Children]:
    async with Children() as started:
        yield started


async def test_json_log_lines_one_per_attempt_with_trace_id_and_no_secret(
    children: Children,
    tmp_path: Path,
    http_receiver: HttpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path_token, query_token = "T0SECRETpathKq71", "qSECRETtoken9Zx4"
    signing_key = base64.b64encode(b"k" * 32).decode()
    secrets = [path_token, query_token, signing_key]
    monkeypatch.setenv("HOOK_URL", f"{http_receiver.url}/hooks/{path_token}?token={query_token}")
    monkeypatch.setenv("HOOK_SIGNING", f"whsec_{signing_key}")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")  # spans on stdout, logs on stderr
    config = tmp_path / "receivers.toml"
    config.write_text(
        '[[receivers]]\nname = "hook"\ntype = "webhook"\n'
        '[receivers.settings]\nurl_secret = { env = "HOOK_URL" }\n'
        'signing_secret = { env = "HOOK_SIGNING" }\n'
    )
    sidecar = await children.replica("--config", str(config), "--log-format", "json")
    retry = pb.RetryPolicy(max_attempts=3, initial_backoff=Duration(nanos=1_000_000), jitter=0.0)

    async with sidecar.stub() as stub:
        traced = await stub.Deliver(deliver("uid-log-traced"), metadata=traceparent())
        # The receiver then refuses once, quoting the URL it was called on, as some do.
        http_receiver.respond(Reply(500, body=f"no hook /hooks/{path_token}?t={query_token}"), 200)
        answers = [await stub.Deliver(deliver("uid-log-retried", retry_policy=retry))]
        for _ in range(1000):  # a caller's retry loop; the backoff is 1 ms
            if answers[-1].outcome == pb.OUTCOME_DELIVERED:
                break
            answers.append(await stub.Deliver(deliver("uid-log-retried", retry_policy=retry)))
    assert await sidecar.terminate() == 0

    assert traced.outcome == pb.OUTCOME_DELIVERED
    assert answers[0].outcome == pb.OUTCOME_FAILED
    assert http_receiver.hits == 3
    entries = [json.loads(line) for line in sidecar.stderr.lines]  # every line is JSON
    attempts = [e for e in entries if e["message"] == "attempt finished"]
    assert [(e["uid"], e["receiver"], e["attempt"], e["outcome"]) for e in attempts] == [
        ("uid-log-traced", "hook", 1, "success"),
        ("uid-log-retried", "hook", 1, "retryable"),
        ("uid-log-retried", "hook", 2, "success"),
    ]
    assert all(isinstance(e["duration_ms"], float | int) for e in attempts)
    assert attempts[0]["trace_id"] == f"{TRACE_ID:032x}"
    assert attempts[1]["error"].startswith("HTTP 500")
    output = sidecar.stderr.text + sidecar.stdout.text
    assert "sendonce.attempt" in sidecar.stdout.text  # the spans were printed, and checked
    assert [secret for secret in secrets if secret in output] == []
