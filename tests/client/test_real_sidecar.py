"""The clients and the `sendonce` CLI against a real sidecar: TLS and mutual TLS configured by
options and by environment variables, the hints given when the transport is wrong, the bearer
token taken from $SENDONCE_TOKEN, and the error details (AIP-193) the sidecar sends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from sendonce import (
    AsyncClient,
    Client,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Notification,
    Outcome,
    PayloadMismatch,
)
from sendonce.cli import main
from sendonce_server.config import ReceiversFile, ServerSettings
from sendonce_server.server import start
from tests.support.pki import Pki, make_pki

NOOP = ReceiversFile.model_validate({"receivers": [{"name": "ops", "type": "noop"}]})

Cli = Callable[..., Awaitable[tuple[int, str, str]]]
StartTls = Callable[..., Awaitable[str]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest_asyncio.fixture
async def start_tls(pki: Pki) -> AsyncIterator[StartTls]:
    """Start a real sidecar with the server certificate (and `mutual`: the client CA)."""
    running = []

    async def _start(*, mutual: bool = False) -> str:
        settings = ServerSettings(
            listen="127.0.0.1:0",
            tls_cert_file=pki.server_cert,
            tls_key_file=pki.server_key,
            tls_client_ca_file=pki.client_ca if mutual else None,
        )
        sidecar = await start(settings, NOOP)
        running.append(sidecar)
        return sidecar.addresses[0]

    yield _start
    for sidecar in running:
        await sidecar.stop()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Run `sendonce args...` in a thread (the sidecar runs on this loop), with `env` set."""

    async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        with monkeypatch.context() as patch:
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            code = await asyncio.to_thread(main, list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def deliver(address: str, uid: str, *options: str) -> list[str]:
    return ["--address", address, *options, "deliver", uid, "ops", "--subject", "Disk full"]


async def test_tls_with_the_ca_from_an_option_or_the_environment(
    start_tls: StartTls, cli: Cli, pki: Pki
) -> None:
    address = await start_tls()

    by_option = await cli(*deliver(address, "uid-1", "--ca", str(pki.ca)))
    by_env = await cli(*deliver(address, "uid-2"), env={"SENDONCE_TLS_CA_FILE": str(pki.ca)})
    # The certificate's other name, asked for explicitly, is accepted too; a wrong one is not.
    renamed = await cli(
        *deliver(address, "uid-3", "--ca", str(pki.ca), "--server-name", "localhost")
    )
    misnamed = await cli(
        *deliver(address, "uid-4", "--timeout", "10"),
        env={"SENDONCE_TLS_CA_FILE": str(pki.ca), "SENDONCE_TLS_SERVER_NAME": "other.example"},
    )

    assert by_option == (0, "delivered (attempt 1 of 5) — receipt: noop\n", "")
    assert by_env == (0, "delivered (attempt 1 of 5) — receipt: noop\n", "")
    assert renamed[0] == 0
    assert misnamed[0] == 1
    assert misnamed[2].startswith("error: UNAVAILABLE: ")


async def test_tls_refuses_what_does_not_match(start_tls: StartTls, cli: Cli) -> None:
    address = await start_tls()

    plaintext = await cli(*deliver(address, "uid-1", "--timeout", "10"))
    # The system's roots do not hold the test CA: the certificate is not trusted.
    untrusted = await cli(*deliver(address, "uid-2", "--timeout", "10"), env={"SENDONCE_TLS": "1"})

    assert plaintext[0] == untrusted[0] == 1
    assert plaintext[2].startswith("error: UNAVAILABLE: ")
    assert untrusted[2].startswith("error: UNAVAILABLE: ")


async def test_mutual_tls_with_the_client_certificate(
    start_tls: StartTls, cli: Cli, pki: Pki
) -> None:
    address = await start_tls(mutual=True)
    ca = ("--ca", str(pki.ca))

    anonymous = await cli(*deliver(address, "uid-1", *ca, "--timeout", "10"))
    by_option = await cli(
        *deliver(
            address, "uid-2", *ca, "--cert", str(pki.client_cert), "--key", str(pki.client_key)
        )
    )
    by_env = await cli(
        *deliver(address, "uid-3", "--json"),
        env={
            "SENDONCE_TLS_CA_FILE": str(pki.ca),
            "SENDONCE_TLS_CLIENT_CERT_FILE": str(pki.client_cert),
            "SENDONCE_TLS_CLIENT_KEY_FILE": str(pki.client_key),
        },
    )

    assert anonymous[0] == 1
    assert by_option[0] == 0
    assert by_env[0] == 0
    assert json.loads(by_env[1])["outcome"] == "delivered"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--cert", "client.pem"], {}, "needs both a certificate (--cert) and its key (--key)"),
        ([], {"SENDONCE_TLS_CLIENT_KEY_FILE": "client.key"}, "needs both a certificate"),
        (["--ca", "missing.pem"], {}, "--ca: cannot read missing.pem"),
        ([], {"SENDONCE_TLS_CA_FILE": "missing.pem"}, "$SENDONCE_TLS_CA_FILE: cannot read"),
        ([], {"SENDONCE_TLS": "maybe"}, "$SENDONCE_TLS must be 1 or 0"),
        (["--server-name", "localhost"], {}, "--server-name needs TLS"),
    ],
)
async def test_tls_usage_errors_exit_2(
    cli: Cli,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    monkeypatch.chdir(pki.ca.parent)  # client.pem and client.key exist there
    code, out, err = await cli(*deliver("127.0.0.1:1", "uid-1", *args), env=env)
    assert (code, out) == (2, "")
    assert message in err


# --- hints when the transport is wrong ---------------------------------------------------------


async def test_transport_errors_come_with_a_hint(start_tls: StartTls, cli: Cli, pki: Pki) -> None:
    address = await start_tls()
    plaintext = await cli(*deliver(address, "uid-1", "--json", "--timeout", "10"))
    untrusted = await cli(*deliver(address, "uid-2", "--tls", "--timeout", "10"))
    misnamed = await cli(
        *deliver(address, "uid-3", "--ca", str(pki.ca), "--server-name", "x.example")
    )

    error: dict[str, Any] = json.loads(plaintext[2])["error"]
    assert (plaintext[0], error["code"]) == (1, "UNAVAILABLE")
    assert "does it serve TLS (--tls or --ca FILE)" in error["hint"]
    assert untrusted[2].splitlines()[1] == (
        "hint: TLS failed: --ca FILE with the CA that signed the sidecar's certificate"
    )
    assert misnamed[2].splitlines()[1] == (
        "hint: the sidecar's certificate does not carry the name asked for: --server-name NAME"
    )


# --- the token of the shipped manifests, against a real sidecar that requires it -----------------


async def test_client_and_cli_send_the_token_of_the_environment(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifests set $SENDONCE_TOKEN in the controller's container: `Client()` with no
    argument, as the README's controller makes it, must be let in."""
    token_file = tmp_path / "token"
    token_file.write_text("tok-7Hq2mX9v\n")
    settings = ServerSettings(listen="127.0.0.1:0", auth_token_file=token_file)
    sidecar = await start(settings, NOOP)
    try:
        address = sidecar.addresses[0]
        without = await cli(*deliver(address, "uid-0"))
        monkeypatch.setenv("SENDONCE_TOKEN", "tok-7Hq2mX9v")
        by_cli = await cli(*deliver(address, "uid-1"))
        with Client(address) as client:
            by_client = await asyncio.to_thread(
                client.deliver, "uid-2", "ops", Notification(subject="Disk full")
            )
        async with AsyncClient(address) as aclient:
            by_aclient = await aclient.deliver("uid-3", "ops", Notification(subject="Disk full"))
    finally:
        await sidecar.stop()

    assert without[0] == 1
    assert without[2].startswith("error: UNAUTHENTICATED: ")
    assert by_cli[0] == 0
    assert by_client.outcome is by_aclient.outcome is Outcome.DELIVERED


# --- the sidecar's error details, read by both clients and the CLI --------------------------------


async def test_both_clients_and_the_cli_read_the_sidecars_error_details(cli: Cli) -> None:
    sidecar = await start(ServerSettings(listen="127.0.0.1:0"), NOOP)
    address = sidecar.addresses[0]
    try:
        with Client(address) as client:
            await asyncio.to_thread(client.deliver, "uid-1", "ops", Notification(subject="a"))
            with pytest.raises(PayloadMismatch) as mismatch:
                await asyncio.to_thread(client.deliver, "uid-1", "ops", Notification(subject="b"))
        async with AsyncClient(address) as aclient:
            with pytest.raises(InvalidArgument) as invalid:
                await aclient.deliver("", "ops", Notification(subject="a"))
            with pytest.raises(NotFound) as unknown:
                await aclient.attempt_count("uid-1", "slack")
        refused = await cli(*deliver(address, "uid-2", "--json"), "--max-attempts", "30")
    finally:
        await sidecar.stop()

    assert (mismatch.value.reason, mismatch.value.domain) == ("PAYLOAD_MISMATCH", "sendonce.dev")
    assert invalid.value.reason == "INVALID_ARGUMENT"
    assert invalid.value.field_violations == (FieldViolation("uid", "must not be empty"),)
    assert unknown.value.reason == "UNKNOWN_CHANNEL"
    assert refused[0] == 1
    error = json.loads(refused[2])["error"]
    assert (error["code"], error["reason"], error["domain"]) == (
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "sendonce.dev",
    )
    assert [v["field"] for v in error["field_violations"]] == ["retry_policy.max_attempts"]
