"""The `sendonce` command: talk to a running sidecar by hand.

Readable output for people, `--json` for machines. Exit status: 0 when the sidecar answered (a
FAILED delivery is an answer), 1 when the call failed (gRPC error), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sendonce.client import ADDRESS_ENV, DEFAULT_ADDRESS, Client, SendonceError
from sendonce.types import (
    AttemptCountResult,
    CircuitState,
    ClearResult,
    DeliverResult,
    DeliveryPage,
    DeliveryState,
    Link,
    Notification,
    Priority,
    Receiver,
    RetryPolicy,
)

TOKEN_ENV = "SENDONCE_TOKEN"  # noqa: S105 (the variable's name, not a secret)


@dataclass(frozen=True, slots=True)
class Receivers:
    """The answer of `sendonce receivers`."""

    receivers: tuple[Receiver, ...]


@dataclass(frozen=True, slots=True)
class UidAttempts:
    """The answer of `sendonce attempts UID` without a channel: each channel with a record."""

    uid: str
    channels: Mapping[str, AttemptCountResult]
    #: Every configured receiver, also those without a record of the uid.
    configured: tuple[str, ...]


Result = DeliverResult | AttemptCountResult | ClearResult | Receivers | UidAttempts | DeliveryPage


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with `argv` (default: sys.argv[1:]) and return the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # argparse exits on usage errors (2) and --help (0)
        return exit_.code if isinstance(exit_.code, int) else 2
    command: Callable[[Client, argparse.Namespace], Result] = args.command
    try:
        with Client(args.address, token=os.environ.get(TOKEN_ENV)) as client:
            result = command(client, args)
    except SendonceError as error:
        print(f"error: {error.code.name}: {error.details}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(to_jsonable(result), indent=2, ensure_ascii=False))
    else:
        print(render(result))
    return 0


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


def _attempts(client: Client, args: argparse.Namespace) -> AttemptCountResult | UidAttempts:
    if args.channel is not None:
        return client.attempt_count(
            args.uid, args.channel, persisted_attempts=args.persisted_attempts, timeout=args.timeout
        )
    # Every configured receiver, asked one by one: the list is bounded by the receivers file.
    names = tuple(receiver.name for receiver in client.list_receivers(timeout=args.timeout))
    channels = {}
    for name in names:
        state = client.attempt_count(args.uid, name, timeout=args.timeout)
        if state.found:
            channels[name] = state
    return UidAttempts(args.uid, channels, names)


def _list(client: Client, args: argparse.Namespace) -> DeliveryPage:
    def page(token: str) -> DeliveryPage:
        return client.list_deliveries(
            state=None if args.state is None else DeliveryState(args.state),
            channel=args.channel or "",
            uid=args.uid or "",
            updated_after=args.since,
            updated_before=args.until,
            page_size=args.page_size,
            page_token=token,
            timeout=args.timeout,
        )

    first = page(args.page_token)
    if not args.all:
        return first
    deliveries, token = list(first.deliveries), first.next_page_token
    while token:
        more = page(token)
        deliveries += more.deliveries
        token = more.next_page_token
    return DeliveryPage(tuple(deliveries))


def _receivers(client: Client, args: argparse.Namespace) -> Receivers:
    return Receivers(client.list_receivers(timeout=args.timeout))


def _clear(client: Client, args: argparse.Namespace) -> ClearResult:
    return client.clear(args.uid, args.channels, force=args.force, timeout=args.timeout)


# --- arguments ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sendonce",
        description="Talk to a sendonce delivery sidecar.",
        epilog=f"The bearer token, if the sidecar wants one, is read from ${TOKEN_ENV}.",
    )
    _add_common(parser, suppress=False)
    commands = parser.add_subparsers(metavar="COMMAND", required=True)

    deliver = commands.add_parser("deliver", help="deliver a notification (at most once)")
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

    attempts = commands.add_parser(
        "attempts",
        help="show the state and history of a key (of every channel of the uid without CHANNEL)",
    )
    attempts.set_defaults(command=_attempts)
    attempts.add_argument("uid")
    attempts.add_argument("channel", nargs="?")
    attempts.add_argument(
        "--persisted-attempts", type=_count, default=0, metavar="N", help="with CHANNEL only"
    )

    receivers = commands.add_parser(
        "receivers", help="list the receivers: type, circuit breaker, attempt counts"
    )
    receivers.set_defaults(command=_receivers)

    listing = commands.add_parser(
        "list", help="list deliveries by state, channel, uid and time, newest first"
    )
    listing.set_defaults(command=_list)
    listing.add_argument(
        "--state", choices=[s.value for s in DeliveryState if s is not DeliveryState.UNKNOWN]
    )
    listing.add_argument("--channel")
    listing.add_argument("--uid")
    listing.add_argument(
        "--since", type=_instant, metavar="TIME", help="ISO 8601, UTC unless it has an offset"
    )
    listing.add_argument("--until", type=_instant, metavar="TIME", help="as --since, exclusive")
    listing.add_argument("--page-size", type=_count, default=0, metavar="N", help="default 50")
    listing.add_argument("--page-token", default="", metavar="TOKEN", help="from the last page")
    listing.add_argument("--all", action="store_true", help="follow every page")

    clear = commands.add_parser("clear", help="forget a notification (all channels by default)")
    clear.set_defaults(command=_clear)
    clear.add_argument("uid")
    clear.add_argument("channels", nargs="*", metavar="CHANNEL")
    clear.add_argument("--force", action="store_true", help="remove at once, keeping no tombstone")

    # The common options also work after the command (`sendonce attempts u c --json`); SUPPRESS
    # keeps a subcommand from overwriting a value given before it.
    for sub in (deliver, attempts, receivers, listing, clear):
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
        help="print the result as JSON",
    )


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


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time, got {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


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
    if isinstance(result, UidAttempts):
        return _render_uid_attempts(result)
    if isinstance(result, Receivers):
        return _render_receivers(result)
    if isinstance(result, DeliveryPage):
        return _render_deliveries(result)
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
    if result.idempotency_key:
        lines.append(f"idempotency key: {result.idempotency_key}")
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
        lines.append(_table(rows))
    return "\n".join(lines)


def _render_uid_attempts(result: UidAttempts) -> str:
    if not result.channels:
        configured = ", ".join(result.configured) or "none"
        return f"not found on any channel (configured: {configured})"
    blocks = []
    for channel, state in result.channels.items():
        lines = _render_attempts(state).splitlines()
        blocks.append("\n".join([f"{channel}: {lines[0]}", *(f"  {line}" for line in lines[1:])]))
    return "\n".join(blocks)


def _render_receivers(result: Receivers) -> str:
    rows = [
        ("name", "type", "circuit", "failures", "in flight", "started", "ok", "failed", "permanent")
    ]
    for receiver in result.receivers:
        circuit = receiver.circuit.value.replace("_", "-")
        if receiver.circuit_retry_after is not None:
            circuit += f" (probe in {_duration(receiver.circuit_retry_after)})"
        rows.append(
            (
                receiver.name,
                receiver.type,
                circuit,
                str(receiver.consecutive_failures),
                str(receiver.attempts_in_flight),
                str(receiver.attempts_started),
                str(receiver.attempts_succeeded),
                str(receiver.attempts_failed),
                str(receiver.attempts_failed_permanent),
            )
        )
    return _table(rows)


def _render_deliveries(result: DeliveryPage) -> str:
    if not result.deliveries:
        lines = ["no deliveries"]
    else:
        rows = [("uid", "channel", "state", "updated (UTC)", "attempts", "last error")]
        rows += [
            (
                d.uid,
                d.channel,
                d.state.value.replace("_", " "),
                "-" if d.update_time is None else _timestamp(d.update_time),
                f"{d.attempts_used}/{d.max_attempts}",
                d.last_error,
            )
            for d in result.deliveries
        ]
        lines = [_table(rows)]
    if result.next_page_token:
        lines.append(f"more: --page-token {result.next_page_token}")
    return "\n".join(lines)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


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
