"""Configuration: server settings from flags and SENDONCE_* variables; receivers from TOML."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .api.validation import CHANNEL_PATTERN
from .engine import defaults
from .engine.breaker import BreakerSettings
from .engine.policy import MAX_ATTEMPTS, MIN_ATTEMPTS, PolicyError, RetryPolicy
from .redaction import RedactionConfig
from .store.urls import StoreUrlError, parse_store_url


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


class ServerSettings(BaseSettings):
    """sendonce-server: a gRPC delivery sidecar that sends each notification at most once.

    Every flag can also be set by an environment variable: SENDONCE_ and the flag's name in
    upper case with '_' for '-' (e.g. SENDONCE_LISTEN). --version prints the version.

    `sendonce-server check-config [flags]` checks the same flags and the receivers file without
    serving: exit 0 with a summary, or 2 naming every problem.
    """

    model_config = SettingsConfigDict(
        env_prefix="SENDONCE_",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_prog_name="sendonce-server",
        extra="forbid",
    )

    listen: str = Field(
        "127.0.0.1:50051", description="TCP address to listen on (host:port); empty to disable"
    )
    unix_socket: Path | None = Field(None, description="Also listen on this unix socket path")
    config: Path | None = Field(
        None, description="Receivers file (TOML); without it a 'console' receiver is configured"
    )
    store: str = Field(
        "memory",
        description="Where delivery state lives: memory (one process); "
        "sqlite:///absolute/path.db (sqlite://relative.db) to survive restarts; "
        "redis://[:password@]host:port/db, rediss:// (TLS), redis+cluster://host:port "
        "(Redis Cluster) or redis+sentinel://host:port[,host:port]/service[/db] (Sentinel) "
        "to share it between replicas",
    )
    max_body_bytes: int = Field(
        64 * 1024, gt=0, le=4 * 1024 * 1024, description="Largest notification body accepted"
    )
    shutdown_grace: float = Field(
        defaults.SHUTDOWN_GRACE,
        ge=0,
        description="Seconds running attempts get to finish on SIGTERM",
    )
    retention: float = Field(
        defaults.RETENTION, gt=0, description="Seconds a record is kept after its last change"
    )
    clear_grace: float = Field(
        defaults.CLEAR_GRACE,
        ge=0,
        description="Seconds a cleared key's tombstone is kept (Clear without force)",
    )
    lease_margin: float = Field(
        defaults.LEASE_MARGIN, gt=0, description="Seconds a lease outlives its channel's timeout"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines for a terminal (text) or a log pipeline (json)"
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto",
        description="uvloop (faster), asyncio (the standard one), or auto: uvloop if installed",
    )
    metrics_listen: str | None = Field(
        None, description="Serve Prometheus metrics on host:port at /metrics (off by default)"
    )
    trace_sample_ratio: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Share of new traces sampled (a caller's sampled trace is always continued); "
        "spans are exported by the standard OTEL_* variables (OTLP), none by default",
    )
    tls_cert_file: Path | None = Field(None, description="Serve TLS on the TCP address: cert")
    tls_key_file: Path | None = Field(None, description="Serve TLS on the TCP address: key")
    tls_client_ca_file: Path | None = Field(
        None, description="Require client certificates signed by this CA (mutual TLS)"
    )
    auth_token_file: Path | None = Field(
        None,
        description="Require 'authorization: Bearer <token>' with the token in this file "
        "(health stays open for probes)",
    )
    max_message_bytes: int = Field(
        4 * 1024 * 1024, gt=0, le=64 * 1024 * 1024, description="Largest gRPC message accepted"
    )
    max_concurrent_rpcs: int | None = Field(
        1024,
        gt=0,
        description="Authenticated DeliveryService calls served at once; more get "
        "RESOURCE_EXHAUSTED (health is never counted)",
    )
    max_health_watchers: int = Field(
        64, gt=0, description="Health Watch streams open at once; more get RESOURCE_EXHAUSTED"
    )
    stalled_call_timeout: float = Field(
        300.0,
        gt=0,
        description="Seconds after which a connection is closed and its calls still running "
        "(e.g. one that never sent its request) are dropped; clients reconnect",
    )

    store_check_interval: float = Field(
        2.0, gt=0, description="Seconds between store health checks (health NOT_SERVING when down)"
    )

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        # Every form is parsed here, up front: a bad URL is a settings error (exit 2) naming
        # --store, never a traceback when the store opens. The message holds no password.
        try:
            parse_store_url(value)
        except StoreUrlError as error:
            raise ValueError(f"--store (SENDONCE_STORE): {error}") from None
        return value

    @property
    def store_is_remote(self) -> bool:
        """A shared store (Redis) may be down for a while; a local one must open at start."""
        return parse_store_url(self.store).remote


class RetryConfig(BaseModel):
    """A retry policy in a receivers file; unset fields fall back to the defaults."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int | None = Field(None, ge=MIN_ATTEMPTS, le=MAX_ATTEMPTS)
    initial_backoff: float | None = Field(None, ge=0, description="seconds")
    multiplier: float | None = Field(None, ge=1)
    max_backoff: float | None = Field(None, ge=0, description="seconds")
    jitter: float | None = Field(None, ge=0, le=1)

    def applied_to(self, base: RetryPolicy) -> RetryPolicy:
        return base.merged(**self.model_dump())


