"""The table of scalar settings (``SETTINGS``) and the parsing of their values, for both syntaxes.

Adding a scalar key is one ``Setting`` here plus one ``Config`` field (and its default in
``defaults``): both parsers read the table, and docs/configuration.md's key table is rendered from it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ssebridge.config.checks import (
    MAX_BYTES,
    MAX_CHANNELS_LIMIT,
    MAX_SECONDS,
    MAX_STREAMS,
    MAX_THREADS,
    above_zero,
    at_least,
    boolean,
    endpoint_or_empty,
    header_mapping,
    header_name,
    path_or_empty,
    proxy_url,
    seconds,
    seconds_above_zero,
    server,
    workers,
    wsgi_module,
)

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


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _setting(name: str, type: SettingType, check: Callable[[Any], Any], doc: str, *aliases: str) -> Setting:
    # The TOML key is the field name; the ini key is the same with dashes, as uWSGI options are spelled.
    return Setting(name, name, (name.replace("_", "-"), *aliases), type, check, doc)


SETTINGS: tuple[Setting, ...] = (
    _setting(
        "redis",
        "str",
        server,
        "the default Redis server (a route's `server=` names another): `host:port`, a unix socket "
        "path, a `redis://`, `rediss://` or `unix://` URL with credentials, a Sentinel-managed master "
        "(`sentinel://h1:26379,h2:26379/NAME`) or a cluster (`cluster://h1:7000,h2:7001`)",
        "redis-server",
    ),
    _setting(
        "offload_threads",
        "int",
        at_least(0, MAX_THREADS),
        "uWSGI's offload threads: accepted for compatibility; the reactor needs none",
    ),
    _setting(
        "heartbeat",
        "float",
        seconds,
        "seconds between heartbeat comments (a bare `:` line) on every `sse` stream (`sseraw` streams "
        "carry the app's bytes alone), so proxies keep quiet streams open and dead clients are found; "
        "sent to a tenth of the streams every `heartbeat`/10 seconds, so no event waits behind a comment "
        "to every stream; `0` turns them off",
    ),
    _setting(
        "max_streams",
        "int",
        at_least(0, MAX_STREAMS),
        "most streams open at once; past it, 503 with `Retry-After`; `0` derives it from the "
        "open-files limit (which the bridge raises to its hard limit)",
    ),
    _setting(
        "client_buffer",
        "int",
        above_zero(MAX_BYTES),
        "bytes queued for a client that reads too slowly before it is disconnected; a route's "
        "`buffer_size=` can raise it for that route, never lower it",
    ),
    _setting(
        "max_message_size",
        "int",
        at_least(0, MAX_BYTES),
        "largest Redis message delivered, in bytes; larger ones are dropped and counted; `0`: no limit",
    ),
    _setting(
        "confirm_timeout",
        "float",
        seconds_above_zero,
        "seconds a new stream waits for Redis to confirm its subscription before starting anyway",
    ),
    _setting(
        "header_timeout",
        "float",
        seconds,
        "seconds a client has to send its request headers; `0`: no deadline",
    ),
    _setting(
        "shutdown_window",
        "float",
        seconds,
        "on shutdown, streams are closed spread over this many seconds",
    ),
    _setting(
        "drain_timeout",
        "float",
        seconds,
        "on shutdown, requests the upstream app is already running get this many seconds to finish "
        "and reach their clients (requests it has not started get 503 with `Retry-After`); past it "
        "they are cut. `0`: cut at once",
    ),
    _setting(
        "retry_ms",
        "int",
        at_least(0, MAX_SECONDS * 1000),
        "the SSE `retry:` hint, in milliseconds, sent to `sse` streams closed on shutdown (plus a "
        "random share of the window)",
    ),
    _setting(
        "workers",
        "count",
        workers,
        "bridge processes sharing the listeners (`SO_REUSEPORT` for TCP); `auto`: one per core. The "
        "parent runs the mules and restarts a worker that dies",
    ),
    _setting(
        "metrics_listen",
        "str",
        endpoint_or_empty,
        "a separate listener for `/metrics` (Prometheus text), `/livez` and `/readyz`; with `workers`, "
        "worker *i* listens on the port plus *i* (a unix path plus `.i`); empty: none",
    ),
    _setting(
        "metrics_path",
        "str",
        path_or_empty,
        "serve the metrics on the main listener at this path, with `livez`/`readyz` beside it; prefer "
        "`metrics_listen` on a public port; empty: none",
    ),
    _setting(
        "idle_timeout",
        "float",
        seconds_above_zero,
        "seconds an idle keep-alive connection (not a stream) is kept",
    ),
    _setting(
        "max_body",
        "int",
        above_zero(MAX_BYTES),
        "largest request body accepted for the upstream app, in bytes; larger: 413 before the app sees it",
    ),
    _setting(
        "body_timeout",
        "float",
        seconds,
        "seconds a request body may pause; past the first `body_timeout` seconds it must also average "
        "`body_min_rate`; too slow: 408 (or the connection cut, once the app has the request); `0`: no "
        "deadline",
    ),
    _setting(
        "body_min_rate",
        "float",
        at_least(0, MAX_BYTES),
        "bytes a second a request body must average after its first `body_timeout` seconds (time the "
        "bridge holds the client back for a slow app does not count); `0`: no minimum",
    ),
    _setting(
        "max_connections",
        "int",
        at_least(0, MAX_STREAMS),
        "most open connections that are not streams; past it, new ones get 503 with `Retry-After` "
        "(open streams and the `metrics_listen` listener are not affected); `0`: a quarter of the "
        "open-files limit",
    ),
    Setting(
        "wsgi_module",
        "wsgi",
        ("module", "wsgi"),
        "str",
        wsgi_module,
        "the WSGI app as `pkg.module:callable` (the working directory is importable)",
    ),
    _setting(
        "proxy",
        "str",
        proxy_url,
        "base URL of a remote HTTP app; requests and bodies are streamed through a persistent "
        "connection pool",
    ),
    _setting(
        "threads",
        "int",
        above_zero(MAX_THREADS),
        "threads running the in-process WSGI app",
    ),
    _setting(
        "upstream_timeout",
        "float",
        seconds_above_zero,
        "seconds to wait for the app's response headers before answering 504; an in-process request "
        "still queued for a thread by then is never run",
    ),
    _setting(
        "forwarded",
        "bool",
        boolean,
        "proxy: send `X-Forwarded-For/-Proto/-Host`; in-process: trust them for `REMOTE_ADDR`, the URL "
        "scheme and the host; `false`: a client's own `X-Forwarded-*`, `Forwarded` and `X-Real-IP` are "
        "dropped before the app sees them",
    ),
    _setting(
        "access_log",
        "bool",
        boolean,
        "one log line per request (`ssebridge.access`: method, path with the query's names but not its "
        "values, status, bytes, duration, client); a stream's is its `stream closed` line, written "
        "whatever this says",
    ),
    _setting(
        "strict",
        "bool",
        boolean,
        "an unknown key is an error (`--check --strict` does the same for one run); otherwise a "
        "warning, with the known key it may be a misspelling of",
    ),
    _setting(
        "offload_header",
        "str",
        header_name,
        "the response header by which an app hands a connection over with no rule",
    ),
    _setting(
        "max_channels",
        "int",
        at_least(1, MAX_CHANNELS_LIMIT),
        "most channels plus patterns one stream may hold (a route's `channels`/`patterns`, repeated "
        "`subscribe=`/`psubscribe=`, an app's `X-SSE-Offload: a, b`); past it, 400",
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
