"""The configuration model, and the loader for both of its syntaxes (native TOML, the seed's uWSGI ini).

Both syntaxes parse into one frozen ``Config``. Every error carries its file and line, so the service
can exit with one clear line. Nothing else in ssebridge reads configuration files.

The two parsers (``ssebridge.config.ini``, ``ssebridge.config.toml``) only read their syntax; what a
value means is decided here, once for both: ``SETTINGS`` is the table of scalar keys (adding a key is
one entry there plus a ``Config`` field), and ``listen_endpoint``, ``mule_from_script``,
``mule_from_command`` and ``static_map`` turn the structured values into their model objects. A parser
feeds a ``ConfigBuilder``, which remembers where each value came from for the error messages.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ssebridge.redis.address import DEFAULT_SERVER, RedisServer, parse_server
from ssebridge.routing.rules import Rule, RuleError, RuleKind, parse_rule

__all__ = [
    "DEFAULT_LISTEN",
    "ENDPOINT_TYPES",
    "SETTINGS",
    "Config",
    "ConfigBuilder",
    "ConfigError",
    "MuleSpec",
    "Setting",
    "StaticMap",
    "default_config",
    "listen_endpoint",
    "load_config",
    "mule_from_command",
    "mule_from_script",
    "static_map",
]


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


DEFAULT_LISTEN = "tcp:9090:interface=127.0.0.1"


@dataclass(frozen=True)
class Config:
    """Everything the service needs, validated."""

    source: str = "<built-in>"
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    redis: RedisServer = DEFAULT_SERVER
    rules: tuple[Rule, ...] = ()
    static_maps: tuple[StaticMap, ...] = ()
    mules: tuple[MuleSpec, ...] = ()
    offload_threads: int = 1
    #: Seconds between heartbeat comments on each SSE stream; 0 turns them off.
    heartbeat: float = 15.0
    #: Most streams open at once; 0 derives it from the open-files limit.
    max_streams: int = 0
    #: Bytes queued for one slow client before it is dropped (the same as ``stream.DEFAULT_MAX_BUFFER``).
    client_buffer: int = 1024 * 1024
    #: Largest Redis message delivered, in bytes; 0 means no limit (as ``hub.DEFAULT_MAX_MESSAGE_SIZE``).
    max_message_size: int = 1024 * 1024
    #: Seconds a new stream waits for Redis to confirm its subscription before starting anyway.
    confirm_timeout: float = 3.0
    #: Seconds a client has to send its request headers; 0 turns the deadline off.
    header_timeout: float = 10.0
    #: Seconds over which open streams are closed on shutdown, so clients do not reconnect at once.
    shutdown_window: float = 5.0
    #: The SSE ``retry:`` hint, in milliseconds, sent to streams closed on shutdown.
    retry_ms: int = 3000
    #: Bridge processes sharing the listeners: 1 runs in-process; "auto" in a file means one per core.
    workers: int = 1
    #: Twisted endpoint of a separate listener for /metrics, /livez and /readyz; "" for none.
    metrics_listen: str = ""
    #: Path of the metrics on the main listener (e.g. "/metrics"); "" for none. Health checks follow it
    #: as /livez and /readyz when it is set.
    metrics_path: str = ""
    #: Seconds an idle keep-alive connection is kept (streams are never idle-timed out).
    idle_timeout: float = 75.0
    #: Largest request body accepted (for the upstream app), in bytes; larger ones get 413.
    max_body: int = 10 * 1024 * 1024
    #: The upstream app, at most one of: a WSGI file (its ``application``), a WSGI ``module:callable``,
    #: or the base URL of an HTTP app.
    wsgi_file: Path | None = None
    wsgi_module: str = ""
    proxy: str = ""
    #: ``collect-header`` and ``pull-header``: (response header, variable) pairs, in order.
    collect_headers: tuple[tuple[str, str], ...] = ()
    pull_headers: tuple[tuple[str, str], ...] = ()
    #: Threads running the in-process WSGI app.
    threads: int = 10
    #: Seconds to wait for the upstream's response headers before answering 504.
    upstream_timeout: float = 30.0
    #: Trust (in-process) or send (proxy) the X-Forwarded-For/-Proto/-Host headers.
    forwarded: bool = False
    #: The response header by which an upstream hands a connection over with no rule configured.
    offload_header: str = "X-SSE-Offload"
    #: Non-fatal notes found while loading (unknown keys, accepted-but-unused keys).
    warnings: tuple[str, ...] = field(default=())


# Scalar settings: one table for both syntaxes.

SettingType = Literal["int", "float", "str", "count", "bool"]


@dataclass(frozen=True)
class Setting:
    """One scalar key: its ``Config`` field, its names in each syntax, its type and its check.

    ``check`` receives the value already of ``type`` and returns what ``Config`` stores, raising
    ``ValueError`` with a short problem when the value is out of range.
    """

    field: str
    toml: str
    ini: tuple[str, ...]
    type: SettingType
    check: Callable[[Any], Any]
    doc: str


def _at_least(minimum: float) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value < minimum:
            raise ValueError(f"must be at least {minimum:g}, not {value}")
        return value

    return check


def _positive(value: Any) -> Any:
    if value <= 0:
        raise ValueError(f"must be greater than 0, not {value}")
    return value


def _workers(value: Any) -> int:
    text = str(value).strip()
    if text == "auto":
        return len(os.sched_getaffinity(0))
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"must be a whole number of at least 1 or 'auto', not {text!r}")
    return int(text)


def _endpoint_or_empty(value: Any) -> str:
    return listen_endpoint(value) if str(value).strip() else ""


def _path_or_empty(value: Any) -> str:
    text = str(value).strip()
    if text and (not text.startswith("/") or text == "/" or any(c in text for c in "?#\r\n\x00")):
        raise ValueError(f"must be an absolute path like /metrics, not {text!r}")
    return text.rstrip("/")


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_MODULE = re.compile(r"[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?")


def _header_name(value: Any) -> str:
    text = str(value).strip()
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"{text!r} is not a header name")
    return text


def _wsgi_module(value: Any) -> str:
    text = str(value).strip()
    if not _MODULE.fullmatch(text):
        raise ValueError(f"{text!r} is not pkg.module or pkg.module:callable")
    return text


def _proxy_url(value: Any) -> str:
    text = str(value).strip()
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", text):
        raise ValueError(f"{text!r} is not an http:// or https:// URL")
    return text.rstrip("/")


def header_mapping(text: str) -> tuple[str, str]:
    """``collect-header``/``pull-header`` values: ``Header-Name VARIABLE``."""
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"expected 'Header-Name VARIABLE', got {text!r}")
    return _header_name(parts[0]), parts[1]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _server(value: Any) -> RedisServer:
    return parse_server(value)


def _setting(name: str, type: SettingType, check: Callable[[Any], Any], doc: str, *aliases: str) -> Setting:
    # The TOML key is the field name; the ini key is the same with dashes, as uWSGI options are spelled.
    return Setting(name, name, (name.replace("_", "-"), *aliases), type, check, doc)


SETTINGS: tuple[Setting, ...] = (
    _setting("redis", "str", _server, "the default Redis server", "redis-server"),
    _setting("offload_threads", "int", _at_least(0), "uWSGI's offload threads: accepted, not needed"),
    _setting("heartbeat", "float", _at_least(0), "seconds between heartbeat comments; 0: none"),
    _setting("max_streams", "int", _at_least(0), "most open streams; 0: from the open-files limit"),
    _setting("client_buffer", "int", _positive, "bytes queued for one slow client before it is dropped"),
    _setting("max_message_size", "int", _at_least(0), "largest Redis message delivered; 0: no limit"),
    _setting("confirm_timeout", "float", _positive, "seconds to wait for Redis to confirm a subscription"),
    _setting(
        "header_timeout", "float", _at_least(0), "seconds a client has to send its headers; 0: no limit"
    ),
    _setting("shutdown_window", "float", _at_least(0), "seconds over which streams are closed on shutdown"),
    _setting("retry_ms", "int", _at_least(0), "SSE retry hint (ms) sent to streams closed on shutdown"),
    _setting("workers", "count", _workers, "bridge processes sharing the listeners; auto: one per core"),
    _setting("metrics_listen", "str", _endpoint_or_empty, "separate listener for metrics and health"),
    _setting("metrics_path", "str", _path_or_empty, "path of the metrics on the main listener"),
    _setting("idle_timeout", "float", _positive, "seconds an idle keep-alive connection is kept"),
    _setting("max_body", "int", _positive, "largest request body accepted, in bytes"),
    Setting("wsgi_module", "wsgi", ("module", "wsgi"), "str", _wsgi_module, "the WSGI app: pkg.mod:callable"),
    _setting("proxy", "str", _proxy_url, "base URL of an HTTP upstream app"),
    _setting("threads", "int", _positive, "threads running the in-process WSGI app"),
    _setting("upstream_timeout", "float", _positive, "seconds to wait for the upstream's headers"),
    _setting("forwarded", "bool", lambda v: v, "trust/send X-Forwarded-* headers"),
    _setting("offload_header", "str", _header_name, "response header naming a channel to offload to"),
)
SETTINGS_BY_TOML = {s.toml: s for s in SETTINGS}
SETTINGS_BY_INI = {name: s for s in SETTINGS for name in s.ini}

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def setting_from_text(setting: Setting, text: str) -> Any:
    """An ini value (always text) converted to the setting's type, then checked."""
    text = text.strip()
    value: Any
    if setting.type == "bool":
        lowered = text.lower()
        if lowered not in _TRUE | _FALSE:
            raise ValueError(f"{text!r} is not true or false")
        return setting.check(lowered in _TRUE)
    if setting.type == "int":
        if not _INT.fullmatch(text):
            raise ValueError(f"{text!r} is not an integer")
        value = int(text)
    elif setting.type == "float":
        if not _FLOAT.fullmatch(text):
            raise ValueError(f"{text!r} is not a number")
        value = _finite(float(text))
    else:
        value = text
    return setting.check(value)


