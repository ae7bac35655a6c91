"""The store URLs the sidecar understands: one table of schemes, each form parsed up front.

`parse_store_url` checks a `--store` value completely before anything opens it, so a mistake is
a configuration error naming the setting, never a traceback at start. Its messages and the
`display` form never hold a password: not from the userinfo (`redis://:pw@host`), not from the
query (`?password=pw`), encoded or not. No store library is imported here (start-up time).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

MASK = "***"
SENTINEL_PORT = 26379
# The query parameters of a Redis URL that are passed on; redis-py hands an unknown one to the
# connection as a keyword, which fails at the first command (a misspelt PASSWORD among them).
# They are settings, shown as given in logs, except the password.
_SHOWN_QUERY = frozenset(
    {"db", "username", "client_name", "protocol", "ssl_cert_reqs", "ssl_check_hostname"}
    | {"socket_timeout", "socket_connect_timeout", "health_check_interval"}
)
_REDIS_QUERY = _SHOWN_QUERY | {"password"}


class StoreUrlError(ValueError):
    """A --store value that cannot be used; the message never quotes the URL past its scheme."""


@dataclass(frozen=True)
class Scheme:
    """One form of --store: how it starts, which store opens it, whether it is shared."""

    prefix: str  # "memory" is the one form that is a whole word, not a URL prefix
    store: str  # memory, sqlite, redis, cluster or sentinel
    remote: bool  # a shared store may be down for a while; a local one must open at start


SCHEMES = (
    Scheme("memory", "memory", remote=False),
    Scheme("sqlite://", "sqlite", remote=False),
    Scheme("redis://", "redis", remote=True),
    Scheme("rediss://", "redis", remote=True),
    Scheme("unix://", "redis", remote=True),
    # A Redis Cluster: redis+cluster://host:port (any node; the others are discovered).
    Scheme("redis+cluster://", "cluster", remote=True),
    Scheme("rediss+cluster://", "cluster", remote=True),
    # Sentinel: redis+sentinel://[:password@]host:port[,host:port...]/service-name[/db]
    Scheme("redis+sentinel://", "sentinel", remote=True),
)
USAGE = (
    "use memory, sqlite:///path/to/state.db, redis://[:password@]host:port/db, rediss://..., "
    "unix:///path/to/redis.sock, redis+cluster://host:port or "
    "redis+sentinel://host:port[,host:port]/service[/db]"
)


@dataclass(frozen=True)
class SentinelTarget:
    """What a redis+sentinel:// URL names: the sentinels, the service, its db and password."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    password: str | None


@dataclass(frozen=True)
class StoreUrl:
    scheme: Scheme
    url: str
    display: str  # fit for logs and errors: every password replaced by ***

    @property
    def remote(self) -> bool:
        return self.scheme.remote


def scheme_of(url: str) -> Scheme | None:
    for scheme in SCHEMES:
        if url == scheme.prefix if scheme.store == "memory" else url.startswith(scheme.prefix):
            return scheme
    return None


def parse_store_url(url: str) -> StoreUrl:
    """The checked form of a --store value, or StoreUrlError saying what is wrong."""
    scheme = scheme_of(url)
    if scheme is None:
        # Only the scheme is echoed: the rest of a store URL may hold a password.
        shown = url.partition("://")[0] if "://" in url else url[:20]
        raise StoreUrlError(f"unsupported store {shown!r}: {USAGE}")
    if scheme.store == "memory":
        return StoreUrl(scheme, url, url)
    if scheme.store == "sqlite":
        if not url.removeprefix(scheme.prefix):
            raise StoreUrlError("sqlite:// needs a file: sqlite:///absolute/path.db")
        return StoreUrl(scheme, url, url)
    if "#" in url:
        raise _error(scheme, "has a #fragment; percent-encode a # in a password as %23")
    if scheme.store == "sentinel":
        sentinel_target(url)
        return StoreUrl(scheme, url, _display_sentinel(url))
    _check_redis(scheme, url)
    return StoreUrl(scheme, url, _display(url))


