"""Security of a real sidecar, seen by real gRPC clients: bearer token, TLS and mutual TLS,
message and concurrency limits, the unix socket's permissions, and no port sharing."""

from __future__ import annotations

import asyncio
import logging
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sendonce.v1 import delivery_pb2 as pb
from sendonce.v1 import delivery_pb2_grpc
from sendonce_server.config import ConfigError, ReceiversFile, ServerSettings
from sendonce_server.server import Sidecar, start
from tests.server.conftest import StartSidecar
from tests.server.process import free_tcp_port
from tests.support.http_receiver import HttpReceiver
from tests.support.pki import Pki, make_pki

TOKEN = "tok-Zq8v3XkP0wLm"  # a throwaway test token
NOTE = pb.Notification(subject="Deployment web failed", body="3 of 3 pods crashlooping")


def webhook(receiver: HttpReceiver) -> dict[str, Any]:
    return {"receivers": [{"name": "hook", "type": "webhook", "settings": {"url": receiver.url}}]}


def deliver(uid: str = "uid-1", body: str = "3 of 3 pods crashlooping") -> pb.DeliverRequest:
    return pb.DeliverRequest(
        uid=uid, channel="hook", notification=pb.Notification(subject="Deploy failed", body=body)
    )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# ---------------------------------------------------------------------------------------------
# Bearer token


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n")  # the trailing newline of a mounted secret is not the token
    return path


@pytest.mark.parametrize("metrics", [False, True], ids=["plain", "with-metrics"])
async def test_deliver_needs_the_bearer_token(
    start_sidecar: StartSidecar,
    http_receiver: HttpReceiver,
    token_file: Path,
    caplog: pytest.LogCaptureFixture,
    metrics: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    # With metrics on, the telemetry interceptor wraps every handler: a refusal must stay a
    # refusal and the real handler must stay reachable, whichever came first.
    sidecar = await start_sidecar(
        webhook(http_receiver),
        auth_token_file=token_file,
        metrics_listen=f"127.0.0.1:{free_tcp_port()}" if metrics else None,
    )
    wrong = [None, bearer("wrong"), bearer(TOKEN + "x"), (("authorization", TOKEN),)]

    async def refusals() -> list[grpc.aio.AioRpcError]:
        errors = []
        for metadata in wrong:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await sidecar.stub.Deliver(deliver(), metadata=metadata, timeout=10)
            errors.append(refused.value)
        return errors

    before = await refusals()
    hits_before = http_receiver.hits
    answer = await sidecar.stub.Deliver(deliver(), metadata=bearer(TOKEN), timeout=10)
    after = await refusals()

    assert hits_before == 0
    assert answer.outcome == pb.OUTCOME_DELIVERED
    assert http_receiver.hits == 1
    errors = before + after
    assert [error.code() for error in errors] == [grpc.StatusCode.UNAUTHENTICATED] * len(errors)
    assert "authorization: Bearer <token>" in str(errors[0].details())
    # The token is in no error the callers saw and in no log record, fields included.
    assert not [e for e in errors if TOKEN in f"{e.details()} {e.debug_error_string()}"]
    assert caplog.records, "the sidecar logged nothing: the check below would prove nothing"
    assert not [r for r in caplog.records if TOKEN in f"{r.getMessage()} {vars(r)}"]


async def test_health_stays_open_but_reflection_needs_the_token(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver, token_file: Path
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver), auth_token_file=token_file)
    health = health_pb2_grpc.HealthStub(sidecar.channel)
    reflection = reflection_pb2_grpc.ServerReflectionStub(sidecar.channel)

    async def services(metadata: Any) -> list[str]:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        call = reflection.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=10)
        return [s.name async for answer in call for s in answer.list_services_response.service]

    checked = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await services(None)

    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "sendonce.v1.DeliveryService" in await services(bearer(TOKEN))


# ---------------------------------------------------------------------------------------------
# TLS and mutual TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def _deliver_over(
    address: str, credentials: grpc.ChannelCredentials, uid: str
) -> pb.DeliverResponse:
    async with grpc.aio.secure_channel(address, credentials) as channel:
        stub = delivery_pb2_grpc.DeliveryServiceStub(channel)
        answer: pb.DeliverResponse = await stub.Deliver(deliver(uid), timeout=10)
        return answer


async def test_tls_serves_a_client_that_trusts_the_ca_and_refuses_plaintext(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver, pki: Pki
) -> None:
    sidecar = await start_sidecar(
        webhook(http_receiver), tls_cert_file=pki.server_cert, tls_key_file=pki.server_key
    )

    with pytest.raises(grpc.aio.AioRpcError) as plaintext:
        await sidecar.stub.Deliver(deliver("uid-plain"), timeout=10)  # the fixture's channel
    answer = await _deliver_over(sidecar.address, pki.client_credentials(), "uid-tls")

    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
    assert answer.outcome == pb.OUTCOME_DELIVERED
    assert [request.json()["uid"] for request in http_receiver.requests] == ["uid-tls"]


