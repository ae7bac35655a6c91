"""The store URLs the sidecar understands, in one place (no store library is imported here)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

SQLITE_PREFIX = "sqlite://"
# A Redis Cluster: redis+cluster://host:port (any node; the others are discovered).
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
# Sentinel: redis+sentinel://[:password@]host:port[,host:port...]/service-name[/db]
SENTINEL_SCHEME = "redis+sentinel://"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", *CLUSTER_SCHEMES, SENTINEL_SCHEME)


def display_url(url: str) -> str:
    """The store URL fit for logs and errors: a password in it is replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))
