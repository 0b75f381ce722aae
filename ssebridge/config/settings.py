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

from ssebridge.config.endpoint import listen_endpoint
from ssebridge.redis.address import RedisServer, parse_server

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
