"""`sendonce-server check-config`: every problem of a configuration, found without serving.

It reads the same flags and SENDONCE_* variables as the server, then checks what the server
would check at start (settings, store URL, TLS files, token file, the receivers file, each
receiver's settings and secrets) and carries on past each problem, so one run names them all.
Nothing is listened on, no store is opened and nothing is sent. The summary names receivers,
types and policies, never a secret's value nor a secret URL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import CliApp

from .channels.registry import ChannelConfigError, build_channel
from .config import ConfigError, ReceiversFile, ServerSettings, describe, load_receivers
from .engine.ports import Channel
from .security import read_secret, server_credentials
from .store.urls import display_url


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        """One entry per problem: a validation error's lines each become one, under its head."""
        head, *lines = text.split("\n")
        if not lines:
            self.problems.append(text)
        for line in lines:
            self.problems.append(f"{head.rstrip(':')}: {line.strip()}")


def check(args: Sequence[str]) -> Report:
    report = Report()
    settings: ServerSettings | None = None
    try:
        settings = CliApp.run(ServerSettings, cli_args=list(args))
    except ValidationError as error:
        report.problem(f"settings:\n{describe(error)}")
    config_path = settings.config if settings is not None else _config_path(args)
    if settings is not None:
        _check_server(settings, report)
    receivers = None
    try:
        receivers = load_receivers(config_path)
    except ConfigError as error:
        report.problem(str(error))
    if receivers is not None:
        asyncio.run(_check_receivers(receivers, config_path, report))
    return report


def _check_server(settings: ServerSettings, report: Report) -> None:
    try:
        tls = server_credentials(settings) is not None
    except ConfigError as error:
        report.problem(str(error))
        tls = False
    if settings.auth_token_file is not None:
        try:
            read_secret(settings.auth_token_file, "auth token")
        except ConfigError as error:
            report.problem(str(error))
    where = " and ".join(
        address
        for address in (
            settings.listen,
            f"unix:{settings.unix_socket}" if settings.unix_socket else "",
        )
        if address
    )
    if not where:
        report.problem("nothing to listen on: set --listen and/or --unix-socket")
    mutual = " (mutual)" if settings.tls_client_ca_file is not None else ""
    report.summary += [
        f"listen: {where or '-'}{'; TLS' + mutual if tls else ''}",
        f"auth token: {'required' if settings.auth_token_file else 'off'}",
        f"store: {display_url(settings.store)}",
    ]


async def _check_receivers(config: ReceiversFile, path: Path | None, report: Report) -> None:
    report.summary.append(f"receivers ({path if path else 'embedded default'}):")
    built: list[Channel] = []
    for receiver in config.receivers:
        policy = None
        try:
            policy = config.policy_for(receiver)
        except ConfigError as error:
            report.problem(str(error))
        try:
            built.append(build_channel(receiver.type, receiver.settings))
        except ChannelConfigError as error:
            report.problem(f"receiver {receiver.name!r}: {error}")
            continue
        if policy is None:
            continue
        breaker = receiver.breaker.failures
        report.summary.append(
            f"  {receiver.name} ({receiver.type}): at most {policy.max_attempts} attempts, "
            f"backoff {policy.initial_backoff:g}s x{policy.multiplier:g} up to "
            f"{policy.max_backoff:g}s; breaker "
            + (f"opens after {breaker} failures" if breaker else "off")
        )
    rules = config.redaction.active_rules()
    report.summary.append(f"redaction: {len(rules)} rules" if rules else "redaction: off")
    for channel in built:
        await channel.close()


def _config_path(args: Sequence[str]) -> Path | None:
    """--config when the settings as a whole did not validate: the file is still checked."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    known, _ = parser.parse_known_args(list(args))
    value = known.config or os.environ.get("SENDONCE_CONFIG")
    return Path(value) if value else None


def run(args: Sequence[str]) -> int:
    """Prints the summary (exit 0) or every problem (exit 2)."""
    report = check(args)
    if report.problems:
        count = len(report.problems)
        print(f"sendonce-server check-config: {count} problem{'s' if count > 1 else ''}:")
        for problem in report.problems:
            print(f"- {problem}")
        return 2
    print("sendonce-server check-config: configuration OK")
    for line in report.summary:
        print(f"  {line}")
    return 0
