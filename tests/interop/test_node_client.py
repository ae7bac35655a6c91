"""sendonce from outside Python: a Node.js client on proto/, and `buf curl` through reflection.

Both drive a real `sendonce-server` child on a loopback port, with its default `console`
receiver, so what they prove is what a Go, Java or TypeScript controller would see: the proto
alone (or reflection alone) is enough to call the sidecar, and the answers follow the contract.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from google.rpc import error_details_pb2

from tests.server.process import Children, Sidecar, child_environment, free_tcp_port

INTEROP = Path(__file__).resolve().parent
STAMP = INTEROP / "node_modules" / ".sendonce-lock.sha256"
SERVICE = "sendonce.v1.DeliveryService"
DOMAIN = "sendonce.dev"
RUN_TIMEOUT = 60.0


def require_tool(name: str, why: str) -> str:
    """The tool's path; a skip when it is missing, but a failure under CI=true."""
    path = shutil.which(name)
    if path is None:
        reason = f"`{name}` is not on PATH: {why}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: a missing tool fails instead of skipping)")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def node() -> str:
    """`node`, with tests/interop/node_modules installed by `npm ci` from the committed lock.

    npm ci runs once per session, and not at all while node_modules was installed from the
    same package-lock.json (a hash of it is stamped into node_modules after a successful run).
    """
    why = "the interop test needs Node.js >= 18 and npm (apt-get install nodejs npm)"
    node = require_tool("node", why)
    npm = require_tool("npm", why)
    lock = hashlib.sha256((INTEROP / "package-lock.json").read_bytes()).hexdigest()
    if not STAMP.is_file() or STAMP.read_text() != lock:
        installed = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=INTEROP,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert installed.returncode == 0, f"npm ci failed:\n{installed.stdout}{installed.stderr}"
        STAMP.write_text(lock)
    return node


def buf() -> str:
    """The `buf` of this venv (the buf-bin dev dependency), else the one on PATH."""
    beside = Path(sys.executable).with_name("buf")
    if beside.is_file():
        return str(beside)
    return require_tool("buf", "it comes with the dev dependencies (PyPI package buf-bin)")


async def run(*command: str, cwd: Path = INTEROP) -> tuple[int, str, str]:
    """Run a command to its end: exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_environment(),
    )
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{command} still running after {RUN_TIMEOUT}s") from None
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest_asyncio.fixture
async def children() -> AsyncIterator[Children]:
    async with Children() as started:
        yield started


async def serving_sidecar(children: Children, *args: str) -> Sidecar:
    address = f"127.0.0.1:{free_tcp_port()}"
    sidecar = await children.sidecar("--listen", address, *args, target=address)
    await sidecar.until_serving()
    return sidecar


def summary_of(stdout: str) -> dict[str, Any]:
    """The client's one JSON line (the last line of its stdout)."""
    lines = stdout.strip().splitlines()
    assert lines, "the Node client printed nothing"
    summary: dict[str, Any] = json.loads(lines[-1])
    return summary


RichDetails = tuple[str, str, str, dict[str, str], list[tuple[str, str]]]


def rich_details(refused: dict[str, Any]) -> RichDetails:
    """A refusal's AIP-193 details as the Node client decoded them from the
    `grpc-status-details-bin` trailer: (code, ErrorInfo reason, domain, metadata, the
    BadRequest's (field, description) pairs)."""
    status = refused["status"]
    assert status is not None, f"no grpc-status-details-bin with {refused}"
    # The google.rpc.Status repeats the call's code and message.
    assert (status["code"], status["message"]) == (refused["code"], refused["details"])
    details = status["details"]
    assert set(details) <= {"google.rpc.ErrorInfo", "google.rpc.BadRequest"}, details
    info = details["google.rpc.ErrorInfo"]
    violations = details.get("google.rpc.BadRequest", {"field_violations": []})["field_violations"]
    return (
        status["code"],
        info["reason"],
        info["domain"],
        info["metadata"],
        [(violation["field"], violation["description"]) for violation in violations],
    )


# --- Node.js: @grpc/grpc-js + @grpc/proto-loader on proto/ ------------------------------------


