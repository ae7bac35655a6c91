"""`sendonce health`, the exec probe for a sidecar the kubelet's plaintext gRPC probe cannot reach:
run as a real process against a real sidecar, in plaintext, over TLS and over mutual TLS."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from tests.server.conftest import StartSidecar
from tests.server.process import child_environment, free_tcp_port
from tests.server.test_security import pki  # noqa: F401  # the module-scoped fixture
from tests.support.pki import Pki

DELIVERY = "sendonce.v1.DeliveryService"
CONSOLE = {"receivers": [{"name": "console", "type": "console"}]}


async def probe(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`sendonce health args...` as a child process: exit status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sendonce", "health", *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**child_environment(), **(env or {})},
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


async def test_exits_0_only_while_the_service_is_serving(start_sidecar: StartSidecar) -> None:
    running = await start_sidecar(CONSOLE)
    address = f"--address={running.address}"

    process = await probe(address)
    ready = await probe(address, f"--service={DELIVERY}", "--json")
    await running.sidecar.health.set(DELIVERY, health_pb2.HealthCheckResponse.NOT_SERVING)
    not_ready = await probe(address, f"--service={DELIVERY}")
    unknown = await probe(address, "--service=no.such.Service")
    nobody = await probe(f"--address=127.0.0.1:{free_tcp_port()}", "--timeout=2")

    assert process == (0, "SERVING\n", "")
    assert ready[0] == 0
    assert json.loads(ready[1]) == {"service": DELIVERY, "status": "SERVING"}
    assert not_ready[:2] == (1, "NOT_SERVING\n")
    assert unknown[0] == 1
    assert "NOT_FOUND" in unknown[2]
    assert nobody[0] == 1
    assert "UNAVAILABLE" in nobody[2]
    assert "127.0.0.1:" in nobody[2]  # which address it tried


async def test_speaks_tls_with_the_flags_or_the_environment(
    start_sidecar: StartSidecar,
    pki: Pki,  # noqa: F811  # the fixture imported above
) -> None:
    running = await start_sidecar(
        CONSOLE, tls_cert_file=pki.server_cert, tls_key_file=pki.server_key
    )
    address = f"--address={running.address}"

    flags = await probe(address, f"--ca={pki.ca}")
    environment = await probe(address, env={"SENDONCE_TLS_CA_FILE": str(pki.ca)})
    plaintext = await probe(address, "--timeout=2")
    # The system's roots do not hold the test CA: the handshake fails, the probe too.
    untrusted = await probe(address, "--tls", "--timeout=2")

    assert flags == (0, "SERVING\n", "")
    assert environment == (0, "SERVING\n", "")
    assert plaintext[0] == 1
    assert untrusted[0] == 1


async def test_speaks_mutual_tls_with_a_client_certificate(
    start_sidecar: StartSidecar,
    pki: Pki,  # noqa: F811  # the fixture imported above
) -> None:
    running = await start_sidecar(
        CONSOLE,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.client_ca,
    )
    address = f"--address={running.address}"
    client = (f"--cert={pki.client_cert}", f"--key={pki.client_key}")

    mutual = await probe(address, f"--ca={pki.ca}", *client)
    environment = await probe(
        address,
        env={
            "SENDONCE_TLS_CA_FILE": str(pki.ca),
            "SENDONCE_TLS_CLIENT_CERT_FILE": str(pki.client_cert),
            "SENDONCE_TLS_CLIENT_KEY_FILE": str(pki.client_key),
        },
    )
    without_certificate = await probe(address, f"--ca={pki.ca}", "--timeout=2")
    half = await probe(address, f"--ca={pki.ca}", client[0])

    assert mutual == (0, "SERVING\n", "")
    assert environment == (0, "SERVING\n", "")
    assert without_certificate[0] == 1
    assert half[0] == 2
    assert "mutual TLS needs both a certificate (--cert) and its key (--key)" in half[2]


@pytest.mark.parametrize("missing", ["--ca", "--cert"])
async def test_an_unreadable_file_is_a_usage_error(missing: str, tmp_path: Path) -> None:
    absent = tmp_path / "absent.pem"
    args = [f"{missing}={absent}"] + ([f"--key={absent}"] if missing == "--cert" else [])

    code, _, err = await probe(*args)

    assert code == 2
    assert f"cannot read {absent}" in err