def display_url(url: str) -> str:
    """The store URL fit for logs and errors; a value that does not parse is shown by scheme."""
    try:
        return parse_store_url(url).display
    except StoreUrlError:
        scheme = scheme_of(url)
        return f"{scheme.prefix}{MASK}" if scheme else MASK


def sentinel_target(url: str) -> SentinelTarget:
    """The parts of redis+sentinel://[:password@]host:port[,host:port...]/service[/db]."""
    scheme = scheme_of(url)
    if scheme is None or scheme.store != "sentinel":
        raise StoreUrlError("not a redis+sentinel:// URL")
    rest = url.removeprefix(scheme.prefix)
    netloc, _, path_and_query = rest.partition("/")
    path, _, query = path_and_query.partition("?")
    userinfo, at, hosts = netloc.rpartition("@")
    if not hosts:
        raise _error(scheme, "names no sentinel host: redis+sentinel://host:port/service")
    sentinels = []
    for host in hosts.split(","):
        name, colon, port = host.rpartition(":")
        if not colon:
            name, port = host, str(SENTINEL_PORT)
        if not name:
            raise _error(scheme, "has an empty sentinel host (host:port, comma-separated)")
        sentinels.append((name, _port(scheme, port)))
    segments = [part for part in path.split("/") if part]
    if not segments or len(segments) > 2:
        raise _error(scheme, "names the service after the hosts: /service-name[/db]")
    password = None
    if at:
        password = unquote(userinfo.partition(":")[2]) or None
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name != "password":
            raise _error(scheme, "takes one query parameter, password")
        password = value or password
    db = _db(scheme, segments[1]) if len(segments) == 2 else 0
    return SentinelTarget(tuple(sentinels), unquote(segments[0]), db, password)


def _check_redis(scheme: Scheme, url: str) -> None:
    parts = urlsplit(url)
    if scheme.prefix == "unix://":
        if not parts.path:
            raise _error(scheme, "needs the socket's path: unix:///path/to/redis.sock")
    else:
        if not parts.hostname:
            raise _error(scheme, "names no host: host:port")
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            raise _error(scheme, "has a port that is not a number from 1 to 65535")
        db = parts.path.strip("/")
        if db:
            if scheme.store == "cluster":
                raise _error(scheme, "takes no /db: a Redis Cluster has database 0 only")
            _db(scheme, db)
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _REDIS_QUERY:
            raise _error(scheme, f"has a query parameter outside {', '.join(sorted(_REDIS_QUERY))}")
        if name == "db":
            _db(scheme, value)


def _port(scheme: Scheme, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise _error(scheme, "has a port that is not a number from 1 to 65535")
    return int(text)


def _db(scheme: Scheme, text: str) -> int:
    if not text.isdigit():
        raise _error(scheme, "has a database that is not a number (/0, /1, ...)")
    return int(text)


def _error(scheme: Scheme, why: str) -> StoreUrlError:
    return StoreUrlError(f"{scheme.prefix}... {why}")


def _mask_userinfo(netloc: str) -> str:
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return netloc
    user, colon, password = userinfo.partition(":")
    if not colon or not password:
        return netloc
    return f"{user}:{MASK}@{hosts}"


def _mask_query(query: str) -> str:
    if not query:
        return ""
    pairs = parse_qsl(query, keep_blank_values=True)
    shown = [(name, value if name in _SHOWN_QUERY else MASK) for name, value in pairs]
    return "?" + urlencode(shown, safe="*")


def _display(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{_mask_userinfo(parts.netloc)}{parts.path}{_mask_query(parts.query)}"


def _display_sentinel(url: str) -> str:
    scheme, _, rest = url.partition("://")
    netloc, slash, path_and_query = rest.partition("/")
    path, _, query = path_and_query.partition("?")
    return f"{scheme}://{_mask_userinfo(netloc)}{slash}{path}{_mask_query(query)}"
