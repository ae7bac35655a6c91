"""The `sendonce` CLI against a fake sidecar: arguments, readable and JSON output, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

import sendonce_server
from sendonce.cli import main
from sendonce.v1 import delivery_pb2
from tests.server.process import free_tcp_port

from .conftest import RunningServer, assert_deadline

DELIVERED = delivery_pb2.DeliverResponse(
    outcome=delivery_pb2.OUTCOME_DELIVERED,
    attempt=1,
    attempts_used=1,
    max_attempts=5,
    shared=True,
    final=True,
    receipt=delivery_pb2.Receipt(reference="HTTP 200", details={"status_code": "200"}),
)

HISTORY = delivery_pb2.AttemptCountResponse(
    found=True,
    attempts_used=2,
    max_attempts=5,
    remaining=3,
    in_flight=True,
    retry_after=duration_pb2.Duration(seconds=30),
    last_error="HTTP 503",
    history=[
        delivery_pb2.Attempt(
            number=1,
            start_time=timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=250_000_000),
            duration=duration_pb2.Duration(nanos=300_000_000),
            result=delivery_pb2.ATTEMPT_RESULT_FAILED,
            error="HTTP 503",
        ),
        delivery_pb2.Attempt(
            number=2,
            start_time=timestamp_pb2.Timestamp(seconds=1_700_000_060),
            result=delivery_pb2.ATTEMPT_RESULT_RUNNING,
        ),
    ],
)


def test_deliver(server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server.servicer.deliver_response = DELIVERED
    body = tmp_path / "body.md"
    body.write_text("**97 %** used\n", encoding="utf-8")

    code = main(
        [
            *("--address", server.address, "deliver", "uid-1", "ops-slack"),
            *("--subject", "Disk full", "--body-file", str(body), "--priority", "high"),
            *("--meta", "cluster=prod", "--meta", "query=a=b", "--link", "Runbook=https://r/d?x=1"),
            *("--max-attempts", "3", "--initial-backoff", "1.5", "--persisted-attempts", "2"),
        ]
    )

    out = capsys.readouterr()
    assert (code, out.err) == (0, "")
    assert out.out == "delivered (attempt 1 of 5, shared) — receipt: HTTP 200\n  status_code: 200\n"
    request = server.servicer.last(delivery_pb2.DeliverRequest)
    assert (request.uid, request.channel, request.persisted_attempts) == ("uid-1", "ops-slack", 2)
    sent = request.notification
    assert (sent.subject, sent.body) == ("Disk full", "**97 %** used\n")
    assert sent.priority == delivery_pb2.PRIORITY_HIGH
    assert dict(sent.metadata) == {"cluster": "prod", "query": "a=b"}
    assert [(link.title, link.url) for link in sent.links] == [("Runbook", "https://r/d?x=1")]
    assert request.retry_policy.max_attempts == 3
    assert request.retry_policy.initial_backoff == duration_pb2.Duration(
        seconds=1, nanos=500_000_000
    )
    assert not request.retry_policy.HasField("max_backoff")
    assert_deadline(server.servicer.calls[0].time_remaining, 30)


def test_failed_delivery_is_an_answer(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.servicer.deliver_response = delivery_pb2.DeliverResponse(
        outcome=delivery_pb2.OUTCOME_FAILED,
        attempt=2,
        attempts_used=2,
        max_attempts=5,
        retry_after=duration_pb2.Duration(seconds=60, nanos=500_000_000),
        last_error="HTTP 503",
    )
    args = ["--address", server.address, "deliver", "uid-1", "ops", "--subject", "s"]

    assert main(args) == 3  # not final: call again
    assert capsys.readouterr().out == (
        "failed (attempt 2 of 5) — retry after 60.5s — last error: HTTP 503\n"
    )
    assert not server.servicer.last(delivery_pb2.DeliverRequest).HasField("retry_policy")

    # --json and --timeout also work after the command.
    assert main([*args, "--json", "--timeout", "2"]) == 3
    assert json.loads(capsys.readouterr().out) == {
        "outcome": "failed",
        "attempt": 2,
        "attempts_used": 2,
        "max_attempts": 5,
        "retry_after": 60.5,
        "last_error": "HTTP 503",
        "shared": False,
        "final": False,
        "receipt": None,
    }
    assert_deadline(server.servicer.calls[-1].time_remaining, 2)


def test_attempts(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.servicer.attempt_count_response = HISTORY

    assert main(["--address", server.address, "attempts", "uid-1", "ops"]) == 0

    assert capsys.readouterr().out.splitlines() == [
        "open: 2 of 5 attempts used, 3 remaining, in flight",
        "retry after: 30s",
        "last error: HTTP 503",
        "#  started (UTC)            duration  result   error",
        "1  2023-11-14 22:13:20.250  0.3s      failed   HTTP 503",
        "2  2023-11-14 22:14:20.000  -         running",
    ]
    request = server.servicer.last(delivery_pb2.AttemptCountRequest)
    assert (request.uid, request.channel, request.persisted_attempts) == ("uid-1", "ops", 0)


def test_attempts_json(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.servicer.attempt_count_response = HISTORY
    args = ["--address", server.address, "--json", "attempts", "uid-1", "ops"]

    assert main([*args, "--persisted-attempts", "4"]) == 0

    result = json.loads(capsys.readouterr().out)
    assert result["retry_after"] == 30.0
    assert result["history"] == [
        {
            "number": 1,
            "start_time": "2023-11-14T22:13:20.250000+00:00",
            "duration": 0.3,
            "result": "failed",
            "error": "HTTP 503",
        },
        {
            "number": 2,
            "start_time": "2023-11-14T22:14:20+00:00",
            "duration": None,
            "result": "running",
            "error": "",
        },
    ]
    assert server.servicer.last(delivery_pb2.AttemptCountRequest).persisted_attempts == 4


def test_attempts_of_an_unknown_key(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.servicer.attempt_count_response = delivery_pb2.AttemptCountResponse(max_attempts=5)
    assert main(["--address", server.address, "attempts", "uid-1", "ops"]) == 0
    assert capsys.readouterr().out == "not found: 0 of 5 attempts used, 0 remaining\n"


def test_clear(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.servicer.clear_response = delivery_pb2.ClearResponse(
        cleared_channels=["ops", "mail"], running_channels=["pager"]
    )

    assert main(["--address", server.address, "clear", "uid-1", "ops", "mail", "--force"]) == 0

    assert capsys.readouterr().out == (
        "cleared: ops, mail\nstill running (will finish and be recorded): pager\n"
    )
    request = server.servicer.last(delivery_pb2.ClearRequest)
    assert (request.uid, list(request.channels), request.force) == (
        "uid-1",
        ["ops", "mail"],
        True,
    )


@pytest.mark.parametrize(
    ("outcome", "final", "status"),
    [
        (delivery_pb2.OUTCOME_DELIVERED, True, 0),
        (delivery_pb2.OUTCOME_ALREADY_DELIVERED, True, 0),
        (delivery_pb2.OUTCOME_FAILED, False, 3),
        (delivery_pb2.OUTCOME_RETRY_LATER, False, 3),
        (delivery_pb2.OUTCOME_IN_PROGRESS, False, 3),
        (delivery_pb2.OUTCOME_CIRCUIT_OPEN, False, 3),
        (delivery_pb2.OUTCOME_FAILED_PERMANENT, True, 4),
        (delivery_pb2.OUTCOME_EXHAUSTED, True, 4),
        # An outcome this CLI does not know (a newer sidecar): `final` decides.
        (delivery_pb2.Outcome.ValueType(99), True, 4),
        (delivery_pb2.Outcome.ValueType(99), False, 3),
    ],
)
def test_deliver_exit_status_says_what_to_do(
    server: RunningServer, outcome: delivery_pb2.Outcome.ValueType, final: bool, status: int
) -> None:
    server.servicer.deliver_response = delivery_pb2.DeliverResponse(
        outcome=outcome, attempt=1, attempts_used=1, max_attempts=5, final=final
    )
    args = ["--address", server.address, "deliver", "uid-1", "ops", "--subject", "s"]
    assert main(args) == status
    assert main([*args, "--json"]) == status


def test_attempts_and_clear_exit_0_whatever_the_state(server: RunningServer) -> None:
    server.servicer.attempt_count_response = delivery_pb2.AttemptCountResponse(
        found=True, attempts_used=5, max_attempts=5, final=True
    )
    assert main(["--address", server.address, "attempts", "uid-1", "ops"]) == 0
    assert main(["--address", server.address, "clear", "uid-1"]) == 0


def test_rpc_error_exits_1(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.servicer.aborts = [(grpc.StatusCode.NOT_FOUND, 'unknown channel "nope"')]

    code = main(["--address", server.address, "deliver", "uid-1", "nope", "--subject", "s"])

    out = capsys.readouterr()
    assert code == 1
    assert out.err == 'error: NOT_FOUND: unknown channel "nope"\n'
    assert out.out == ""


def test_rpc_error_as_json(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    message = "notification.subject: must not be blank"
    status = status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=message)
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT", domain="sendonce.dev")
    )
    status.details.add().Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="notification.subject", description="must not be blank"
                )
            ]
        )
    )
    status.details.add().Pack(
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1, nanos=500_000_000))
    )
    server.servicer.aborts = [(grpc.StatusCode.INVALID_ARGUMENT, message)]
    server.servicer.abort_trailer = tuple(rpc_status.to_status(status).trailing_metadata)

    code = main(["--address", server.address, "--json", "deliver", "u", "ops", "--subject", " "])

    out = capsys.readouterr()
    assert (code, out.out) == (1, "")
    assert json.loads(out.err) == {
        "error": {
            "code": "INVALID_ARGUMENT",
            "message": message,
            "reason": "INVALID_ARGUMENT",
            "domain": "sendonce.dev",
            "metadata": {},
            "field_violations": [
                {"field": "notification.subject", "description": "must not be blank"}
            ],
            "retry_delay": 1.5,
            "hint": None,
        }
    }


def test_usage_error_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json", "deliver", "uid-1", "ops"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert json.loads(out.err) == {
        "error": {"code": "USAGE", "message": "the following arguments are required: --subject"}
    }


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_nothing_listening_gets_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    address = f"127.0.0.1:{free_tcp_port()}" if kind == "tcp" else f"unix://{tmp_path}/none.sock"

    code = main(["--address", address, "attempts", "uid-1", "ops"])

    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert err[0].startswith("error: UNAVAILABLE: ")
    assert err[1:] == [f"hint: is sendonce-server running at {address}?"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"sendonce {version('sendonce')}\n"
    server = subprocess.run(
        [sys.executable, "-m", "sendonce_server", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SENDONCE_LISTEN": "not an address"},  # never read: no server starts
    )
    assert (server.returncode, server.stdout, server.stderr) == (
        0,
        f"sendonce-server {version('sendonce-server')}\n",
        "",
    )
    assert version("sendonce-server") == sendonce_server.__version__


def test_help_documents_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert main(["deliver", "--help"]) == 0
    out = capsys.readouterr().out
    for line in (
        "  0  delivered, or already delivered",
        "  3  deliver: not final",
        "  4  deliver: final without a delivery",
    ):
        assert out.count(line) == 2, line


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["deliver", "uid-1", "ops"],
        ["deliver", "uid-1", "ops", "--subject", "s", "--meta", "no-equals-sign"],
        ["deliver", "uid-1", "ops", "--subject", "s", "--priority", "urgent"],
        ["deliver", "uid-1", "ops", "--subject", "s", "--body", "b", "--body-file", "f"],
        ["deliver", "uid-1", "ops", "--subject", "s", "--body-file", "/nonexistent/body.md"],
        ["deliver", "uid-1", "ops", "--subject", "s", "--initial-backoff", "-1"],
        ["attempts", "uid-1", "ops", "--persisted-attempts", "-1"],
        ["--timeout", "0", "clear", "uid-1"],
    ],
)
def test_usage_errors_exit_2(
    server: RunningServer, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert main(["--address", server.address, *args]) == 2
    assert "usage: sendonce" in capsys.readouterr().err
    assert server.servicer.calls == []


def test_python_dash_m(server: RunningServer) -> None:
    """The real entry point, in a subprocess, with the address and token from the environment."""
    server.servicer.deliver_response = DELIVERED
    env = {**os.environ, "SENDONCE_ADDRESS": server.address, "SENDONCE_TOKEN": "s3cret"}

    done = subprocess.run(
        [sys.executable, "-m", "sendonce", "--json", "deliver", "uid-1", "ops", "--subject", "s"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (done.returncode, done.stderr) == (0, "")
    result = json.loads(done.stdout)
    assert (result["outcome"], result["shared"]) == ("delivered", True)
    assert result["receipt"] == {"reference": "HTTP 200", "details": {"status_code": "200"}}
    assert server.servicer.calls[0].metadata["authorization"] == "Bearer s3cret"
