"""The configuration's shape: the frozen ``Config`` and its parts (``StaticMap``, ``MuleSpec``), and
``ConfigError``.

What the rest of ssebridge is written against. Pure data: no parsing here (``settings``, ``builder``
and the two syntaxes do that), so this module imports only the defaults and the types of its fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ssebridge.address import DEFAULT_SERVER, RedisServer
from ssebridge.config import defaults
from ssebridge.routing.rules import Rule

__all__ = ["Config", "ConfigError", "MuleSpec", "StaticMap"]


class ConfigError(Exception):
    """A configuration problem: ``str()`` is one line, ``file:line: problem``."""

    def __init__(self, file: str, line: int | None, problem: str) -> None:
        # One line whatever the cause: a multi-line message would break "exit with one clear line".
        problem = " ".join(problem.split())
        self.file = file
        self.line = line
        self.problem = problem
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class StaticMap:
    """``static-map = /prefix=path``: serve a file, or a directory tree, under a URL prefix."""

    prefix: str
    path: Path


@dataclass(frozen=True)
class MuleSpec:
    """A publisher process run beside the service, supervised and restarted with backoff."""

    argv: tuple[str, ...]
    cwd: Path | None = None


@dataclass(frozen=True)
class Config:
    """Everything the service needs, validated.

    A scalar field's meaning, keys and check are in ``ssebridge.config.settings.SETTINGS`` (the docs'
    key table is rendered from there); its default is in ``ssebridge.config.defaults``.
    """

    source: str = "<built-in>"
    listen: tuple[str, ...] = (defaults.LISTEN,)
    redis: RedisServer = DEFAULT_SERVER
    rules: tuple[Rule, ...] = ()
    static_maps: tuple[StaticMap, ...] = ()
    mules: tuple[MuleSpec, ...] = ()
    offload_threads: int = defaults.OFFLOAD_THREADS
    heartbeat: float = defaults.HEARTBEAT
    max_streams: int = defaults.MAX_STREAMS
    client_buffer: int = defaults.CLIENT_BUFFER
    max_message_size: int = defaults.MAX_MESSAGE_SIZE
    confirm_timeout: float = defaults.CONFIRM_TIMEOUT
    header_timeout: float = defaults.HEADER_TIMEOUT
    shutdown_window: float = defaults.SHUTDOWN_WINDOW
    #: Seconds the upstream app's running requests get to finish on shutdown.
    drain_timeout: float = defaults.DRAIN_TIMEOUT
    retry_ms: int = defaults.RETRY_MS
    #: "auto" in a file is resolved to the number of cores at load time.
    workers: int = defaults.WORKERS
    #: Twisted endpoint of a separate listener for /metrics, /livez and /readyz; "" for none.
    metrics_listen: str = ""
    #: Path of the metrics on the main listener (e.g. "/metrics"); "" for none.
    metrics_path: str = ""
    idle_timeout: float = defaults.IDLE_TIMEOUT
    max_body: int = defaults.MAX_BODY
    #: A request body may pause this long (seconds), and past that must average body_min_rate
    #: bytes a second; 0 turns both off (ssebridge.http.site.BodyClock).
    body_timeout: float = defaults.BODY_TIMEOUT
    body_min_rate: float = defaults.BODY_MIN_RATE
    #: Most open connections that are not streams; 0 derives it from the open-files limit.
    max_connections: int = defaults.MAX_CONNECTIONS
    #: The upstream app, at most one of: a WSGI file (its ``application``), a WSGI ``module:callable``,
    #: or the base URL of an HTTP app.
    wsgi_file: Path | None = None
    wsgi_module: str = ""
    proxy: str = ""
    #: ``collect-header`` and ``pull-header``: (response header, variable) pairs, in order.
    collect_headers: tuple[tuple[str, str], ...] = ()
    pull_headers: tuple[tuple[str, str], ...] = ()
    threads: int = defaults.THREADS
    upstream_timeout: float = defaults.UPSTREAM_TIMEOUT
    forwarded: bool = defaults.FORWARDED
    #: One log line per request (``ssebridge.http.access``); a stream's is its close line.
    access_log: bool = defaults.ACCESS_LOG
    #: Unknown keys are errors rather than warnings.
    strict: bool = defaults.STRICT
    offload_header: str = defaults.OFFLOAD_HEADER
    #: Most channels plus patterns one stream may hold; a request asking for more gets 400.
    max_channels: int = defaults.MAX_CHANNELS
    #: Non-fatal notes found while loading (unknown keys, accepted-but-unused keys).
    warnings: tuple[str, ...] = field(default=())
