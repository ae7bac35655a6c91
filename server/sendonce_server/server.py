"""The sidecar process: a grpc.aio server with health and reflection, stopped gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # the asyncio servicer (health.aio)
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer  # reflection.aio's servicer

from sendonce.v1 import delivery_pb2, delivery_pb2_grpc

from .api.servicer import CallGate, DeliveryServicer
from .api.validation import Limits
from .channels.registry import ChannelConfigError, build_channel
from .config import (
    TRACES_OFF,
    ConfigError,
    ReceiversFile,
    ServerSettings,
    load_receivers,
    tracing_configured,
)
from .engine.engine import Engine, EngineSettings, Receiver
from .health import BoundedHealth, follow_store
from .security import TokenAuth, read_secret, server_credentials
from .status import Readiness, ReloadStatus
from .store.factory import build_store
from .store.urls import display_url
from .wire import add_lenient

if TYPE_CHECKING:
    from .admin import AdminServer
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
    readiness: Readiness = field(default_factory=Readiness)
    reloads: ReloadStatus = field(default_factory=ReloadStatus)
    store_follower: asyncio.Task[None] | None = None
    telemetry: Telemetry | None = None
    admin: AdminServer | None = None
    # Replaced receivers whose channels close once their running attempts end.
    retiring: set[asyncio.Task[None]] = field(default_factory=set)
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def reload(self) -> str:
        """Re-read the receivers file and serve it; returns a summary of what is served now.

        Attempts running keep the receiver they started with; a receiver whose breaker
        settings stay keeps its breaker; records are the store's and are untouched. A file
        that cannot be used raises ConfigError, and the configuration in use stays.
        """
        async with self.reload_lock:
            source = str(self.settings.config or "the embedded default")
            try:
                config = load_receivers(self.settings.config)
                receivers = await build_receivers(config)
            except ConfigError as error:
                self.reloads.failed()
                log.error(
                    "reload of %s failed, the configuration in use stays: %s",
                    source,
                    " ".join(line.strip() for line in str(error).splitlines()),
                )
                raise
            redactor = config.redaction.redactor()
            replaced = self.engine.reconfigure(
                receivers, redactor.redact if redactor.rules else None
            )
            retire = asyncio.create_task(self.engine.retire(replaced), name="sendonce-retire")
            self.retiring.add(retire)
            retire.add_done_callback(self.retiring.discard)
            self.reloads.succeeded()
            names = ", ".join(receiver.name for receiver in receivers)
            log.info("reloaded %s; receivers: %s", source, names)
            return f"reloaded {source}; receivers: {names}"

    async def stop(self) -> None:
        """Health goes NOT_SERVING, new calls are refused, running attempts get the grace."""
        grace = self.settings.shutdown_grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace

        def remaining() -> float:
            return max(0.0, deadline - loop.time())

        self.gate.closed = True
        self.readiness.shutting_down = True
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
        for retire in list(self.retiring):
            retire.cancel()
        await self.engine.close()
        if self.admin is not None:
            self.admin.close()
        if self.telemetry is not None:
            self.telemetry.shutdown()
        log.info("stopped")


async def build_receivers(config: ReceiversFile) -> list[Receiver]:
    """Every receiver of `config` with its channel; on a bad one, those built are closed."""
    receivers: list[Receiver] = []
    for receiver in config.receivers:
        try:
            channel = build_channel(receiver.type, receiver.settings)
            policy = config.policy_for(receiver)
        except (ChannelConfigError, ConfigError) as error:
            for built in receivers:
                await built.channel.close()
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(f"receiver {receiver.name!r}: {error}") from None
        receivers.append(
            Receiver(
                receiver.name,
                channel,
                policy,
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
        receivers = await build_receivers(config)
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
    readiness, reloads = Readiness(store_reachable=reachable), ReloadStatus()
    reloads.succeeded()
    telemetry = None
    sidecar = None
    try:
        registry = None
        if settings.metrics_listen:
            # Imported only when asked for: prometheus_client and the OpenTelemetry SDK slow
            # every start.
            from .admin import registry_for

            registry = registry_for(readiness, reloads)
        if registry is not None or tracing_configured():
            from .telemetry import TelemetrySettings
            from .telemetry import setup as setup_telemetry

            telemetry = setup_telemetry(
                TelemetrySettings(settings.trace_sample_ratio), engine, registry
            )
        else:
            log.info("traces: %s", TRACES_OFF)
        sidecar = await _serve(settings, engine, credentials, token, telemetry, readiness, reloads)
        if registry is not None and settings.metrics_listen:
            from .admin import AdminApp, AdminServer

            app = AdminApp(registry, readiness, sidecar.reload, asyncio.get_running_loop())
            sidecar.admin = AdminServer(settings.metrics_listen, app)
            log.info(
                "admin port on http://%s: /metrics, /healthz, /readyz, POST /-/reload",
                settings.metrics_listen,
            )
    except BaseException:
        # Whatever was opened (channels, store, gRPC and admin ports) is closed again.
        if sidecar is not None:
            await sidecar.server.stop(0)
            if sidecar.store_follower is not None:
                sidecar.store_follower.cancel()
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
    readiness: Readiness,
    reloads: ReloadStatus,
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
    # Every service parses leniently: bytes that are not its message are INVALID_ARGUMENT,
    # never an UNKNOWN with a logged traceback (wire.py).
    add_lenient(
        server,
        delivery_pb2_grpc.add_DeliveryServiceServicer_to_server,
        DeliveryServicer(engine, Limits(max_body_bytes=settings.max_body_bytes), gate),
    )
    health_servicer = BoundedHealth(settings.max_health_watchers)
    add_lenient(server, health_pb2_grpc.add_HealthServicer_to_server, health_servicer)
    reflected = [
        SERVICE_NAME,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ]
    add_lenient(
        server,
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
        ReflectionServicer(reflected),
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
    if not readiness.store_reachable:
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
                readiness,
            ),
            name="sendonce-store-health",
        )
    return Sidecar(
        server,
        engine,
        health_servicer,
        addresses,
        settings,
        gate,
        readiness,
        reloads,
        store_follower=follower,
        telemetry=telemetry,
    )


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


async def _reload_on_hangup(sidecar: Sidecar | None) -> None:
    if sidecar is None:
        log.warning("SIGHUP ignored: still starting")
        return
    log.info("SIGHUP: reloading the receivers file")
    with contextlib.suppress(ConfigError):  # logged by reload; the configuration stays
        await sidecar.reload()


async def serve(settings: ServerSettings) -> int:
    """Run until SIGTERM or SIGINT, then stop gracefully. Returns the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before the health service can answer SERVING: from then on a SIGTERM must mean
    # a graceful stop, never the default instant death.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # SIGHUP reloads the receivers file, as for Alertmanager; its default action would kill the
    # process at once, losing a memory store, so it is handled from before the start.
    sidecar: Sidecar | None = None
    reloads: set[asyncio.Task[None]] = set()

    def hangup() -> None:
        task = asyncio.create_task(_reload_on_hangup(sidecar), name="sendonce-sighup")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    try:
        sidecar = await start(settings)
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
    await sidecar.stop()
    return 0
