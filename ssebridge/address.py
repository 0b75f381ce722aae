"""Where a Redis server is: the one address form the config, the routing rules and the transport share.

``parse_server`` accepts what the seed plugin accepts (``host:port``, a unix socket path) and URLs
(``redis://[user:password@]host[:port][/db]``, ``rediss://`` for TLS, ``unix:///path?db=N``), and the
two forms that name a deployment rather than a server: a Sentinel-managed master
(``sentinel://[user:password@]host1:26379,host2:26379/MASTER_NAME[?db=N]``) and a Redis Cluster
(``cluster://[user:password@]host1:7000,host2:7001``, any node as a seed).
Parsing is strict: an address that does not parse is refused with a short reason rather than guessed
at, because a mistyped address would otherwise surface much later as an unexplained connection error.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_SENTINEL_PORT",
    "DEFAULT_SERVER",
    "RedisServer",
    "parse_server",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6379

# Host names as DNS allows them (plus IPv4 literals); anything else is a typo, not a host.
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?\.?")
Kind = Literal["tcp", "unix", "tls", "sentinel", "cluster"]
_SCHEMES: dict[str, Kind] = {
    "redis": "tcp",
    "rediss": "tls",
    "unix": "unix",
    "sentinel": "sentinel",
    "cluster": "cluster",
}
_QUERY_KEYS = frozenset(["db", "password", "username"])
# The sentinels' own credentials, when they differ from the master's (Sentinel's ``requirepass``).
_SENTINEL_KEYS = frozenset(["sentinel_username", "sentinel_password"])
#: The port of a Sentinel when its address gives none.
DEFAULT_SENTINEL_PORT = 26379
# Master names as Sentinel's configuration takes them: one token, no spaces.
_MASTER_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


@dataclass(frozen=True)
class RedisServer:
    """A Redis server address with its credentials; hashable, so it can key one connection.

    ``kind`` is ``"tcp"`` or ``"tls"`` (``host``/``port`` set) or ``"unix"`` (``path`` set), or names a
    deployment: ``"sentinel"`` (``nodes`` are the sentinels, ``master`` the master's name; ``host`` and
    ``port`` the first sentinel) or ``"cluster"`` (``nodes`` are seed nodes; ``host``/``port`` the first).
    ``username``/``password``/``db`` are the data nodes'; ``sentinel_username``/``sentinel_password`` the
    sentinels' own, when they have any. Passwords are left out of ``repr()`` so that logging the object
    cannot leak them.
    """

    kind: Kind = "tcp"
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    path: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int | None = None
    nodes: tuple[tuple[str, int], ...] = ()
    master: str = ""
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def is_deployment(self) -> bool:
        """Whether this names a Sentinel-managed master or a cluster rather than one server."""
        return self.kind in ("sentinel", "cluster")

    def at(self, host: str, port: int) -> RedisServer:
        """One data node of this deployment (or server): same credentials and database, plain TCP."""
        return RedisServer("tcp", host, port, "", self.username, self.password, self.db)

    def describe(self) -> str:
        """A log-safe name for this server (never the password).

        The simplest form that ``parse_server`` reads back to the same server, bar the password.
        """
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        if self.is_deployment:
            hosts = ",".join(_host_port(host, port) for host, port in self.nodes)
            options = [f"db={self.db}"] if self.db is not None else []
            if self.sentinel_username:
                options.append(f"sentinel_username={quote(self.sentinel_username, safe='')}")
            tail = f"/{self.master}" if self.kind == "sentinel" else ""
            return f"{self.kind}://{user}{hosts}{tail}" + (f"?{'&'.join(options)}" if options else "")
        if self.kind == "unix":
            if not user and self.db is None:
                return f"unix:{self.path}"
            query = f"?db={self.db}" if self.db is not None else ""
            return f"unix://{user}{quote(self.path)}{query}"
        if self.kind == "tcp" and not user and self.db is None:
            return _host_port(self.host, self.port)
        scheme = "rediss" if self.kind == "tls" else "redis"
        db = f"/{self.db}" if self.db is not None else ""
        return f"{scheme}://{user}{_host_port(self.host, self.port)}{db}"

    def __str__(self) -> str:
        return self.describe()


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


DEFAULT_SERVER = RedisServer()


def parse_server(text: str) -> RedisServer:
    """Parse a server address; raise ``ValueError`` with a short reason when it does not parse.

    Accepted forms: ``host``, ``host:port``, ``[v6addr]``, ``[v6addr]:port``, a unix socket path (it
    starts with ``/``, ``./`` or ``../``, or ends in ``.sock``; ``unix:/path`` too), and the URLs
    ``redis://[user:password@]host[:port][/db]``, ``rediss://...`` (TLS) and
    ``unix://[user:password@]/path[?db=N&password=P]``. Credentials in URLs are percent-decoded.

    Deployments: ``sentinel://[user:password@]host1[:26379],host2[:26379]/MASTER_NAME[?db=N]`` (the
    credentials and database are the master's; ``sentinel_username``/``sentinel_password`` parameters give
    the sentinels' own) and ``cluster://[user:password@]host1[:6379],host2[:6379]`` (seed nodes; a
    cluster has database 0 only).
    """
    if not isinstance(text, str):
        raise ValueError("address must be a string")
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError(f"address {text!r} contains whitespace or control characters")
    if "://" in text:
        return _parse_url(text)
    if text.startswith("unix:"):
        return _unix(text[len("unix:") :])
    if text.startswith(("/", "./", "../")) or text.endswith(".sock"):
        return _unix(text)
    host, port = _split_host_port(text)
    return RedisServer("tcp", host, port)


def _unix(
    path: str, username: str | None = None, password: str | None = None, db: int | None = None
) -> RedisServer:
    if not path:
        raise ValueError("empty unix socket path")
    return RedisServer("unix", path=path, username=username, password=password, db=db)


def _split_host_port(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host[:port]`` or ``[v6][:port]`` into a validated host and port."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        _check_ipv6(host)
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']'")
        return host, _port(rest[1:])
    if text.count(":") > 1:
        # ::1:6379 could be a host and a port or just a host: uWSGI and URLs both demand brackets.
        raise ValueError(f"IPv6 address {text!r} needs brackets: [addr]:port")
    host, sep, port_text = text.partition(":")
    _check_host(host)
    return host, (_port(port_text) if sep else default_port)


def _check_host(host: str) -> None:
    if not host:
        raise ValueError("empty host")
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"bad host {host!r}")


def _check_ipv6(host: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"bad IPv6 address {host!r}") from None


def _port(text: str) -> int:
    if not text:
        raise ValueError("empty port")
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not in 1-65535")
    return port


def _db(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"database {text!r} is not a number")
    return int(text)


def _parse_url(text: str) -> RedisServer:
    scheme = text.split("://", 1)[0].lower()
    kind = _SCHEMES.get(scheme)
    if kind is None:
        raise ValueError(f"unknown scheme {scheme!r} (use redis://, rediss:// or unix://)")
    parts = urlsplit(text)
    if parts.fragment:
        raise ValueError("unexpected '#' fragment in address")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if colon else None
    options: dict[str, str] = {}
    allowed = _QUERY_KEYS | _SENTINEL_KEYS if kind == "sentinel" else _QUERY_KEYS
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)):
        if key not in allowed:
            raise ValueError(f"unknown parameter {key!r} in address")
        options[key] = value
    username = options.get("username", username) or None
    password = options.get("password", password)
    db = _db(options["db"]) if "db" in options else None

    if kind == "unix":
        if hostport:
            raise ValueError("unix:// takes a path, not a host: unix:///path/to/redis.sock")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError("unix:// needs an absolute path: unix:///path/to/redis.sock")
        return _unix(path, username=username, password=password, db=db)

    if kind in ("sentinel", "cluster"):
        return _deployment(kind, hostport, unquote(parts.path), username, password, db, options)

    path = parts.path
    if path not in ("", "/"):
        if db is not None:
            raise ValueError("database given twice (path and ?db=)")
        db = _db(path[1:])
    if not hostport:
        host, port = DEFAULT_HOST, DEFAULT_PORT
    else:
        host, port = _split_host_port(hostport)
    return RedisServer(kind, host, port, "", username, password, db)


def _deployment(
    kind: Kind,
    hostport: str,
    path: str,
    username: str | None,
    password: str | None,
    db: int | None,
    options: dict[str, str],
) -> RedisServer:
    """A ``sentinel://`` or ``cluster://`` address: a list of nodes, and a master name for Sentinel."""
    default_port = DEFAULT_SENTINEL_PORT if kind == "sentinel" else DEFAULT_PORT
    if not hostport:
        raise ValueError(f"{kind}:// needs at least one host: {kind}://host1:port,host2:port")
    nodes: list[tuple[str, int]] = []
    for item in hostport.split(","):
        if not item:
            raise ValueError(f"empty host in {kind}:// address")
        node = _split_host_port(item, default_port)
        if node not in nodes:
            nodes.append(node)
    master = ""
    if kind == "sentinel":
        master = path.strip("/")
        if not master:
            raise ValueError("sentinel:// needs the master's name: sentinel://host:26379/MASTER_NAME")
        if not _MASTER_NAME.fullmatch(master):
            raise ValueError(f"bad master name {master!r} (letters, digits, '_', '.', ':', '-')")
    elif path not in ("", "/"):
        raise ValueError("cluster:// takes no path: a cluster has database 0 only")
    if kind == "cluster" and db not in (None, 0):
        raise ValueError("a Redis Cluster has database 0 only")
    host, port = nodes[0]
    return RedisServer(
        kind,
        host,
        port,
        "",
        username,
        password,
        db,
        tuple(nodes),
        master,
        options.get("sentinel_username") or None,
        options.get("sentinel_password"),
    )
