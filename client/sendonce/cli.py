"""The `sendonce` command: talk to a running sidecar by hand or from a shell script.

Readable output for people, `--json` for machines. The exit status says what happened (see
`EXIT_STATUSES`), so a script can act on it without parsing the output.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Final, NoReturn

import grpc

from sendonce.client import ADDRESS_ENV, DEFAULT_ADDRESS, TOKEN_ENV, Client
from sendonce.errors import SendonceError
from sendonce.types import (
    AttemptCountResult,
    CircuitState,
    ClearResult,
    DeliverResult,
    Link,
    Notification,
    Priority,
    RetryPolicy,
)

# Exit statuses. `deliver` uses all of them; `attempts` and `clear` answer 0, 1 or 2.
EXIT_DELIVERED: Final = 0  # delivered now or earlier (or: the sidecar answered)
EXIT_RPC_ERROR: Final = 1  # the call failed: a gRPC error, the sidecar not reachable, ...
EXIT_USAGE: Final = 2  # bad arguments, or a TLS file that cannot be read
EXIT_NOT_FINAL: Final = 3  # not delivered yet, not final: call again after retry_after
EXIT_GAVE_UP: Final = 4  # final without a delivery: failed permanently, or attempts exhausted

EXIT_STATUSES: Final = f"""\
exit status:
  {EXIT_DELIVERED}  delivered, or already delivered (attempts, clear: the sidecar answered)
  {EXIT_RPC_ERROR}  the call failed (a gRPC error, e.g. NOT_FOUND, or no sidecar listening)
  {EXIT_USAGE}  usage error (bad arguments, unreadable TLS file)
  {EXIT_NOT_FINAL}  deliver: not final (failed, retry later, in progress, circuit open): call again
  {EXIT_GAVE_UP}  deliver: final without a delivery (failed permanently, or attempts exhausted)"""

TLS_ENV: Final = "SENDONCE_TLS"
CA_ENV: Final = "SENDONCE_TLS_CA_FILE"
CERT_ENV: Final = "SENDONCE_TLS_CLIENT_CERT_FILE"
KEY_ENV: Final = "SENDONCE_TLS_CLIENT_KEY_FILE"
SERVER_NAME_ENV: Final = "SENDONCE_TLS_SERVER_NAME"

Result = DeliverResult | AttemptCountResult | ClearResult


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with `argv` (default: sys.argv[1:]) and return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
        client = _client(args)
    except _UsageError as error:
        _report_usage(error, as_json="--json" in argv)
        return EXIT_USAGE
    except SystemExit as exit_:  # --help and --version print and exit 0
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    command: Callable[[Client, argparse.Namespace], Result] = args.command
    try:
        with client:
            result = command(client, args)
    except SendonceError as error:
        _report_error(error, client.target, as_json=args.json)
        return EXIT_RPC_ERROR
    if args.json:
        print(json.dumps(to_jsonable(result), indent=2, ensure_ascii=False))
    else:
        print(render(result))
    return exit_status(result)


def exit_status(result: Result) -> int:
    """0 unless a Deliver answer says "not delivered": 3 while it may still be, 4 once final."""
    if not isinstance(result, DeliverResult) or result.delivered:
        return EXIT_DELIVERED
    return EXIT_GAVE_UP if result.final else EXIT_NOT_FINAL


# --- commands ----------------------------------------------------------------------------------


def _deliver(client: Client, args: argparse.Namespace) -> DeliverResult:
    notification = Notification(
        subject=args.subject,
        body=args.body,
        priority=Priority(args.priority),
        metadata=dict(args.meta),
        links=tuple(args.link),
    )
    policy = RetryPolicy(
        max_attempts=args.max_attempts,
        initial_backoff=args.initial_backoff,
        multiplier=args.multiplier,
        max_backoff=args.max_backoff,
        jitter=args.jitter,
    )
    return client.deliver(
        args.uid,
        args.channel,
        notification,
        retry_policy=None if policy == RetryPolicy() else policy,
        persisted_attempts=args.persisted_attempts,
        timeout=args.timeout,
    )


def _attempts(client: Client, args: argparse.Namespace) -> AttemptCountResult:
    return client.attempt_count(
        args.uid, args.channel, persisted_attempts=args.persisted_attempts, timeout=args.timeout
    )


def _clear(client: Client, args: argparse.Namespace) -> ClearResult:
    return client.clear(args.uid, args.channels, force=args.force, timeout=args.timeout)


# --- arguments ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sendonce",
        description="Talk to a sendonce delivery sidecar.",
        epilog=f"The bearer token, if the sidecar wants one, is read from ${TOKEN_ENV}.\n\n"
        f"{EXIT_STATUSES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('sendonce')}")
    _add_common(parser, suppress=False)
    commands = parser.add_subparsers(metavar="COMMAND", required=True)

    deliver = commands.add_parser(
        "deliver",
        help="deliver a notification (at most once)",
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    deliver.set_defaults(command=_deliver)
    deliver.add_argument("uid")
    deliver.add_argument("channel")
    deliver.add_argument("--subject", required=True)
    body = deliver.add_mutually_exclusive_group()
    body.add_argument("--body", default="", help="Markdown body")
    body.add_argument(
        "--body-file",
        dest="body",
        type=_read_text,
        metavar="FILE",
        help="read the body ('-': stdin)",
    )
    deliver.add_argument(
        "--priority",
        choices=[p.value for p in Priority if p is not Priority.UNSPECIFIED],
        default=Priority.UNSPECIFIED.value,
    )
    deliver.add_argument(
        "--meta", action="append", type=_pair, default=[], metavar="KEY=VALUE", help="repeatable"
    )
    deliver.add_argument(
        "--link", action="append", type=_link, default=[], metavar="TITLE=URL", help="repeatable"
    )
    deliver.add_argument("--max-attempts", type=_count, metavar="N")
    deliver.add_argument("--initial-backoff", type=_seconds, metavar="SECONDS")
    deliver.add_argument("--max-backoff", type=_seconds, metavar="SECONDS")
    deliver.add_argument("--multiplier", type=float)
    deliver.add_argument("--jitter", type=float, metavar="FRACTION")
    deliver.add_argument("--persisted-attempts", type=_count, default=0, metavar="N")

    attempts = commands.add_parser("attempts", help="show the state and history of a key")
    attempts.set_defaults(command=_attempts)
    attempts.add_argument("uid")
    attempts.add_argument("channel")
    attempts.add_argument("--persisted-attempts", type=_count, default=0, metavar="N")

    clear = commands.add_parser("clear", help="forget a notification (all channels by default)")
    clear.set_defaults(command=_clear)
    clear.add_argument("uid")
    clear.add_argument("channels", nargs="*", metavar="CHANNEL")
    clear.add_argument("--force", action="store_true", help="remove at once, keeping no tombstone")

    # The common options also work after the command (`sendonce attempts u c --json`); SUPPRESS
    # keeps a subcommand from overwriting a value given before it.
    for sub in (deliver, attempts, clear):
        _add_common(sub, suppress=True)
    return parser


def _add_common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default: object = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--address",
        default=default,
        help=f"host:port or unix:///path (default: ${ADDRESS_ENV}, else {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=default,
        metavar="S",
        help="deadline of the call in seconds (default: 30 for deliver, 5 otherwise)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print the result as JSON on stdout (an error: as JSON on stderr)",
    )
    tls = parser.add_argument_group("TLS (each option also from its environment variable)")
    tls.add_argument(
        "--tls",
        action="store_true",
        default=argparse.SUPPRESS if suppress else None,
        help=f"use TLS, trusting the system's roots; implied by --ca and --cert (${TLS_ENV}=1)",
    )
    tls.add_argument(
        "--ca",
        default=default,
        metavar="FILE",
        help=f"PEM CA certificate(s) to verify the sidecar with (${CA_ENV})",
    )
    tls.add_argument(
        "--cert",
        default=default,
        metavar="FILE",
        help=f"PEM client certificate, for mutual TLS, with --key (${CERT_ENV})",
    )
    tls.add_argument(
        "--key",
        default=default,
        metavar="FILE",
        help=f"PEM key of --cert (${KEY_ENV})",
    )
    tls.add_argument(
        "--server-name",
        default=default,
        metavar="NAME",
        help="the name the sidecar's certificate must carry, when it is not the address's "
        f"host (e.g. a DNS name while calling 127.0.0.1) (${SERVER_NAME_ENV})",
    )


class _UsageError(Exception):
    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises usage errors, so `main` can report them as text or JSON."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message, self.format_usage())


def _client(args: argparse.Namespace) -> Client:
    """A Client from the options, else their environment variables (the token: $SENDONCE_TOKEN,
    read by the Client itself)."""
    tls = args.tls or _flag(os.environ.get(TLS_ENV, ""), TLS_ENV)
    ca = _pem(args.ca, "--ca", CA_ENV)
    cert = _pem(args.cert, "--cert", CERT_ENV)
    key = _pem(args.key, "--key", KEY_ENV)
    if (cert is None) != (key is None):
        raise _UsageError("mutual TLS needs both a certificate (--cert) and its key (--key)", "")
    server_name = args.server_name or os.environ.get(SERVER_NAME_ENV)
    if server_name and not (tls or ca or cert):
        raise _UsageError("--server-name needs TLS (--tls, --ca or --cert)", "")
    return Client(
        args.address,
        tls=tls,
        root_certificates=ca,
        certificate_chain=cert,
        private_key=key,
        options=[("grpc.ssl_target_name_override", server_name)] if server_name else [],
    )


def _flag(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise _UsageError(f"${name} must be 1 or 0 (true or false), got {text!r}", "")


def _pem(path: str | None, option: str, variable: str) -> bytes | None:
    """The file named by the option, else by the environment variable; None when neither."""
    if not path:
        path, option = os.environ.get(variable), f"${variable}"
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise _UsageError(f"{option}: cannot read {path}: {error.strerror}", "") from error


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _link(text: str) -> Link:
    title, url = _pair(text)
    return Link(title=title, url=url)


def _count(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:  # a uint32 on the wire
        raise argparse.ArgumentTypeError(f"must be between 0 and 2^32 - 1, got {value}")
    return value


def _seconds(text: str) -> timedelta:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return timedelta(seconds=value)


def _positive_seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _read_text(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {error.strerror}") from error


# --- output ------------------------------------------------------------------------------------


def _report_usage(error: _UsageError, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"error": {"code": "USAGE", "message": str(error)}}), file=sys.stderr)
    else:
        print(f"{error.usage}sendonce: error: {error}", file=sys.stderr)


def _report_error(error: SendonceError, target: str, *, as_json: bool) -> None:
    hint = _hint(error, target)
    if as_json:
        document = {
            "code": error.code.name,
            "message": error.details,
            "reason": error.reason,
            "domain": error.domain,
            "metadata": dict(error.metadata),
            "field_violations": [
                {"field": v.field, "description": v.description} for v in error.field_violations
            ],
            "retry_delay": to_jsonable(error.retry_delay),
            "hint": hint,
        }
        print(json.dumps({"error": document}, ensure_ascii=False), file=sys.stderr)
        return
    print(f"error: {error.code.name}: {error.details}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def _hint(error: SendonceError, target: str) -> str | None:
    """What to check when the sidecar could not be reached at all (gRPC's own words vary)."""
    if error.code is not grpc.StatusCode.UNAVAILABLE:
        return None
    details = error.details
    if "Connection refused" in details or "No such file or directory" in details:
        return f"is sendonce-server running at {target}?"
    if "Hostname Verification" in details:
        return "the sidecar's certificate does not carry the name asked for: --server-name NAME"
    if "handshake failed" in details.lower():
        return "TLS failed: --ca FILE with the CA that signed the sidecar's certificate"
    if "Socket closed" in details:
        return (
            "the sidecar closed the connection: does it serve TLS (--tls or --ca FILE) "
            "or want a client certificate (--cert and --key)?"
        )
    return None


def to_jsonable(value: object) -> object:
    """Plain JSON data of a result: enums as lowercase strings, timedeltas as seconds."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [to_jsonable(item) for item in value]
    return value


def render(result: Result) -> str:
    """Readable text of a result, for people debugging a running sidecar."""
    if isinstance(result, DeliverResult):
        return _render_deliver(result)
    if isinstance(result, AttemptCountResult):
        return _render_attempts(result)
    return _render_clear(result)


def _render_deliver(result: DeliverResult) -> str:
    if result.attempt:
        facts = [f"attempt {result.attempt} of {result.max_attempts}"]
    else:
        facts = [f"{result.attempts_used} of {result.max_attempts} attempts used"]
    if result.shared:
        facts.append("shared")
    if result.gave_up:
        facts.append("final")
    line = f"{result.outcome.value.replace('_', ' ')} ({', '.join(facts)})"
    if result.receipt is not None:
        line += f" — receipt: {result.receipt.reference}"
    if result.retry_after is not None:
        line += f" — retry after {_duration(result.retry_after)}"
    if result.last_error:
        line += f" — last error: {result.last_error}"
    lines = [line]
    if result.receipt is not None:
        lines += [f"  {key}: {value}" for key, value in sorted(result.receipt.details.items())]
    return "\n".join(lines)


def _render_attempts(result: AttemptCountResult) -> str:
    if not result.found:
        state = "not found"
    elif result.succeeded:
        state = "delivered"
    elif result.final:
        state = "final, not delivered"
    else:
        state = "open"
    facts = [
        f"{result.attempts_used} of {result.max_attempts} attempts used",
        f"{result.remaining} remaining",
    ]
    if result.in_flight:
        facts.append("in flight")
    if result.cleared:
        facts.append("cleared (only the running or successful attempt is kept)")
    if result.circuit in (CircuitState.OPEN, CircuitState.HALF_OPEN):
        facts.append(f"circuit {result.circuit.value.replace('_', '-')}")
    lines = [f"{state}: {', '.join(facts)}"]
    if result.retry_after is not None:
        lines.append(f"retry after: {_duration(result.retry_after)}")
    if result.last_error:
        lines.append(f"last error: {result.last_error}")
    if result.history:
        rows = [("#", "started (UTC)", "duration", "result", "error")]
        rows += [
            (
                str(attempt.number),
                _timestamp(attempt.start_time),
                "-" if attempt.duration is None else _duration(attempt.duration),
                attempt.result.value,
                attempt.error,
            )
            for attempt in result.history
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines += [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
    return "\n".join(lines)


def _render_clear(result: ClearResult) -> str:
    lines = [f"cleared: {', '.join(result.cleared_channels) or 'nothing'}"]
    if result.running_channels:
        running = ", ".join(result.running_channels)
        lines.append(f"still running (will finish and be recorded): {running}")
    return "\n".join(lines)


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "milliseconds")


def _duration(value: timedelta) -> str:
    return f"{value.total_seconds():g}s"
