"""The admin HTTP port: /metrics, /healthz, /readyz and POST /-/reload; 404 for anything else.

It runs in a thread of its own, so a scrape or a probe never waits for the event loop and a
busy loop never fails a liveness probe. What it serves comes from plain state the loop updates
(`status.Readiness`, `status.ReloadStatus`); a reload is handed to the loop, awaited with a
bound.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.process_collector import ProcessCollector

from . import __version__
from .config import ConfigError
from .status import Readiness, ReloadStatus

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("sendonce.admin")

# A reload waits for the receivers file and the channels' secrets: seconds, not minutes.
RELOAD_TIMEOUT = 30.0


class SidecarCollector:
    """Series read from the sidecar's state at scrape time: store, reloads, build."""

    def __init__(self, readiness: Readiness, reloads: ReloadStatus) -> None:
        self.readiness = readiness
        self.reloads = reloads

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "sendonce_store_up", "1 when the delivery state store answered its last check"
        )
        up.add_metric([], 1.0 if self.readiness.store_reachable else 0.0)
        yield up
        failures = CounterMetricFamily(
            "sendonce_store_check_failures", "Store health checks that failed"
        )
        failures.add_metric([], self.readiness.store_check_failures)
        yield failures
        ok = GaugeMetricFamily(
            "sendonce_config_last_reload_successful",
            "1 when the last reload of the receivers file succeeded (or none was asked for)",
        )
        ok.add_metric([], 1.0 if self.reloads.successful else 0.0)
        yield ok
        when = GaugeMetricFamily(
            "sendonce_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (start or reload)",
        )
        when.add_metric([], self.reloads.last_success)
        yield when
        reload_failures = CounterMetricFamily(
            "sendonce_config_reload_failures", "Reloads refused (the configuration in use kept)"
        )
        reload_failures.add_metric([], self.reloads.failures)
        yield reload_failures
        build = GaugeMetricFamily(
            "sendonce_build_info", "Always 1: the version running", labels=["version", "python"]
        )
        build.add_metric([__version__, sys.version.split()[0]], 1.0)
        yield build


def registry_for(readiness: Readiness, reloads: ReloadStatus) -> CollectorRegistry:
    """A registry with the sidecar's own series and the process's (CPU, memory, fds)."""
    registry = CollectorRegistry()
    registry.register(SidecarCollector(readiness, reloads))
    ProcessCollector(registry=registry)
    return registry


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


class AdminApp:
    """The WSGI application: a handful of fixed paths, nothing else."""

    def __init__(
        self,
        registry: CollectorRegistry,
        readiness: Readiness,
        reload: Callable[[], Awaitable[str]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.metrics = make_wsgi_app(registry)
        self.readiness = readiness
        self.reload = reload
        self.loop = loop

    def __call__(self, environ: WSGIEnvironment, start: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path == "/metrics":
            metrics: Iterable[bytes] = self.metrics(environ, start)
            return metrics
        if path == "/healthz":
            return _text(start, "200 OK", "ok")
        if path == "/readyz":
            if self.readiness.ready:
                return _text(start, "200 OK", "ready")
            return _text(start, "503 Service Unavailable", self.readiness.why_not())
        if path == "/-/reload":
            if method != "POST":
                return _text(start, "405 Method Not Allowed", "use POST", [("Allow", "POST")])
            return self._reload(start)
        return _text(start, "404 Not Found", "not found: /metrics, /healthz, /readyz, /-/reload")

    def _reload(self, start: StartResponse) -> Iterable[bytes]:
        future = asyncio.run_coroutine_threadsafe(_awaited(self.reload), self.loop)
        try:
            summary = future.result(timeout=RELOAD_TIMEOUT)
        except ConfigError as error:
            return _text(start, "500 Internal Server Error", f"failed to reload config: {error}")
        except TimeoutError:
            future.cancel()
            return _text(start, "500 Internal Server Error", "failed to reload config: timed out")
        return _text(start, "200 OK", summary)


async def _awaited(reload: Callable[[], Awaitable[str]]) -> str:
    return await reload()


def _text(
    start: StartResponse, status: str, body: str, headers: list[tuple[str, str]] | None = None
) -> list[bytes]:
    data = (body + "\n").encode()
    start(status, [("Content-Type", "text/plain; charset=utf-8"), *(headers or [])])
    return [data]


class AdminServer:
    """The admin port's HTTP server, in a daemon thread until `close`."""

    def __init__(self, listen: str, app: AdminApp) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"  # noqa: S104 (the operator's choice)
        server_class = _IPv6Server if ":" in host else ThreadingWSGIServer
        try:
            self.httpd = make_server(
                host, int(port), app, server_class=server_class, handler_class=_QuietHandler
            )
        except ValueError:
            raise ConfigError(f"cannot serve the admin port on {listen}: use host:port") from None
        except (OSError, OverflowError) as error:
            reason = getattr(error, "strerror", None) or "the port must be 0 to 65535"
            raise ConfigError(f"cannot serve the admin port on {listen}: {reason}") from None
        self.port: int = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="sendonce-admin", daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _IPv6Server(ThreadingWSGIServer):
    address_family = socket.AF_INET6