def setting_from_value(setting: Setting, value: object) -> Any:
    """A TOML value (already typed) checked against the setting's type, then checked."""
    # bool is an int in Python, but "heartbeat = true" is a mistake, not 1 second.
    if setting.type == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif setting.type == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        expected = "a number"
        if ok:
            value = _finite(float(value))  # type: ignore[arg-type]
    elif setting.type == "bool":
        ok = isinstance(value, bool)
        expected = "true or false"
    elif setting.type == "count":
        ok = (isinstance(value, int) and not isinstance(value, bool)) or value == "auto"
        expected = 'a whole number or "auto"'
    else:
        ok = isinstance(value, str)
        expected = "a string"
    if not ok:
        raise TypeError(f"must be {expected}, not {type_name(value)}")
    return setting.check(value)


def type_name(value: object) -> str:
    """The TOML name of a value's type, for type errors."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


# Structured values, shared by both syntaxes.

#: Twisted endpoint types a ``listen`` string may name.
ENDPOINT_TYPES = ("tcp", "tcp6", "unix", "ssl", "systemd")


def _split_endpoint(text: str) -> list[str]:
    """Split a Twisted endpoint string at its unescaped colons (``\\:`` is a literal colon)."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _escape_endpoint(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _listen_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise ValueError(f"port {text!r} is not a number in 0-65535")
    return int(text)


