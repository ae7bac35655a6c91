"""`sendonce health`: the sidecar's standard health status (grpc.health.v1), as an exec probe.

The kubelet's native gRPC probe speaks plaintext only. With TLS on the sidecar's listener, probe
with this command in the sidecar's container instead (the image has it):

    exec: {command: [sendonce, health, --service, sendonce.v1.DeliveryService, --timeout, "2"]}

Exit status: 0 when the service is SERVING; 1 otherwise (NOT_SERVING, an unknown service, no
answer within the deadline, a refused TLS handshake); 2 for usage errors. The connection takes
the same address, token and TLS settings as the other commands, from flags or the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sendonce.client import ADDRESS_ENV, DEFAULT_ADDRESS, DEFAULT_TIMEOUT

TOKEN_ENV = "SENDONCE_TOKEN"  # noqa: S105 (the variable's name, not a secret)
TLS_ENV = "SENDONCE_TLS"
CA_ENV = "SENDONCE_CA"
CERT_ENV = "SENDONCE_CERT"
KEY_ENV = "SENDONCE_KEY"
# The DeliveryService's own status follows the store (the readiness probe); "" is the process.
DELIVERY_SERVICE = "sendonce.v1.DeliveryService"


def check(
    target: str,
    *,
    service: str = "",
    timeout: float = DEFAULT_TIMEOUT,
    token: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> str:
    """The status name the sidecar at `target` reports for `service` (e.g. "SERVING").

    Raises:
        grpc.RpcError: no answer (UNAVAILABLE, DEADLINE_EXCEEDED) or NOT_FOUND for a service
            the sidecar does not know.
    """
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    if credentials is None:
        channel = grpc.insecure_channel(target)
    else:
        channel = grpc.secure_channel(target, credentials)
    with channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout, metadata=metadata
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """The `health` subcommand, with its TLS options (flags, else $SENDONCE_TLS, ...)."""
    health = commands.add_parser(
        "health",
        help="exit 0 when the sidecar's health service answers SERVING (an exec probe)",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    health.set_defaults(run=run)
    health.add_argument(
        "--service",
        default="",
        help=f'"" (default): the process; {DELIVERY_SERVICE}: ready to deliver',
    )
    tls = health.add_argument_group("TLS (implied by any of --ca, --cert, --key)")
    tls.add_argument(
        "--tls",
        action="store_true",
        default=os.environ.get(TLS_ENV, "").lower() in {"1", "true", "yes"},
        help=f"use TLS with the system's roots (default: ${TLS_ENV})",
    )
    tls.add_argument("--ca", default=os.environ.get(CA_ENV), metavar="FILE",
                     help=f"PEM roots to verify the sidecar with (default: ${CA_ENV})")  # fmt: skip
    tls.add_argument("--cert", default=os.environ.get(CERT_ENV), metavar="FILE",
                     help=f"PEM client certificate, mutual TLS (default: ${CERT_ENV})")  # fmt: skip
    tls.add_argument("--key", default=os.environ.get(KEY_ENV), metavar="FILE",
                     help=f"PEM client key, mutual TLS (default: ${KEY_ENV})")  # fmt: skip
    return health


def run(args: argparse.Namespace) -> int:
    """Check, print the status (or the error on stderr), and return the exit status."""
    target = args.address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
    try:
        credentials = _credentials(args)
        status = check(
            target,
            service=args.service,
            timeout=args.timeout or DEFAULT_TIMEOUT,
            token=os.environ.get(TOKEN_ENV),
            credentials=credentials,
        )
    except OSError as error:
        print(f"error: cannot read {error.filename}: {error.strerror}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        code, details = error.code(), error.details()
        if args.json:
            print(json.dumps({"service": args.service, "error": code.name, "details": details}))
        print(f"error: {code.name}: {details} (sidecar at {target})", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"service": args.service, "status": status}))
    else:
        print(status)
    return 0 if status == "SERVING" else 1


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    if (args.cert is None) != (args.key is None):
        raise ValueError("--cert and --key go together (mutual TLS)")
    if not (args.tls or args.ca or args.cert):
        return None

    def read(path: str | None) -> bytes | None:
        return None if path is None else Path(path).read_bytes()

    return grpc.ssl_channel_credentials(read(args.ca), read(args.key), read(args.cert))
