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
import sys
from typing import Any

from sendonce.client import Client
from sendonce.errors import SendonceError

# The DeliveryService's own status follows the store (the readiness probe); "" is the process.
DELIVERY_SERVICE = "sendonce.v1.DeliveryService"


def add_parser(commands: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """The `health` subcommand; the connection options are the CLI's common ones."""
    health: argparse.ArgumentParser = commands.add_parser(
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
    return health


def run(client: Client, args: argparse.Namespace) -> int:
    """Check, print the status (or the error on stderr), and return the exit status."""
    try:
        status = client.health(args.service, timeout=args.timeout)
    except SendonceError as error:
        if args.json:
            print(json.dumps({"service": args.service, "error": error.code.name}))
        print(f"error: {error.code.name}: {error.details} (sidecar at {client.target})",
              file=sys.stderr)  # fmt: skip
        return 1
    if args.json:
        print(json.dumps({"service": args.service, "status": status}))
    else:
        print(status)
    return 0 if status == "SERVING" else 1
