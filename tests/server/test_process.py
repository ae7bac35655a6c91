"""The real `sendonce-server` process: signals, the default config, health, reflection, bad
configuration and the CLI, each checked from outside the way an operator or a kubelet sees them."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from sendonce.v1 import delivery_pb2 as pb
from sendonce.v1 import delivery_pb2_grpc
from tests.server.process import Children, Sidecar, free_tcp_port
from tests.support.http_receiver import HttpReceiver

SERVICE = "sendonce.v1.DeliveryService"


@pytest_asyncio.fixture
async def children() -> AsyncIterator[Children]:
    async with Children() as started:
        yield started


async def unix_sidecar(children: Children, tmp_path: Path, *args: str) -> tuple[Sidecar, Path]:
    """A serving sidecar on a unix socket only (no TCP port), and the socket's path."""
    path = tmp_path / "sendonce.sock"
    sidecar = await children.sidecar(
        "--listen", "", "--unix-socket", str(path), *args, target=f"unix:{path}"
    )
    await sidecar.until_serving()
    return sidecar, path


def deliver(uid: str, channel: str, subject: str = "Deployment web failed") -> pb.DeliverRequest:
    return pb.DeliverRequest(
        uid=uid, channel=channel, notification=pb.Notification(subject=subject, body="3 of 3")
    )


async def test_sigterm_lets_the_running_attempt_finish_and_refuses_new_calls(
    children: Children, tmp_path: Path, http_receiver: HttpReceiver
) -> None:
    config = tmp_path / "receivers.toml"
    config.write_text(
        f'[[receivers]]\nname = "hook"\ntype = "webhook"\nsettings.url = "{http_receiver.url}"\n'
    )
    sidecar, _ = await unix_sidecar(
        children, tmp_path, "--config", str(config), "--shutdown-grace", "10"
    )
    http_receiver.hold()

    async with grpc.aio.insecure_channel(sidecar.target) as channel:
        stub = delivery_pb2_grpc.DeliveryServiceStub(channel)
        running = asyncio.ensure_future(stub.Deliver(deliver("uid-1", "hook"), timeout=30))
        await http_receiver.wait_for_hits(1)
        sidecar.process.send_signal(signal.SIGTERM)
        shutting_down = await sidecar.stderr.wait_for("shutting down")
        async with grpc.aio.insecure_channel(sidecar.target) as late_channel:
            late_stub = delivery_pb2_grpc.DeliveryServiceStub(late_channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await late_stub.Deliver(deliver("uid-2", "hook"), timeout=5)
            health = await health_pb2_grpc.HealthStub(late_channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        http_receiver.release()
        answer = await running
    code = await sidecar.exit_code()

    assert "waiting up to 10s for 1 running attempts" in shutting_down
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert (answer.outcome, answer.attempt) == (pb.OUTCOME_DELIVERED, 1)
    assert code == 0
    assert http_receiver.hits == 1
    assert http_receiver.requests[0].json()["uid"] == "uid-1"
    assert "still running at exit" not in sidecar.stderr.text
    assert sidecar.stderr.lines[-1].endswith("stopped")


async def test_the_readme_run_command_serves_a_console_receiver_without_config(
    children: Children,
) -> None:
    address = f"127.0.0.1:{free_tcp_port()}"
    sidecar = await children.sidecar("--listen", address, target=address)
    await sidecar.until_serving()

    async with grpc.aio.insecure_channel(address) as channel:
        stub = delivery_pb2_grpc.DeliveryServiceStub(channel)
        answer = await stub.Deliver(deliver("readme-1", "console", "Disk 91% full"), timeout=10)
    await sidecar.stdout.wait_for('"uid":"readme-1"')
    code = await sidecar.terminate()

    assert answer.outcome == pb.OUTCOME_DELIVERED
    assert code == 0
    [line] = sidecar.stdout.lines
    printed = json.loads(line)
    assert (printed["uid"], printed["channel"], printed["subject"], printed["attempt"]) == (
        "readme-1",
        "console",
        "Disk 91% full",
        1,
    )
    assert (
        f"serving on {address}; store: memory; receivers: console; event loop: uvloop"
        in sidecar.stderr.text
    )


async def test_the_standard_event_loop_serves_too(children: Children) -> None:
    address = f"127.0.0.1:{free_tcp_port()}"
    sidecar = await children.sidecar("--listen", address, "--event-loop", "asyncio", target=address)
    await sidecar.until_serving()

    async with grpc.aio.insecure_channel(address) as channel:
        stub = delivery_pb2_grpc.DeliveryServiceStub(channel)
        answer = await stub.Deliver(deliver("loop-1", "console", "Disk 91% full"), timeout=10)

    assert answer.outcome == pb.OUTCOME_DELIVERED
    assert "event loop: asyncio" in sidecar.stderr.text
    assert await sidecar.terminate() == 0


def reflect(target: str) -> tuple[list[str], str, list[str]]:
    """Services listed by server reflection, and the file and methods it resolves for SERVICE."""
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        # A fresh pool: nothing may come from the descriptors this test process already has.
        service = DescriptorPool(database).FindServiceByName(SERVICE)
        return services, service.file.name, [method.name for method in service.methods]


async def test_health_and_reflection_answer(children: Children, tmp_path: Path) -> None:
    sidecar, _ = await unix_sidecar(children, tmp_path)

    async with grpc.aio.insecure_channel(sidecar.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        statuses = [
            (await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)).status
            for name in ("", SERVICE)
        ]
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service="sendonce.v1.Nope"))
    services, file_name, methods = await asyncio.to_thread(reflect, sidecar.target)

    assert statuses == [health_pb2.HealthCheckResponse.SERVING] * 2
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert services == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        SERVICE,
    ]
    assert file_name == "sendonce/v1/delivery.proto"
    assert methods == ["Deliver", "AttemptCount", "Clear"]