def _check_endpoint(text: str) -> None:
    kind, *args = _split_endpoint(text)
    positional = [a for a in args if "=" not in a]
    named = dict(a.split("=", 1) for a in args if "=" in a)
    if kind in ("tcp", "tcp6", "ssl"):
        port = named.get("port", positional[0] if positional else None)
        if port is None:
            raise ValueError(f"endpoint {text!r} has no port")
        _listen_port(port)
    elif kind == "unix":
        if not named.get("address", positional[0] if positional else ""):
            raise ValueError(f"endpoint {text!r} has no path")
    elif kind == "systemd":
        # Twisted's systemd endpoint takes the inherited socket's index and address family.
        if not named.get("index", "").isdigit():
            raise ValueError(f"endpoint {text!r} needs index=N")
        if named.get("domain", "INET") not in ("INET", "INET6", "UNIX"):
            raise ValueError(f"endpoint {text!r}: domain must be INET, INET6 or UNIX")


_LISTEN_HOST = re.compile(r"[A-Za-z0-9._-]*")


def listen_endpoint(text: str) -> str:
    """A listen address as a Twisted server endpoint string.

    Takes a Twisted endpoint string (``tcp:9090:interface=127.0.0.1``, ``tcp6:...``, ``unix:/path``,
    ``ssl:...``, ``systemd:domain=INET:index=0``) as it is, after a minimal check, or converts the
    uWSGI ``http-socket`` forms: ``:9090`` (every IPv4 interface), ``HOST:9090``, ``[::1]:9090``, and
    a socket path starting with ``/`` or ``./``.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty listen address")
    kind = text.split(":", 1)[0]
    if kind in ENDPOINT_TYPES and ":" in text:
        _check_endpoint(text)
        return text
    if text.startswith(("/", "./", "../")):
        return "unix:" + _escape_endpoint(text)
    if "://" in text:
        raise ValueError(f"listen address {text!r} is a URL: use HOST:PORT or an endpoint string")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not host:
            raise ValueError(f"listen address {text!r} is not [ADDRESS]:PORT")
        if not re.fullmatch(r"[0-9A-Fa-f:.%a-zA-Z]+", host):
            raise ValueError(f"bad IPv6 address {host!r}")
        return f"tcp6:{_listen_port(port)}:interface={_escape_endpoint(host)}"
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(
            f"listen address {text!r} is neither HOST:PORT, :PORT nor an endpoint "
            f"({', '.join(ENDPOINT_TYPES)})"
        )
    if ":" in host:
        raise ValueError(f"IPv6 listen address {text!r} needs brackets: [ADDRESS]:PORT")
    if not _LISTEN_HOST.fullmatch(host):
        raise ValueError(f"bad listen host {host!r}")
    number = _listen_port(port)
    return f"tcp:{number}:interface={host}" if host else f"tcp:{number}"


#: Interpreters for scripts that have no shebang line, by suffix (the seed's clock.pl has none).
INTERPRETERS: dict[str, tuple[str, ...]] = {
    ".py": (sys.executable,),
    ".pl": ("perl",),
    ".rb": ("ruby",),
    ".sh": ("/bin/sh",),
}


def _resolve(base: Path, path: str) -> Path:
    candidate = Path(os.path.expanduser(path))
    return candidate if candidate.is_absolute() else base / candidate


def mule_from_script(script: str, base: Path) -> MuleSpec:
    """``mule = SCRIPT``: how to run a script, decided from its shebang, else its suffix.

    The script is found relative to the config file's directory and runs there, so a config and its
    scripts can move together. A shebang is honoured by us rather than by ``exec`` so that a script
    without the executable bit still runs, as it did under uWSGI.
    """
    script = script.strip()
    if not script:
        raise ValueError("mule needs a script")
    path = _resolve(base, script)
    if not path.is_file():
        raise ValueError(f"mule script {str(path)!r} not found")
    try:
        with path.open("rb") as f:
            first = f.readline(1024)
    except OSError as e:
        raise ValueError(f"cannot read mule script {str(path)!r}: {e.strerror or e}") from None
    if first.startswith(b"#!"):
        words = first[2:].decode("utf-8", "replace").split()
        if not words:
            raise ValueError(f"mule script {str(path)!r} has an empty shebang line")
        return MuleSpec((*words, str(path)), base)
    interpreter = INTERPRETERS.get(path.suffix)
    if interpreter is not None:
        return MuleSpec((*interpreter, str(path)), base)
    if not os.access(path, os.X_OK):
        raise ValueError(f"mule script {str(path)!r} has no shebang line and is not executable")
    return MuleSpec((str(path),), base)


def mule_from_command(argv: Sequence[str], cwd: str | None, base: Path) -> MuleSpec:
    """A mule given as a command line (TOML ``command = [...]``); it runs in ``cwd`` or the config's dir."""
    if not argv or not argv[0]:
        raise ValueError("mule command is empty")
    if any("\x00" in a for a in argv):
        raise ValueError("NUL in mule command")
    return MuleSpec(tuple(argv), _resolve(base, cwd) if cwd else base)


