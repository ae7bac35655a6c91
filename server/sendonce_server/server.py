"""The sidecar process: a grpc.aio server with health and reflection, stopped gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # the asyncio servicer (health.aio)
from grpc_reflection.v1alpha import reflection

from sendonce.v1 import delivery_pb2, delivery_pb2_grpc

from .api.servicer import CallGate, DeliveryServicer
from .api.validation import Limits
from .channels.registry import ChannelConfigError, build_channel
from .config import (
    ConfigError,
    ReceiversFile,
    ServerSettings,
    load_receivers,
    tracing_configured,
)
from .engine.engine import Engine, EngineSettings, Receiver
from .health import BoundedHealth, follow_store
from .security import TokenAuth, read_secret, server_credentials
from .store.factory import build_store
from .store.urls import display_url

if TYPE_CHECKING:
    from .telemetry import Telemetry

log = logging.getLogger("sendonce.server")

# The queue of calls received by gRPC core but not yet picked up by the event loop.
_MAX_PENDING = 20_000

SERVICE_NAME = delivery_pb2.DESCRIPTOR.services_by_name["DeliveryService"].full_name


@dataclass
class Sidecar:
    """A started server and what it serves; `stop` drains it."""

    server: grpc.aio.Server
    engine: Engine
    health: HealthServicer
    addresses: Sequence[str]
    settings: ServerSettings
    gate: CallGate
    store_follower: asyncio.Task[None] | None = None
    telemetry: Telemetry | None = None

    async def stop(self) -> None:
        """Health goes NOT_SERVING, new calls are refused, running attempts get the grace."""
        grace = self.settings.shutdown_grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace

        def remaining() -> float:
            return max(0.0, deadline - loop.time())

        self.gate.closed = True
        if self.store_follower is not None:
            self.store_follower.cancel()
        await self.health.enter_graceful_shutdown()
        running = self.engine.running
        if running:
            log.info("shutting down: waiting up to %gs for %d running attempts", grace, running)
        else:
            log.info("shutting down")
        await self.engine.drain(grace)
        # The calls that passed the gate send their answers (a call taken just before it closed
        # may have started its attempt after the drain began: the engine is drained again).
        await self.server.stop(remaining())
        left = await self.engine.drain(remaining())
        if left:
            log.warning("%d attempts still running at exit; their leases will expire", left)
        await self.engine.close()
        if self.telemetry is not None:
            self.telemetry.shutdown()
        log.info("stopped")


def build_receivers(config: ReceiversFile) -> list[Receiver]:
    receivers = []
    for receiver in config.receivers:
        try:
            channel = build_channel(receiver.type, receiver.settings)
        except ChannelConfigError as error:
            raise ConfigError(f"receiver {receiver.name!r}: {error}") from None
        receivers.append(
            Receiver(
                receiver.name,
                channel,
                config.policy_for(receiver),
                receiver.breaker.settings(),
                kind=receiver.type,
            )
        )
    return receivers


async def start(settings: ServerSettings, config: ReceiversFile | None = None) -> Sidecar:
    """Build and start the sidecar; the receivers default to the settings' config file."""
    if config is None:
        config = load_receivers(settings.config)
    credentials = server_credentials(settings)
    token = None
    if settings.auth_token_file is not None:
        token = read_secret(settings.auth_token_file, "auth token")
    store = build_store(
        settings.store, retention=settings.retention, clear_grace=settings.clear_grace
    )
    reachable = await store.ping()
    try:
        if not reachable and not settings.store_is_remote:
            raise ConfigError(f"cannot open the store {display_url(settings.store)}")
        receivers = build_receivers(config)
    except BaseException:
        await store.close()
        raise
    redactor = config.redaction.redactor()
    engine = Engine(
        store,
        receivers,
        settings=EngineSettings(lease_margin=settings.lease_margin, retention=settings.retention),
        redact=redactor.redact if redactor.rules else None,
    )
    telemetry = None
    try:
        if settings.metrics_listen or tracing_configured():
            # Imported only when asked for: the OpenTelemetry SDK slows every start.
            from .telemetry import TelemetrySettings
            from .telemetry import setup as setup_telemetry

            telemetry = setup_telemetry(
                TelemetrySettings(settings.metrics_listen, settings.trace_sample_ratio), engine
            )
        sidecar = await _serve(settings, engine, credentials, token, telemetry, reachable)
    except BaseException:
        # Whatever was opened (channels, store, metrics port) is closed again.
        await engine.close()
        if telemetry is not None:
            telemetry.shutdown()
        raise
    names = ", ".join(receiver.name for receiver in receivers)
    log.info(
        "serving on %s; store: %s; receivers: %s; event loop: %s",
        " and ".join(sidecar.addresses),
        display_url(settings.store),
        names,
        type(asyncio.get_running_loop()).__module__.split(".")[0],
    )
    return sidecar


