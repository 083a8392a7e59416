"""The Redis engine's URL and the names a cluster uses on its server (pure: no client here).

The URL is redis-py's (`redis://[:password@]host:port/db`, `rediss://` for TLS,
`unix:///path.sock?db=N`). Its password must not reach a command line, which every user of
the host can read: the node's configuration carries the URL without it (`redacted`), and the
whole URL travels by environment (`ENGINE_ENV`), as the cookie does.

Redis pub/sub ignores the database number (a channel is server-wide), so the channel names
carry it: two clusters on one server in different databases do not hear each other.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit, urlunsplit

ENGINE_ENV = "WHOSTHERE_ENGINE_URL"
_SCHEMES = ("redis", "rediss", "unix")
_PREFIX = "whosthere"


def check_engine(url: object) -> str:
    """`url` if it is a Redis URL redis-py connects to; ValueError saying why if not."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"engine must be a redis:// URL, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"engine must be redis://[:password@]host:port/db, rediss://... (TLS) or "
            f"unix:///path.sock, got {redacted(url)!r}"
        )
    if parts.scheme == "unix" and not parts.path:
        raise ValueError(f"engine {redacted(url)!r} names no socket path")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"engine {redacted(url)!r} names no host")
    database(url)  # a database that is not a number is refused now, not at start
    return url


def redacted(url: str) -> str:
    """`url` without its password (what status shows and command lines carry)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}:***@{host}" if user else f":***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def database(url: str) -> int:
    """The database number the URL selects (0 by default), as redis-py reads it."""
    parts = urlsplit(url)
    raw = parse_qs(parts.query).get("db", [""])[0]
    if not raw and parts.scheme != "unix":
        raw = parts.path.lstrip("/")
    try:
        return int(raw or 0)
    except ValueError:
        raise ValueError(f"engine {redacted(url)!r}: database must be a number") from None


def broadcast_channel(db: int) -> str:
    """Where a node publishes what is for every node."""
    return f"{_PREFIX}:{db}:all"


def node_channel(db: int, name: str) -> str:
    """Where a node hears what is for it alone."""
    return f"{_PREFIX}:{db}:node:{name}"


def lease_key(name: str) -> str:
    """The key holding a node name's lease (in the URL's database)."""
    return f"{_PREFIX}:lease:{name}"
