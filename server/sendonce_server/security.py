"""Transport security and bearer-token authentication for the sidecar's gRPC server."""

from __future__ import annotations

import hmac
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeAlias

import grpc

from .api import refusals
from .config import ConfigError, ServerSettings

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
# Probes must work without the token (kubelet's gRPC probe sends no metadata).
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def read_secret(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes().strip()
    except OSError as error:
        raise ConfigError(f"cannot read the {what} file {path}: {error.strerror}") from None
    if not data:
        raise ConfigError(f"the {what} file {path} is empty")
    return data


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS for the TCP address when a certificate is configured; mutual with a client CA."""
    cert, key, client_ca = (
        settings.tls_cert_file,
        settings.tls_key_file,
        settings.tls_client_ca_file,
    )
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file")
        return None
    if cert is None or key is None:
        raise ConfigError("TLS needs both --tls-cert-file and --tls-key-file")
    credentials = grpc.ssl_server_credentials(
        [(read_secret(key, "TLS key"), read_secret(cert, "TLS certificate"))],
        root_certificates=read_secret(client_ca, "client CA") if client_ca else None,
        require_client_auth=client_ca is not None,
    )
    _check_pem(cert, key, client_ca)
    return credentials


def _check_pem(cert: Path, key: Path, client_ca: Path | None) -> None:
    """gRPC reports unusable PEM only as a port it cannot listen on: say what is wrong instead."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError:
        raise ConfigError(
            f"--tls-cert-file {cert} and --tls-key-file {key} are not a PEM certificate "
            "and its unencrypted private key"
        ) from None
    if client_ca is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=client_ca)
        except ssl.SSLError:
            raise ConfigError(
                f"--tls-client-ca-file {client_ca} holds no PEM certificate"
            ) from None


def _no_password() -> bytes:
    return b""  # an encrypted key fails instead of prompting on a terminal


async def _unauthenticated(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await refusals.abort(context, refusals.UNAUTHENTICATED)


# A streaming-request handler runs as soon as the headers arrive, without reading the request:
# a peer without the token is answered at once and cannot hold a call open by never sending
# its message (a unary handler would wait for the message first).
_REJECT = grpc.stream_unary_rpc_method_handler(_unauthenticated)


class TokenAuth(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # not generic at run time
    """Admits calls carrying the configured bearer token, compared in constant time."""

    def __init__(self, token: bytes) -> None:
        self._expected = b"Bearer " + token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        if details.method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        given = b""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                break
        if hmac.compare_digest(given, self._expected):
            return await continuation(details)
        return _REJECT