async def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver, pki: Pki
) -> None:
    sidecar = await start_sidecar(
        webhook(http_receiver),
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.client_ca,
    )

    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await _deliver_over(sidecar.address, pki.client_credentials(), "uid-anonymous")
    # A certificate the client CA did not sign (the server's own, from another CA) is refused too.
    wrong_ca = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.server_key.read_bytes(), pki.server_cert.read_bytes()
    )
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await _deliver_over(sidecar.address, wrong_ca, "uid-foreign")
    answer = await _deliver_over(
        sidecar.address, pki.client_credentials(with_cert=True), "uid-mtls"
    )

    assert anonymous.value.code() == grpc.StatusCode.UNAVAILABLE
    assert foreign.value.code() == grpc.StatusCode.UNAVAILABLE
    assert answer.outcome == pb.OUTCOME_DELIVERED
    assert [request.json()["uid"] for request in http_receiver.requests] == ["uid-mtls"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"tls_cert_file": "server_cert"}, "TLS needs both --tls-cert-file and --tls-key-file"),
        ({"tls_key_file": "server_key"}, "TLS needs both --tls-cert-file and --tls-key-file"),
        ({"tls_client_ca_file": "client_ca"}, "--tls-client-ca-file needs --tls-cert-file"),
        (
            {"tls_cert_file": "server_cert", "tls_key_file": "missing"},
            "cannot read the TLS key file",
        ),
        (
            {
                "tls_cert_file": "server_cert",
                "tls_key_file": "server_key",
                "tls_client_ca_file": "missing",
            },
            "cannot read the client CA file",
        ),
        (
            {"tls_cert_file": "garbage", "tls_key_file": "server_key"},
            "are not a PEM certificate and its unencrypted private key",
        ),
        (
            {"tls_cert_file": "server_cert", "tls_key_file": "client_key"},  # not its key
            "are not a PEM certificate and its unencrypted private key",
        ),
        (
            {
                "tls_cert_file": "server_cert",
                "tls_key_file": "server_key",
                "tls_client_ca_file": "garbage",
            },
            r"--tls-client-ca-file .* holds no PEM certificate",
        ),
    ],
)
async def test_bad_tls_configuration_is_refused_with_a_readable_error(
    pki: Pki, tmp_path: Path, files: dict[str, str], message: str
) -> None:
    (tmp_path / "garbage").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    paths: dict[str, Any] = {n: getattr(pki, v, tmp_path / v) for n, v in files.items()}

    with pytest.raises(ConfigError, match=message) as refused:
        await start(ServerSettings(listen="127.0.0.1:0", **paths))

    assert "\n" not in str(refused.value)


async def test_an_unreadable_token_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the auth token file"):
        await start(ServerSettings(listen="127.0.0.1:0", auth_token_file=tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match=r"auth token file .* is empty"):
        await start(ServerSettings(listen="127.0.0.1:0", auth_token_file=tmp_path / "empty"))


# ---------------------------------------------------------------------------------------------
# Limits


async def test_calls_beyond_the_concurrency_limit_are_refused(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver), max_concurrent_rpcs=2)
    http_receiver.hold()
    held = [asyncio.ensure_future(sidecar.stub.Deliver(deliver(f"uid-{n}"))) for n in (1, 2)]
    await http_receiver.wait_for_hits(2)

    with pytest.raises(grpc.aio.AioRpcError) as third:
        await sidecar.stub.Deliver(deliver("uid-3"), timeout=5)
    http_receiver.release()
    answers = await asyncio.gather(*held)

    assert third.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [answer.outcome for answer in answers] == [pb.OUTCOME_DELIVERED] * 2
    assert sorted(request.json()["uid"] for request in http_receiver.requests) == [
        "uid-1",
        "uid-2",
    ]


async def test_health_answers_serving_while_slow_delivers_fill_the_limit(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver), max_concurrent_rpcs=4)
    http_receiver.hold()
    held = [asyncio.ensure_future(sidecar.stub.Deliver(deliver(f"uid-{n}"))) for n in range(8)]
    await http_receiver.wait_for_hits(4)
    health = health_pb2_grpc.HealthStub(sidecar.channel)

    liveness = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    readiness = await health.Check(
        health_pb2.HealthCheckRequest(service="sendonce.v1.DeliveryService"), timeout=2
    )
    http_receiver.release()
    answers = await asyncio.gather(*held, return_exceptions=True)

    assert liveness.status == health_pb2.HealthCheckResponse.SERVING
    assert readiness.status == health_pb2.HealthCheckResponse.SERVING
    codes = sorted(
        answer.code().name if isinstance(answer, grpc.aio.AioRpcError) else "OK"
        for answer in answers
    )
    assert codes == ["OK"] * 4 + ["RESOURCE_EXHAUSTED"] * 4
    assert "--max-concurrent-rpcs=4" in str(
        next(a for a in answers if isinstance(a, grpc.aio.AioRpcError)).details()
    )
    assert http_receiver.hits == 4


async def _never(requests: asyncio.Event) -> AsyncIterator[bytes]:
    await requests.wait()  # never set: the call sends its headers and never its message
    yield b""