def static_map(prefix: str, path: str, base: Path) -> StaticMap:
    """A static map; the path is relative to the config file's directory."""
    prefix = prefix.strip()
    path = path.strip()
    if not prefix.startswith("/"):
        raise ValueError(f"static prefix {prefix!r} must start with '/'")
    if not path:
        raise ValueError(f"static map {prefix} has no path")
    if "\x00" in prefix or "\x00" in path:
        raise ValueError("NUL in static map")
    return StaticMap(prefix, _resolve(base, path))


# Building a Config.


class ConfigBuilder:
    """What a parser has read so far, with where each value came from; ``build()`` makes the ``Config``."""

    def __init__(self, file: str, base: Path) -> None:
        self.file = file
        self.base = base
        self.listen: list[str] = []
        self.rules: list[Rule] = []
        self.static_maps: list[StaticMap] = []
        self.mules: list[MuleSpec] = []
        self.values: dict[str, Any] = {}
        self.wsgi_file: Path | None = None
        self.collect_headers: list[tuple[str, str]] = []
        self.pull_headers: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self._set_at: dict[str, int | None] = {}
        #: In checking mode (``check_config``) problems are collected here instead of raised.
        self.collecting = False
        self.problems: list[ConfigError] = []

    def attempt(self, step: Callable[..., None], *args: Any) -> None:
        """Run one independent step of parsing: in checking mode a problem is noted and parsing goes on
        with the next step, so every problem of a file is reported at once."""
        try:
            step(*args)
        except ConfigError as e:
            if not self.collecting:
                raise
            self.problems.append(e)

    def where(self, line: int | None) -> str:
        return f"{self.file}:{line}" if line is not None else self.file

    def error(self, line: int | None, problem: str) -> ConfigError:
        return ConfigError(self.file, line, problem)

    def warn(self, line: int | None, note: str) -> None:
        self.warnings.append(f"{self.where(line)}: {note}")

    def unknown(self, line: int | None, key: str) -> None:
        self.warn(line, f"unknown key {key!r} ignored")

    def set(self, setting: Setting, value: Any, line: int | None, key: str) -> None:
        """Store a checked setting; a repeated one replaces the earlier value (as in uWSGI), noted."""
        if setting.field in self._set_at:
            earlier = self._set_at[setting.field]
            where = f" on line {earlier}" if earlier is not None else ""
            self.warn(line, f"{key!r} set again: replaces the value{where}")
        self._set_at[setting.field] = line
        self.values[setting.field] = value

    def add_rule(self, kind: RuleKind, text: str, line: int | None, allow: str | None = None) -> None:
        try:
            self.rules.append(parse_rule(kind, text, allow=allow))
        except RuleError as e:
            raise self.error(line, f"{kind}: {e}") from None

    def add_wsgi_file(self, path: str, line: int | None, key: str) -> None:
        resolved = _resolve(self.base, path)
        if not resolved.is_file():
            raise self.error(line, f"{key}: {str(resolved)!r} does not exist")
        self.wsgi_file = resolved
        self._set_at.setdefault("wsgi_file", line)

    def add_header_mapping(self, pull: bool, text: str, line: int | None, key: str) -> None:
        try:
            mapping = header_mapping(text)
        except ValueError as e:
            raise self.error(line, f"{key}: {e}") from None
        (self.pull_headers if pull else self.collect_headers).append(mapping)

    def build(self, source: str) -> Config:
        listen = tuple(self.listen) if self.listen else (DEFAULT_LISTEN,)
        upstreams = [
            name
            for name, present in (
                ("wsgi-file", self.wsgi_file is not None),
                ("module", bool(self.values.get("wsgi_module"))),
                ("proxy", bool(self.values.get("proxy"))),
            )
            if present
        ]
        if len(upstreams) > 1:
            line = self._set_at.get("proxy", self._set_at.get("wsgi_module"))
            raise self.error(line, f"choose one upstream app, not {' and '.join(upstreams)}")
        return Config(
            wsgi_file=self.wsgi_file,
            collect_headers=tuple(self.collect_headers),
            pull_headers=tuple(self.pull_headers),
            source=source,
            listen=listen,
            rules=tuple(self.rules),
            static_maps=tuple(self.static_maps),
            mules=tuple(self.mules),
            warnings=tuple(self.warnings),
            **self.values,
        )