class BreakerConfig(BaseModel):
    """The receiver's circuit breaker."""

    model_config = ConfigDict(extra="forbid")

    failures: int = Field(
        5, ge=0, le=1000, description="Consecutive retryable failures that open it; 0: off"
    )
    open_seconds: float = Field(60.0, gt=0, description="How long it stays open before a probe")

    def settings(self) -> BreakerSettings:
        return BreakerSettings(failures=self.failures, open_for=self.open_seconds)


class ReceiverConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    type: str
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not CHANNEL_PATTERN.match(value):
            raise ValueError(
                "use 1-63 lowercase letters, digits and '-', starting and ending with a "
                "letter or digit"
            )
        return value


class ReceiversFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Defaults for every receiver of the file, overridden by each receiver's own `retry`.
    retry: RetryConfig = RetryConfig()
    # Secrets replaced in every notification before any channel sees it.
    redaction: RedactionConfig = RedactionConfig()
    receivers: list[ReceiverConfig] = Field(min_length=1)

    @field_validator("receivers")
    @classmethod
    def _unique_names(cls, receivers: list[ReceiverConfig]) -> list[ReceiverConfig]:
        names = [receiver.name for receiver in receivers]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"receiver names must be unique, repeated: {', '.join(duplicates)}")
        return receivers

    def policy_for(self, receiver: ReceiverConfig) -> RetryPolicy:
        try:
            return receiver.retry.applied_to(self.retry.applied_to(RetryPolicy()))
        except PolicyError as error:
            raise ConfigError(f"receiver {receiver.name!r}: retry.{error}") from None


DEFAULT_RECEIVERS = ReceiversFile(receivers=[ReceiverConfig(name="console", type="console")])


def load_receivers(path: Path | None) -> ReceiversFile:
    """Read and validate a receivers file; None gives the embedded default (console)."""
    if path is None:
        return DEFAULT_RECEIVERS
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read receivers file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"receivers file {path} is not valid TOML: {error}") from None
    try:
        return ReceiversFile.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"receivers file {path}:\n{describe(error)}") from None


def describe(error: ValidationError) -> str:
    """One line per problem, naming the field; the offending values are left out (secrets)."""
    lines = []
    for problem in error.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        lines.append(f"  {where}: {problem['msg']}")
    return "\n".join(lines)


TRACES_OFF = "not exported (set OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER)"


def tracing_configured() -> bool:
    """Whether the OTEL_* variables ask for spans to be exported."""
    chosen = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if chosen:
        return chosen != "none"
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
