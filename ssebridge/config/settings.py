"""The table of scalar settings (``SETTINGS``) and the parsing of their values, for both syntaxes.

Adding a scalar key is one ``Setting`` here plus one ``Config`` field (and its default in
``defaults``): both parsers read the table, and docs/configuration.md's key table is rendered from it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from ssebridge.config.endpoint import listen_endpoint
from ssebridge.redis.address import parse_server

__all__ = [
    "SETTINGS",
    "SETTINGS_BY_INI",
    "SETTINGS_BY_TOML",
    "Setting",
    "header_mapping",
    "setting_from_text",
    "setting_from_value",
    "type_name",
]

# Scalar settings: one table for both syntaxes.

SettingType = Literal["int", "float", "str", "count", "bool"]

#: Upper bounds, so a value that would only fail at run time (a timer Twisted cannot arm, more
#: processes than a machine runs) is a load-time error instead.
MAX_SECONDS = 86400.0
MAX_BYTES = 2**40
MAX_STREAMS = 10_000_000
MAX_WORKERS = 1024
MAX_THREADS = 1024


@dataclass(frozen=True)
class Check:
    """A value's check, and the values it accepts in words (for the docs' key table)."""

    accepts: str
    run: Callable[[Any], Any]

    def __call__(self, value: Any) -> Any:
        return self.run(value)


@dataclass(frozen=True)
class Setting:
    """One scalar key: its ``Config`` field, its names in each syntax, its type, its check and what it
    means (``doc``, the "meaning" column of docs/configuration.md's key table).

    ``check`` receives the value already of ``type`` and returns what ``Config`` stores, raising
    ``ValueError`` with a short problem when the value is out of range.
    """

    field: str
    toml: str
    ini: tuple[str, ...]
    type: SettingType
    check: Callable[[Any], Any]
    doc: str

    @property
    def accepts(self) -> str:
        """The values the key takes, in words."""
        kind = {"int": "integer ", "float": "number "}.get(self.type, "")
        return kind + str(getattr(self.check, "accepts", ""))


def _num(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def _at_least(minimum: float, maximum: float | None = None) -> Check:
    def check(value: Any) -> Any:
        if value < minimum:
            raise ValueError(f"must be at least {minimum:g}, not {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {_num(maximum)}, not {value:g}")
        return value

    return Check(f"{_num(minimum)} to {_num(maximum)}" if maximum is not None else f"≥ {minimum:g}", check)


def _above_zero(maximum: float) -> Check:
    def check(value: Any) -> Any:
        if value <= 0:
            raise ValueError(f"must be greater than 0, not {value}")
        if value > maximum:
            raise ValueError(f"must be at most {_num(maximum)}, not {value:g}")
        return value

    return Check(f"> 0, at most {_num(maximum)}", check)


_positive = Check("> 0", _above_zero(math.inf).run)


def _workers_check(value: Any) -> int:
    text = str(value).strip()
    if text == "auto":
        return len(os.sched_getaffinity(0))
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise ValueError(f"must be a whole number from 1 to {MAX_WORKERS} or 'auto', not {text!r}")
    return int(text)


_workers = Check(f"1 to {_num(MAX_WORKERS)}, or `auto`", _workers_check)


def _endpoint_or_empty_check(value: Any) -> str:
    return listen_endpoint(value) if str(value).strip() else ""


_endpoint_or_empty = Check("endpoint, or empty", _endpoint_or_empty_check)


def _path_or_empty_check(value: Any) -> str:
    text = str(value).strip()
    if text and (not text.startswith("/") or text == "/" or any(c in text for c in "?#\r\n\x00")):
        raise ValueError(f"must be an absolute path like /metrics, not {text!r}")
    return text.rstrip("/")


_path_or_empty = Check("path, or empty", _path_or_empty_check)

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_MODULE = re.compile(r"[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?")


def _header_name_check(value: Any) -> str:
    text = str(value).strip()
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"{text!r} is not a header name")
    return text


_header_name = Check("header name", _header_name_check)


def _wsgi_module_check(value: Any) -> str:
    text = str(value).strip()
    if not _MODULE.fullmatch(text):
        raise ValueError(f"{text!r} is not pkg.module or pkg.module:callable")
    return text


_wsgi_module = Check("`pkg.module:callable`", _wsgi_module_check)


def _proxy_url_check(value: Any) -> str:
    text = str(value).strip()
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", text):
        raise ValueError(f"{text!r} is not an http:// or https:// URL")
    try:
        # urlsplit checks the port only when asked: 99999 would fail on the first request.
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r}: the port is not a number in 1-65535") from None
    if port == 0 or not parts.hostname:
        raise ValueError(f"{text!r} needs a host and a port in 1-65535")
    return text.rstrip("/")


_proxy_url = Check("`http://` or `https://` URL", _proxy_url_check)


def header_mapping(text: str) -> tuple[str, str]:
    """``collect-header``/``pull-header`` values: ``Header-Name VARIABLE``."""
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"expected 'Header-Name VARIABLE', got {text!r}")
    return _header_name(parts[0]), parts[1]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

_server = Check("Redis address", parse_server)
_bool = Check("`true` or `false`", lambda value: value)
_seconds = _at_least(0, MAX_SECONDS)
_seconds_above_zero = _above_zero(MAX_SECONDS)


def _setting(name: str, type: SettingType, check: Callable[[Any], Any], doc: str, *aliases: str) -> Setting:
    # The TOML key is the field name; the ini key is the same with dashes, as uWSGI options are spelled.
    return Setting(name, name, (name.replace("_", "-"), *aliases), type, check, doc)


SETTINGS: tuple[Setting, ...] = (
    _setting(
        "redis",
        "str",
        _server,
        "the default Redis server (a route's `server=` names another): `host:port`, a unix socket "
        "path, or a `redis://`, `rediss://` or `unix://` URL with credentials",
        "redis-server",
    ),
    _setting(
        "offload_threads",
        "int",
        _at_least(0, MAX_THREADS),
        "uWSGI's offload threads: accepted for compatibility; the reactor needs none",
    ),
    _setting(
        "heartbeat",
        "float",
        _seconds,
        "seconds between heartbeat comments (a bare `:` line) on every `sse` stream (`sseraw` streams "
        "carry the app's bytes alone), so proxies keep quiet streams open and dead clients are found; "
        "`0` turns them off",
    ),
    _setting(
        "max_streams",
        "int",
        _at_least(0, MAX_STREAMS),
        "most streams open at once; past it, 503 with `Retry-After`; `0` derives it from the "
        "open-files limit (which the bridge raises to its hard limit)",
    ),
    _setting(
        "client_buffer",
        "int",
        _above_zero(MAX_BYTES),
        "bytes queued for a client that reads too slowly before it is disconnected; a route's "
        "`buffer_size=` can raise it for that route, never lower it",
    ),
    _setting(
        "max_message_size",
        "int",
        _at_least(0, MAX_BYTES),
        "largest Redis message delivered, in bytes; larger ones are dropped and counted; `0`: no limit",
    ),
    _setting(
        "confirm_timeout",
        "float",
        _seconds_above_zero,
        "seconds a new stream waits for Redis to confirm its subscription before starting anyway",
    ),
    _setting(
        "header_timeout",
        "float",
        _seconds,
        "seconds a client has to send its request headers; `0`: no deadline",
    ),
    _setting(
        "shutdown_window",
        "float",
        _seconds,
        "on shutdown, streams are closed spread over this many seconds",
    ),
    _setting(
        "retry_ms",
        "int",
        _at_least(0, MAX_SECONDS * 1000),
        "the SSE `retry:` hint, in milliseconds, sent to `sse` streams closed on shutdown (plus a "
        "random share of the window)",
    ),
    _setting(
        "workers",
        "count",
        _workers,
        "bridge processes sharing the listeners (`SO_REUSEPORT` for TCP); `auto`: one per core. The "
        "parent runs the mules and restarts a worker that dies",
    ),
    _setting(
        "metrics_listen",
        "str",
        _endpoint_or_empty,
        "a separate listener for `/metrics` (Prometheus text), `/livez` and `/readyz`; with `workers`, "
        "worker *i* listens on the port plus *i* (a unix path plus `.i`); empty: none",
    ),
    _setting(
        "metrics_path",
        "str",
        _path_or_empty,
        "serve the metrics on the main listener at this path, with `livez`/`readyz` beside it; prefer "
        "`metrics_listen` on a public port; empty: none",
    ),
    _setting(
        "idle_timeout",
        "float",
        _seconds_above_zero,
        "seconds an idle keep-alive connection (not a stream) is kept",
    ),
    _setting(
        "max_body",
        "int",
        _above_zero(MAX_BYTES),
        "largest request body accepted for the upstream app, in bytes; larger: 413 before the app "
        "sees it",
    ),
    _setting(
        "body_timeout",
        "float",
        _seconds,
        "seconds a request body may pause; past the first `body_timeout` seconds it must also average "
        "`body_min_rate`; too slow: 408 (or the connection cut, once the app has the request); `0`: no "
        "deadline",
    ),
    _setting(
        "body_min_rate",
        "float",
        _at_least(0, MAX_BYTES),
        "bytes a second a request body must average after its first `body_timeout` seconds (time the "
        "bridge holds the client back for a slow app does not count); `0`: no minimum",
    ),
    _setting(
        "max_connections",
        "int",
        _at_least(0, MAX_STREAMS),
        "most open connections that are not streams; past it, new ones get 503 with `Retry-After` "
        "(open streams and the `metrics_listen` listener are not affected); `0`: a quarter of the "
        "open-files limit",
    ),
    Setting(
        "wsgi_module",
        "wsgi",
        ("module", "wsgi"),
        "str",
        _wsgi_module,
        "the WSGI app as `pkg.module:callable` (the working directory is importable)",
    ),
    _setting(
        "proxy",
        "str",
        _proxy_url,
        "base URL of a remote HTTP app; requests and bodies are streamed through a persistent "
        "connection pool",
    ),
    _setting(
        "threads",
        "int",
        _above_zero(MAX_THREADS),
        "threads running the in-process WSGI app",
    ),
    _setting(
        "upstream_timeout",
        "float",
        _seconds_above_zero,
        "seconds to wait for the app's response headers before answering 504; an in-process request "
        "still queued for a thread by then is never run",
    ),
    _setting(
        "forwarded",
        "bool",
        _bool,
        "proxy: send `X-Forwarded-For/-Proto/-Host`; in-process: trust them for `REMOTE_ADDR`, the URL "
        "scheme and the host",
    ),
    _setting(
        "offload_header",
        "str",
        _header_name,
        "the response header by which an app hands a connection over with no rule",
    ),
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