def _decode(data: bytes, file: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(file, line, "not valid UTF-8") from None


_SECTION = re.compile(r"\s*\[([^\[\]]*)\]\s*$")


def first_section(text: str) -> str | None:
    """The name of the first ``[section]`` line, skipping blank and comment lines; ``None`` if the
    first meaningful line is not a section header."""
    for raw in text.split("\n"):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        m = _SECTION.match(line)
        return m.group(1).strip() if m else None
    return None


def check_config(path: str | Path) -> tuple[Config | None, list[ConfigError]]:
    """Load a config the way ``load_config`` does, but collect every problem instead of stopping at
    the first: ``(config, [])`` when it is sound, ``(None, problems)`` otherwise."""
    try:
        builder = _parse(path, collecting=True)
    except ConfigError as e:
        return None, [e]
    if builder.problems:
        return None, builder.problems
    try:
        return builder.build(str(path)), []
    except ConfigError as e:
        return None, [e]


def load_config(path: str | Path) -> Config:
    """Load a ``.toml`` or uWSGI ``.ini`` file; raise ``ConfigError``.

    The syntax is chosen by the suffix; any other name is sniffed: a file whose first section is
    ``[uwsgi]`` is ini, anything else TOML.
    """
    return _parse(path).build(str(path))


def _parse(path: str | Path, collecting: bool = False) -> ConfigBuilder:
    # The parsers import this module for the model and the shared helpers, so they are imported here.
    from ssebridge.config.ini import parse as parse_ini
    from ssebridge.config.toml import parse as parse_toml

    file = str(path)
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(file, None, f"cannot read: {e.strerror or e}") from None
    text = _decode(data, file)
    base = p.absolute().parent
    suffix = p.suffix.lower()
    builder = ConfigBuilder(file, base)
    builder.collecting = collecting
    if suffix == ".ini" or (suffix != ".toml" and first_section(text) == "uwsgi"):
        parse_ini(text, builder, p.absolute())
    else:
        parse_toml(text, builder)
    return builder


def default_config() -> Config:
    """The built-in config: 127.0.0.1:9090, Redis 127.0.0.1:6379, ``/events/<channel>``, the clock demo."""
    return Config(
        source="<built-in>",
        listen=(DEFAULT_LISTEN,),
        redis=DEFAULT_SERVER,
        rules=(
            parse_rule("route", r"^/events/(?P<channel>[A-Za-z0-9._:-]+)$ sse:${channel}"),
            parse_rule("route", "^/whattimeisit$ sse:clock"),
        ),
        static_maps=(StaticMap("/clock", Path(__file__).parent.parent / "assets" / "clock.html"),),
        mules=(MuleSpec((sys.executable, "-m", "ssebridge.clock", "--channel", "clock")),),
    )