async def _serve(
    settings: ServerSettings,
    engine: Engine,
    credentials: grpc.ServerCredentials | None,
    token: bytes | None,
    telemetry: Telemetry | None,
    reachable: bool,
) -> Sidecar:
    gate = CallGate(settings.max_concurrent_rpcs)
    # Outermost first: telemetry sees every call, refused ones included. With neither, grpc
    # runs no interceptor at all: even a pass-through interceptor costs every call.
    interceptors: list[grpc.aio.ServerInterceptor] = []  # type: ignore[type-arg]
    if telemetry is not None:
        from .telemetry import TelemetryInterceptor

        interceptors.append(TelemetryInterceptor(telemetry))
    if token is not None:
        interceptors.append(TokenAuth(token))
    server = grpc.aio.server(
        interceptors=interceptors or None,
        options=[
            # Two sidecars must never silently share a port.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # Calls gRPC core has received but the event loop has not picked up yet wait in a
            # queue; past its soft limit (1000 by default) core drops them at random with a
            # bare CANCELLED, so a burst of ~1,500 calls lost some. Raised far above the
            # concurrency limit, a burst reaches the servicer and gets real answers
            # (RESOURCE_EXHAUSTED beyond --max-concurrent-rpcs); the queue stays bounded.
            ("grpc.server.max_pending_requests", _MAX_PENDING),
            ("grpc.server.max_pending_requests_hard_limit", 2 * _MAX_PENDING),
            # HTTP/2 has no timeout for a call that sends its headers and never its message:
            # each connection is asked to go away (GOAWAY) after a while, and whatever still
            # runs on it a grace period later is dropped, so no call lives for ever.
            ("grpc.max_connection_age_ms", int(settings.stalled_call_timeout * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.stalled_call_timeout * 1000)),
        ],
    )
    delivery_pb2_grpc.add_DeliveryServiceServicer_to_server(
        DeliveryServicer(engine, Limits(max_body_bytes=settings.max_body_bytes), gate), server
    )
    health_servicer = BoundedHealth(settings.max_health_watchers)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    # gRPC creates the unix socket when the port is added: only this user may connect to it.
    old_umask = os.umask(0o177)
    try:
        addresses = _listen(server, settings, credentials)
    finally:
        os.umask(old_umask)
    await server.start()
    # "" is the process (liveness): SERVING until shutdown. The delivery service (readiness)
    # follows the store, so an outage of a shared store takes the pod out of service without
    # restarting it.
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    status = health_pb2.HealthCheckResponse.SERVING
    if not reachable:
        # A shared store may come up after the sidecar: wait for it NOT_SERVING, not exit.
        status = health_pb2.HealthCheckResponse.NOT_SERVING
        log.warning("store %s unreachable: not serving until it is", display_url(settings.store))
    await health_servicer.set(SERVICE_NAME, status)
    follower = None
    if settings.store != "memory":
        follower = asyncio.create_task(
            follow_store(
                engine.store,
                health_servicer,
                [SERVICE_NAME],
                settings.store_check_interval,
                reachable,
            ),
            name="sendonce-store-health",
        )
    return Sidecar(server, engine, health_servicer, addresses, settings, gate, follower, telemetry)


def _listen(
    server: grpc.aio.Server, settings: ServerSettings, credentials: grpc.ServerCredentials | None
) -> list[str]:
    addresses = []
    if settings.listen:
        requested = settings.listen.rpartition(":")[2]
        # gRPC keeps only the low 16 bits of a port: :99999 would silently listen on :34463.
        if requested.isdigit() and int(requested) > 65535:
            raise ConfigError(f"cannot listen on {settings.listen}: the port must be 0 to 65535")
        try:
            if credentials is None:
                port = server.add_insecure_port(settings.listen)
            else:
                port = server.add_secure_port(settings.listen, credentials)
        except RuntimeError:
            port = 0
        if not port:
            raise ConfigError(f"cannot listen on {settings.listen}: address in use or invalid")
        host = settings.listen.rsplit(":", 1)[0]
        addresses.append(f"{host}:{port}")
    if settings.unix_socket is not None:
        _remove_stale_socket(settings.unix_socket)
        if not server.add_insecure_port(f"unix:{settings.unix_socket}"):
            raise ConfigError(f"cannot listen on unix socket {settings.unix_socket}")
        addresses.append(f"unix:{settings.unix_socket}")
    if not addresses:
        raise ConfigError("nothing to listen on: set --listen and/or --unix-socket")
    return addresses


def _remove_stale_socket(path: Path) -> None:
    """A socket file left by a crashed sidecar blocks the bind; a live one must not be taken."""
    if not path.is_socket():
        return
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
            return
    raise ConfigError(f"unix socket {path} is in use by another process")


def _ignore_hangup() -> None:
    log.warning("SIGHUP ignored: sendonce-server does not reload; restart it to apply changes")


async def serve(settings: ServerSettings) -> int:
    """Run until SIGTERM or SIGINT, then stop gracefully. Returns the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before the health service can answer SERVING: from then on a SIGTERM must mean
    # a graceful stop, never the default instant death.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Operators send HUP by habit (as to Alertmanager, or from a config-reload sidecar); its
    # default action kills the process at once, losing a memory store. Until reloading exists,
    # it is logged and ignored.
    loop.add_signal_handler(signal.SIGHUP, _ignore_hangup)
    try:
        sidecar = await start(settings)
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
    await sidecar.stop()
    return 0