async def test_a_node_client_delivers_reports_and_clears_through_the_real_sidecar(
    node: str, children: Children
) -> None:
    sidecar = await serving_sidecar(children)

    code, stdout, stderr = await run(node, "client.mjs", sidecar.target)
    summary = summary_of(stdout)
    await sidecar.stdout.wait_for(summary["uid"])
    assert await sidecar.terminate() == 0

    assert code == 0, f"{stdout}\n{stderr}"
    assert (summary["ok"], summary["mismatches"]) == (True, []), summary
    steps = summary["steps"]
    first, again = steps["deliver"], steps["deliver_again"]
    assert (first["outcome"], first["attempt"], first["final"]) == ("OUTCOME_DELIVERED", 1, True)
    assert first["receipt"]["reference"] == "stdout"
    assert (again["outcome"], again["attempts_used"]) == ("OUTCOME_ALREADY_DELIVERED", 1)
    state = steps["attempt_count"]
    assert (state["found"], state["succeeded"], state["attempts_used"]) == (True, True, 1)
    assert [entry["result"] for entry in state["history"]] == ["ATTEMPT_RESULT_SUCCEEDED"]
    assert steps["clear"] == {"cleared_channels": ["console"], "running_channels": []}
    assert steps["attempt_count_after_clear"]["cleared"] is True
    assert (steps["bad_uid"]["code"], steps["bad_uid"]["details"]) == (
        "INVALID_ARGUMENT",
        "uid: must not be empty",
    )
    assert steps["bad_retry_policy"]["code"] == "INVALID_ARGUMENT"
    assert steps["bad_retry_policy"]["details"].startswith("retry_policy.max_attempts: ")
    # Every refusal's rich details (AIP-193), decoded in Node.js from the status trailer.
    assert rich_details(steps["bad_uid"]) == (
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        DOMAIN,
        {"field": "uid"},
        [("uid", "must not be empty")],
    )
    assert rich_details(steps["bad_retry_policy"]) == (
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        DOMAIN,
        {"field": "retry_policy.max_attempts"},
        [("retry_policy.max_attempts", "must be between 1 and 20, got 30")],
    )
    assert rich_details(steps["unknown_channel"]) == (
        "NOT_FOUND",
        "UNKNOWN_CHANNEL",
        DOMAIN,
        {"channel": "no-such-receiver"},
        [],
    )
    assert rich_details(steps["payload_mismatch"]) == (
        "FAILED_PRECONDITION",
        "PAYLOAD_MISMATCH",
        DOMAIN,
        {"uid": summary["uid"], "channel": "console"},
        [],
    )
    # What the console receiver wrote: one delivery (the second Deliver and the one with another
    # payload sent nothing), with the payload as Node encoded it, enum and map included.
    printed = [json.loads(line) for line in sidecar.stdout.lines if summary["uid"] in line]
    assert len(printed) == 1
    assert (printed[0]["subject"], printed[0]["priority"]) == (
        "Node node-a is NotReady",
        "critical",
    )
    assert printed[0]["metadata"] == {"cluster": "prod", "client": "node"}
    assert printed[0]["links"] == [
        {"title": "Runbook", "url": "https://runbooks.example/node-not-ready"}
    ]


async def test_the_node_client_exits_non_zero_when_an_answer_differs(
    node: str, children: Children, tmp_path: Path
) -> None:
    # A receiver named `console` that is really a noop: its receipt is not "stdout".
    config = tmp_path / "receivers.toml"
    config.write_text('[[receivers]]\nname = "console"\ntype = "noop"\n')
    sidecar = await serving_sidecar(children, "--config", str(config))

    code, stdout, _ = await run(node, "client.mjs", sidecar.target)
    summary = summary_of(stdout)

    assert code == 1
    assert summary["ok"] is False
    assert summary["mismatches"] == [
        {"step": "deliver", "field": "receipt.reference", "actual": "noop", "expected": "stdout"}
    ]


# --- buf curl: no proto files, everything through server reflection ---------------------------


async def test_buf_curl_lists_the_services_through_reflection_and_delivers_json(
    children: Children,
) -> None:
    sidecar = await serving_sidecar(children)
    url = f"http://{sidecar.target}"
    curl = [buf(), "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    request = {
        "uid": "buf-curl-1",
        "channel": "console",
        "notification": {
            "subject": "Node node-a is NotReady",
            "priority": "PRIORITY_CRITICAL",
            "metadata": {"cluster": "prod"},
        },
    }

    services = await run(*curl, "--list-services", url)
    methods = await run(*curl, "--list-methods", url)
    delivered = await run(*curl, "--data", json.dumps(request), f"{url}/{SERVICE}/Deliver")
    again = await run(*curl, "--data", json.dumps(request), f"{url}/{SERVICE}/Deliver")
    refused = await run(
        *curl, "--data", json.dumps({**request, "uid": ""}), f"{url}/{SERVICE}/Deliver"
    )
    await sidecar.stdout.wait_for('"uid":"buf-curl-1"')
    assert await sidecar.terminate() == 0

    assert services[0] == 0, services[2]
    assert SERVICE in services[1].split()
    assert methods[0] == 0, methods[2]
    assert {f"{SERVICE}/{name}" for name in ("Deliver", "AttemptCount", "Clear")} <= set(
        methods[1].split()
    )
    assert delivered[0] == 0, delivered[2]
    delivered_key = json.loads(delivered[1]).get("idempotencyKey", "")
    assert delivered_key.startswith("msg_")
    # Proto3 JSON: camelCase names, enum names, zero values left out.
    assert json.loads(delivered[1]) == {
        "outcome": "OUTCOME_DELIVERED",
        "attempt": 1,
        "attemptsUsed": 1,
        "maxAttempts": 5,
        "final": True,
        "receipt": {"reference": "stdout"},
        "idempotencyKey": delivered_key,
    }
    assert again[0] == 0, again[2]
    assert json.loads(again[1])["outcome"] == "OUTCOME_ALREADY_DELIVERED"
    # buf curl exits with 8 x the status code on an RPC error: INVALID_ARGUMENT is 3.
    assert refused[0] == 8 * 3, refused[2]
    error = json.loads(refused[2])
    assert (error["code"], error["message"]) == ("invalid_argument", "uid: must not be empty")
    # The rich details (AIP-193), as buf curl prints them: type and base64 of the message.
    details = {detail["type"]: _unpadded_b64(detail["value"]) for detail in error["details"]}
    info = error_details_pb2.ErrorInfo.FromString(details["google.rpc.ErrorInfo"])
    bad = error_details_pb2.BadRequest.FromString(details["google.rpc.BadRequest"])
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "sendonce.dev")
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("uid", "must not be empty")
    ]
    printed = [line for line in sidecar.stdout.lines if '"uid":"buf-curl-1"' in line]
    assert len(printed) == 1
    assert json.loads(printed[0])["metadata"] == {"cluster": "prod"}
    # The key in the answer is the one the receiver (here the console line) got.
    assert json.loads(printed[0])["idempotency_key"] == delivered_key


def _unpadded_b64(value: str) -> bytes:
    return base64.b64decode(value + "=" * (-len(value) % 4))