# --- bad configuration -------------------------------------------------------------------------

# Secrets the failing configurations hold (in secret files, or inline where that is refused).
SIGNING_SECRET = "whsec_" + base64.b64encode(b"sendonce-test-signing-key-32byte").decode()
SHORT_SIGNING_SECRET = "whsec_" + base64.b64encode(b"only-16-bytes-ok").decode()
URL_PASSWORD = "hunter2-url-password"
SECRETS = [SIGNING_SECRET, SHORT_SIGNING_SECRET, URL_PASSWORD]

# Read first, so that its secret is loaded before the receiver that fails.
SIGNED = """
[[receivers]]
name = "signed"
type = "webhook"
settings = { url = "http://127.0.0.1:9/hook", signing_secret = { file = "@DIR@/signing.key" } }
"""

BAD_RECEIVERS = {
    "unknown-channel-type": (
        SIGNED + '[[receivers]]\nname = "pager"\ntype = "carrier-pigeon"\n',
        ["receiver 'pager'", "unknown channel type 'carrier-pigeon'", "known: console"],
    ),
    "typo-in-a-setting": (
        SIGNED + '[[receivers]]\nname = "hook"\ntype = "webhook"\n'
        'settings = { urll = "http://127.0.0.1:9/" }\n',
        ["receiver 'hook'", "urll: unknown setting"],
    ),
    "typo-in-a-retry-field": (
        SIGNED + '[[receivers]]\nname = "hook"\ntype = "console"\nretry = { max_attemps = 3 }\n',
        ["receivers.1.retry.max_attemps"],
    ),
    "duplicate-receiver-name": (
        SIGNED + '[[receivers]]\nname = "signed"\ntype = "console"\n',
        ["receiver names must be unique, repeated: signed"],
    ),
    "invalid-toml": (
        SIGNED + '[[receivers]\nname = "hook"\n',
        ["receivers.toml is not valid TOML", "line 6"],
    ),
    "no-receivers": ("receivers = []\n", ["receivers: List should have at least 1 item"]),
    "missing-secret-file": (
        SIGNED.replace("signing.key", "missing.key"),
        ["receiver 'signed'", "signing_secret: file", "missing.key does not exist"],
    ),
    "inline-secret-value": (
        SIGNED.replace('file = "@DIR@/signing.key"', f'value = "{SIGNING_SECRET}"'),
        ["receiver 'signed'", "inline secret values are not accepted"],
    ),
    "malformed-signing-secret": (
        SIGNED.replace("signing.key", "short.key"),
        ["receiver 'signed'", "signing_secret: must encode 24 to 64 bytes"],
    ),
    "url-secret-with-a-bad-url": (
        SIGNED + '[[receivers]]\nname = "hook"\ntype = "webhook"\n'
        'settings = { url_secret = { file = "@DIR@/url.secret" } }\n',
        ["receiver 'hook'", "url_secret: the URL it holds must start with http://"],
    ),
}


