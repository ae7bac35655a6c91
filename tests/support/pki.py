"""Throwaway PKI for TLS tests, made with the openssl command: a server CA with a certificate
for 127.0.0.1 and localhost, and a client CA with a client certificate (mutual TLS)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
[client]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
"""
_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class Pki:
    """PEM files: a server CA and the server's certificate; a client CA and a client's."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path

    def client_credentials(self, *, with_cert: bool = False) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.client_key.read_bytes() if with_cert else None,
            certificate_chain=self.client_cert.read_bytes() if with_cert else None,
        )


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _make_ca(directory: Path, name: str, config: Path) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", "-config", config, "-extensions", "ca", *_EC_KEY, "-days", "1",
             "-subj", f"/CN={name}", "-keyout", key, "-out", cert)  # fmt: skip
    return cert, key


def _make_leaf(
    directory: Path, name: str, config: Path, ca: tuple[Path, Path], serial: int
) -> tuple[Path, Path]:
    cert, key, request = (directory / f"{name}{suffix}" for suffix in (".pem", ".key", ".csr"))
    _openssl("req", "-new", "-config", config, *_EC_KEY, "-subj", f"/CN={name}",
             "-keyout", key, "-out", request)  # fmt: skip
    _openssl("x509", "-req", "-in", request, "-CA", ca[0], "-CAkey", ca[1],
             "-set_serial", str(serial), "-days", "1", "-extfile", config, "-extensions", name,
             "-out", cert)  # fmt: skip
    return cert, key


def make_pki(directory: Path) -> Pki:
    """A server CA and a client CA, each with one leaf certificate, written in `directory`."""
    config = directory / "openssl.cnf"
    config.write_text(_OPENSSL_CONFIG)
    server_ca = _make_ca(directory, "server-ca", config)
    client_ca = _make_ca(directory, "client-ca", config)
    server = _make_leaf(directory, "server", config, server_ca, 1)
    client = _make_leaf(directory, "client", config, client_ca, 2)
    return Pki(server_ca[0], *server, client_ca[0], *client)
