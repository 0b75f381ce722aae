"""Checks of scalar values: each says what it accepts, in words, for the docs' key table.

A ``Check`` is called with a value already of its setting's type and returns what ``Config``
stores, or raises ``ValueError`` with a short problem. The upper bounds turn a value that would only
fail at run time (a timer Twisted cannot arm, more processes than a machine runs) into a load-time
error.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ssebridge.address import parse_server
from ssebridge.config.endpoint import listen_endpoint

__all__ = [
    "MAX_BYTES",
    "MAX_CHANNELS_LIMIT",
    "MAX_SECONDS",
    "MAX_STREAMS",
    "MAX_THREADS",
    "MAX_WORKERS",
    "Check",
    "above_zero",
    "at_least",
    "boolean",
    "endpoint_or_empty",
    "header_mapping",
    "header_name",
    "num",
    "path_or_empty",
    "positive",
    "proxy_url",
    "seconds",
    "seconds_above_zero",
    "server",
    "workers",
    "wsgi_module",
]

#: Upper bounds, so a value that would only fail at run time (a timer Twisted cannot arm, more
#: processes than a machine runs) is a load-time error instead.
MAX_SECONDS = 86400.0
MAX_BYTES = 2**40
MAX_STREAMS = 10_000_000
MAX_WORKERS = 1024
MAX_THREADS = 1024
#: Channels per stream: every one is a subscription and a position in the stream's Last-Event-ID,
#: which must fit in a request header.
MAX_CHANNELS_LIMIT = 1024


@dataclass(frozen=True)
class Check:
    """A value's check, and the values it accepts in words (for the docs' key table)."""

    accepts: str
    run: Callable[[Any], Any]

    def __call__(self, value: Any) -> Any:
        return self.run(value)


def num(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def at_least(minimum: float, maximum: float | None = None) -> Check:
    def check(value: Any) -> Any:
        if value < minimum:
            raise ValueError(f"must be at least {minimum:g}, not {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {num(maximum)}, not {value:g}")
        return value

    return Check(f"{num(minimum)} to {num(maximum)}" if maximum is not None else f"≥ {minimum:g}", check)


def above_zero(maximum: float) -> Check:
    def check(value: Any) -> Any:
        if value <= 0:
            raise ValueError(f"must be greater than 0, not {value}")
        if value > maximum:
            raise ValueError(f"must be at most {num(maximum)}, not {value:g}")
        return value

    return Check(f"> 0, at most {num(maximum)}", check)


positive = Check("> 0", above_zero(math.inf).run)


def _workers_check(value: Any) -> int:
    text = str(value).strip()
    if text == "auto":
        return len(os.sched_getaffinity(0))
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise ValueError(f"must be a whole number from 1 to {MAX_WORKERS} or 'auto', not {text!r}")
    return int(text)


workers = Check(f"1 to {num(MAX_WORKERS)}, or `auto`", _workers_check)


def _endpoint_or_empty_check(value: Any) -> str:
    return listen_endpoint(value) if str(value).strip() else ""


endpoint_or_empty = Check("endpoint, or empty", _endpoint_or_empty_check)


def _path_or_empty_check(value: Any) -> str:
    text = str(value).strip()
    if text and (not text.startswith("/") or text == "/" or any(c in text for c in "?#\r\n\x00")):
        raise ValueError(f"must be an absolute path like /metrics, not {text!r}")
    return text.rstrip("/")


path_or_empty = Check("path, or empty", _path_or_empty_check)

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_MODULE = re.compile(r"[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?")


def _header_name_check(value: Any) -> str:
    text = str(value).strip()
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"{text!r} is not a header name")
    return text


header_name = Check("header name", _header_name_check)


def _wsgi_module_check(value: Any) -> str:
    text = str(value).strip()
    if not _MODULE.fullmatch(text):
        raise ValueError(f"{text!r} is not pkg.module or pkg.module:callable")
    return text


wsgi_module = Check("`pkg.module:callable`", _wsgi_module_check)


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


proxy_url = Check("`http://` or `https://` URL", _proxy_url_check)


def header_mapping(text: str) -> tuple[str, str]:
    """``collect-header``/``pull-header`` values: ``Header-Name VARIABLE``."""
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"expected 'Header-Name VARIABLE', got {text!r}")
    return header_name(parts[0]), parts[1]


server = Check("Redis address", parse_server)
boolean = Check("`true` or `false`", lambda value: value)
seconds = at_least(0, MAX_SECONDS)
seconds_above_zero = above_zero(MAX_SECONDS)