async def fails_to_start(children: Children, *args: str) -> str:
    """Run a sidecar that must refuse to start: exit code 2, and its stderr."""
    sidecar = await children.sidecar("--listen", "127.0.0.1:0", *args, target="")
    code = await sidecar.exit_code()
    assert code == 2, sidecar.stderr.text
    return sidecar.stderr.text


@pytest.mark.parametrize(
    ("config", "expected"), list(BAD_RECEIVERS.values()), ids=list(BAD_RECEIVERS)
)
async def test_a_bad_receivers_file_fails_fast_with_a_readable_message(
    children: Children, tmp_path: Path, config: str, expected: list[str]
) -> None:
    (tmp_path / "signing.key").write_text(SIGNING_SECRET + "\n")
    (tmp_path / "short.key").write_text(SHORT_SIGNING_SECRET + "\n")
    (tmp_path / "url.secret").write_text(f"ftp://ops:{URL_PASSWORD}@hooks.example/x\n")
    path = tmp_path / "receivers.toml"
    path.write_text(config.replace("@DIR@", str(tmp_path)))

    stderr = await fails_to_start(children, "--config", str(path))

    for text in expected:
        assert text in stderr
    assert "Traceback" not in stderr
    for secret in SECRETS:
        assert secret not in stderr
        assert secret.removeprefix("whsec_") not in stderr


def _in_use_port() -> tuple[socket.socket, str]:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder, f"127.0.0.1:{holder.getsockname()[1]}"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--max-body-bytes", "-1"], "max_body_bytes: Input should be greater than 0"),
        (["--shutdown-grace", "soon"], "shutdown_grace: Input should be a valid number"),
        (["--store", "redis"], "unsupported store 'redis'"),
        (
            ["--store", "redis://:pw@host:notaport/0"],
            "--store (SENDONCE_STORE): redis://... has a port",
        ),
        (["--config", "@DIR@/absent.toml"], "cannot read receivers file"),
        (["--listen", ""], "nothing to listen on"),
        (["--listen", "127.0.0.1:99999"], "cannot listen on 127.0.0.1:99999"),
        (["--listen", "@IN_USE@"], "address in use"),
    ],
    ids=[
        "negative-body",
        "grace",
        "store",
        "store-port",
        "absent-config",
        "no-listener",
        "bad-port",
        "in-use",
    ],
)
async def test_a_bad_flag_fails_fast_with_a_readable_message(
    children: Children, tmp_path: Path, args: list[str], expected: str
) -> None:
    holder, in_use = _in_use_port()
    with holder:
        args = [arg.replace("@DIR@", str(tmp_path)).replace("@IN_USE@", in_use) for arg in args]
        stderr = await fails_to_start(children, *args)

    assert expected in stderr
    assert "Traceback" not in stderr


# --- the CLI -----------------------------------------------------------------------------------


async def test_the_cli_delivers_reports_and_clears_through_the_real_sidecar(
    children: Children, tmp_path: Path
) -> None:
    sidecar, path = await unix_sidecar(children, tmp_path)
    address = ["--address", f"unix://{path}"]

    delivered = await children.cli(
        *address, "deliver", "uid-cli", "console", "--subject", "Disk 91% full", "--json"
    )
    attempts = await children.cli(*address, "attempts", "uid-cli", "console", "--json")
    cleared = await children.cli(*address, "clear", "uid-cli", "--json")
    unknown = await children.cli(*address, "deliver", "uid-cli", "pager", "--subject", "s")

    assert delivered[0] == 0, delivered[2]
    answer = json.loads(delivered[1])
    assert (answer["outcome"], answer["attempt"], answer["final"]) == ("delivered", 1, True)
    assert attempts[0] == 0, attempts[2]
    state = json.loads(attempts[1])
    assert (state["found"], state["succeeded"], state["attempts_used"]) == (True, True, 1)
    assert [attempt["result"] for attempt in state["history"]] == ["succeeded"]
    assert cleared[0] == 0, cleared[2]
    assert json.loads(cleared[1]) == {"cleared_channels": ["console"], "running_channels": []}
    assert unknown[0] == 1
    assert "NOT_FOUND" in unknown[2]
    assert "no receiver named 'pager'" in unknown[2]
    assert await sidecar.terminate() == 0
    assert [json.loads(line)["uid"] for line in sidecar.stdout.lines] == ["uid-cli"]