async def test_peers_without_the_token_hold_no_slot_of_the_limit(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver, token_file: Path
) -> None:
    sidecar = await start_sidecar(
        webhook(http_receiver), auth_token_file=token_file, max_concurrent_rpcs=2
    )
    # Twice the limit of each way to hold a call: header-only Delivers and health Watches.
    never = asyncio.Event()
    headers_only = [
        sidecar.channel.stream_unary(
            "/sendonce.v1.DeliveryService/Deliver",
            request_serializer=bytes,
            response_deserializer=pb.DeliverResponse.FromString,
        )(_never(never))
        for _ in range(4)
    ]
    health = health_pb2_grpc.HealthStub(sidecar.channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(4)]
    for watch in watches:
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

    answers = [
        await sidecar.stub.Deliver(deliver(f"uid-{n}"), metadata=bearer(TOKEN), timeout=5)
        for n in range(3)
    ]
    # Without the token a call is answered from its headers: it cannot wait for ever.
    refusals = [await asyncio.wait_for(call.code(), 5) for call in headers_only]
    for watch in watches:
        watch.cancel()

    assert [answer.outcome for answer in answers] == [pb.OUTCOME_DELIVERED] * 3
    assert refusals == [grpc.StatusCode.UNAUTHENTICATED] * 4


async def test_a_call_that_never_sends_its_message_is_dropped_after_the_stall_timeout(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver), stalled_call_timeout=0.5)
    never = asyncio.Event()
    stalled = sidecar.channel.stream_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=bytes,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )(_never(never))

    # Age 0.5 s (±10 %), then 0.5 s of grace: the call ends well within 10 s.
    code = await asyncio.wait_for(stalled.code(), 10)
    answer = await sidecar.stub.Deliver(deliver("uid-after"), timeout=10)

    assert code == grpc.StatusCode.UNAVAILABLE, code
    assert answer.outcome == pb.OUTCOME_DELIVERED


async def test_health_watch_streams_are_bounded_and_check_still_answers(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver), max_health_watchers=2)
    health = health_pb2_grpc.HealthStub(sidecar.channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(2)]
    for watch in watches:
        await watch.read()

    with pytest.raises(grpc.aio.AioRpcError) as third:
        await health.Watch(health_pb2.HealthCheckRequest(service="")).read()
    checked = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    for watch in watches:
        watch.cancel()

    assert third.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-health-watchers" in str(third.value.details())
    assert checked.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_burst_of_concurrent_calls_gets_real_answers_never_cancelled(
    start_sidecar: StartSidecar,
) -> None:
    # gRPC core used to drop calls queued beyond 1000 with a bare CANCELLED.
    sidecar = await start_sidecar(
        {"receivers": [{"name": "hook", "type": "noop", "settings": {}}]},
        max_concurrent_rpcs=1024,
    )

    async def one(n: int) -> str:
        try:
            await sidecar.stub.Deliver(deliver(f"uid-{n}"), timeout=60)
        except grpc.aio.AioRpcError as error:
            return error.code().name
        return "OK"

    codes = set(await asyncio.gather(*(one(n) for n in range(2000))))

    assert codes <= {"OK", "RESOURCE_EXHAUSTED"}, codes


async def test_a_message_over_the_size_limit_is_refused_before_anything_is_sent(
    start_sidecar: StartSidecar, http_receiver: HttpReceiver
) -> None:
    sidecar = await start_sidecar(webhook(http_receiver), max_message_bytes=2048)

    with pytest.raises(grpc.aio.AioRpcError) as too_big:
        await sidecar.stub.Deliver(deliver("uid-big", body="x" * 3000), timeout=10)
    fits = await sidecar.stub.Deliver(deliver("uid-small", body="x" * 1500), timeout=10)

    assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert fits.outcome == pb.OUTCOME_DELIVERED
    assert [request.json()["uid"] for request in http_receiver.requests] == ["uid-small"]


# ---------------------------------------------------------------------------------------------
# Where the sidecar listens


@pytest.fixture
async def stopped_at_end() -> AsyncIterator[list[Sidecar]]:
    sidecars: list[Sidecar] = []
    yield sidecars
    for sidecar in sidecars:
        await sidecar.stop()


async def test_the_unix_socket_is_for_this_user_only(
    tmp_path: Path, http_receiver: HttpReceiver, stopped_at_end: list[Sidecar]
) -> None:
    path = tmp_path / "s.sock"
    config = ReceiversFile.model_validate(webhook(http_receiver))
    sidecar = await start(ServerSettings(listen="", unix_socket=path), config)
    stopped_at_end.append(sidecar)

    async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
        answer = await delivery_pb2_grpc.DeliveryServiceStub(channel).Deliver(deliver(), timeout=10)

    assert sidecar.addresses == [f"unix:{path}"]
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert answer.outcome == pb.OUTCOME_DELIVERED


async def test_two_sidecars_never_share_a_port(stopped_at_end: list[Sidecar]) -> None:
    first = await start(ServerSettings(listen="127.0.0.1:0"))
    stopped_at_end.append(first)

    with pytest.raises(ConfigError, match="address in use"):
        stopped_at_end.append(await start(ServerSettings(listen=first.addresses[0])))
