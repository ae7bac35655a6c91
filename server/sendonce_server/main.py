"""The `sendonce-server` command."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version

from pydantic import ValidationError
from pydantic_settings import CliApp

from . import logs
from .config import ConfigError, ServerSettings, describe
from .server import serve

log = logging.getLogger("sendonce.server")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # Not a settings field: an environment variable must never turn the server into a printer.
    if "--version" in args:
        print(f"sendonce-server {version('sendonce-server')}")
        return 0
    if args[:1] == ["check-config"]:
        from .check import run as check_config

        return check_config(args[1:])
    try:
        settings = CliApp.run(ServerSettings, cli_args=args)
    except ValidationError as error:
        print(f"sendonce-server: invalid settings:\n{describe(error)}", file=sys.stderr)
        return 2
    handler = logs.configure(settings.log_level, settings.log_format)
    try:
        loop_factory = _loop_factory(settings.event_loop)
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(serve(settings))
    except ConfigError as error:
        log.error("%s", error)
        return 2
    finally:
        handler.close()


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when asked for (or, with auto, when installed); None: asyncio's own."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("--event-loop uvloop: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())
