"""Twisted endpoint strings: the listen addresses a config names.

``listen_endpoint`` turns what a config says (an endpoint string, or uWSGI's ``http-socket`` forms)
into a Twisted server endpoint string, after checking it.
"""

from __future__ import annotations

import re

__all__ = ["ENDPOINT_TYPES", "listen_endpoint"]

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
