"""Twisted endpoint strings, read in one place: the config checks them, the runtime opens them.

``parse_endpoint`` reads a server endpoint string (``tcp:9090:interface=127.0.0.1``,
``tcp6:port=9090:interface=\\:\\:1``, ``unix:/run/sse.sock:mode=660``, ``ssl:443:privateKey=k.pem``,
``systemd:domain=INET:index=0``) the way Twisted's ``serverFromString`` tokenizes it (``:`` between
arguments, ``=`` between a name and its value, ``\\`` escaping the next character) and checks what
Twisted would only find out when listening: the port's range, a ``backlog`` that is a number, a unix
path, systemd's ``index`` and ``domain``. ``listen_endpoint`` also accepts uWSGI's ``http-socket``
forms (``:9090``, ``HOST:PORT``, ``[::1]:9090``, a path) and converts them.

Pure (no Twisted, no I/O), so the config imports it to validate, the runtime to open, and a test to
pin both to the same reading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

__all__ = [
    "ENDPOINT_TYPES",
    "MAX_BACKLOG",
    "MAX_PORT",
    "POOLED_KINDS",
    "Endpoint",
    "listen_endpoint",
    "parse_endpoint",
]

#: Twisted endpoint types a ``listen`` string may name.
ENDPOINT_TYPES = ("tcp", "tcp6", "unix", "ssl", "systemd")
#: Endpoint types a worker pool can open in its parent and share with its workers (not ``ssl``).
POOLED_KINDS = ("tcp", "tcp6", "unix", "systemd")
#: The highest TCP port.
MAX_PORT = 65535
#: The highest ``backlog`` the kernel's ``listen(2)`` takes (a C int).
MAX_BACKLOG = 2**31 - 1
#: Address families a systemd socket may be named with.
SYSTEMD_DOMAINS = ("INET", "INET6", "UNIX")

_PORTED = ("tcp", "tcp6", "ssl")
_BACKLOGGED = ("tcp", "tcp6", "unix", "ssl")


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint string: its type and its arguments, in order, unescaped.

    ``args`` holds ``(name, value)`` pairs; a positional argument has ``name`` ``None``. The order is
    kept, so ``str()`` gives back an equivalent string with only the changed argument differing.
    """

    kind: str
    args: tuple[tuple[str | None, str], ...] = ()

    def get(self, name: str, position: int | None = None) -> str | None:
        """The value of argument ``name``, else of the positional argument ``position``, else ``None``.

        As in Twisted, a named argument given twice counts once, the last one.
        """
        for key, value in reversed(self.args):
            if key == name:
                return value
        if position is not None:
            positional = [value for key, value in self.args if key is None]
            if position < len(positional):
                return positional[position]
        return None

    @property
    def port(self) -> int | None:
        """The TCP port of a ``tcp``/``tcp6``/``ssl`` endpoint (checked by ``parse_endpoint``)."""
        text = self.get("port", 0) if self.kind in _PORTED else None
        return int(text) if text is not None else None

    @property
    def path(self) -> str | None:
        """The socket path of a ``unix`` endpoint."""
        return self.get("address", 0) if self.kind == "unix" else None

    @property
    def interface(self) -> str | None:
        """The address a ``tcp``/``tcp6``/``ssl`` endpoint binds to, if it names one."""
        return self.get("interface") if self.kind in _PORTED else None

    @property
    def backlog(self) -> int | None:
        """The ``backlog`` argument, if given (checked by ``parse_endpoint``)."""
        text = self.get("backlog")
        return int(text) if text is not None else None

    @property
    def systemd_index(self) -> int | None:
        """The index of the inherited socket a ``systemd`` endpoint adopts."""
        text = self.get("index") if self.kind == "systemd" else None
        return int(text) if text is not None else None

    @property
    def systemd_domain(self) -> str:
        """The address family (``INET``, ``INET6``, ``UNIX``) of a ``systemd`` endpoint's socket."""
        return self.get("domain") or "INET"

    def with_arg(self, name: str, position: int | None, value: str) -> Endpoint:
        """This endpoint with argument ``name`` (or positional ``position``) set to ``value``; added
        as a named argument when absent."""
        args = list(self.args)
        for i in range(len(args) - 1, -1, -1):
            if args[i][0] == name:
                args[i] = (name, value)
                return replace(self, args=tuple(args))
        if position is not None:
            seen = -1
            for i, (key, _) in enumerate(args):
                if key is None:
                    seen += 1
                    if seen == position:
                        args[i] = (None, value)
                        return replace(self, args=tuple(args))
        return replace(self, args=(*self.args, (name, value)))

    def with_default_backlog(self, backlog: int) -> Endpoint:
        """This endpoint with ``backlog`` when it takes one and names none (Twisted's default is 50)."""
        if self.kind in _BACKLOGGED and self.get("backlog") is None:
            return self.with_arg("backlog", None, str(backlog))
        return self

    def for_worker(self, index: int) -> Endpoint:
        """The endpoint worker ``index`` of a pool serves alone: the port plus ``index`` (port 0 stays
        0, any free port), a unix path plus ``.index``.

        Raises ``ValueError`` when the port would pass 65535, or for a type that cannot be spread
        over workers (``systemd``).
        """
        port = self.port
        if port is not None:
            if port == 0:
                return self
            if port + index > MAX_PORT:
                raise ValueError(f"port {port} plus worker {index} is past {MAX_PORT}")
            return self.with_arg("port", 0, str(port + index))
        path = self.path
        if path:
            return self.with_arg("address", 0, f"{path}.{index}")
        raise ValueError(f"{self}: workers need a tcp port or a unix path for their metrics")

    def __str__(self) -> str:
        parts = [self.kind]
        for key, value in self.args:
            parts.append(_escape(value) if key is None else f"{_escape(key)}={_escape(value)}")
        return ":".join(parts)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _split(text: str) -> tuple[str, list[tuple[str | None, str]]]:
    """Tokenize as Twisted does: ``:`` ends an argument, the first unescaped ``=`` in one ends its
    name, ``\\`` takes the next character literally."""
    args: list[tuple[str | None, str]] = []
    key: str | None = None
    current: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                # Twisted's tokenizer crashes on it (StopIteration inside a generator).
                raise ValueError(f"endpoint {text!r} ends with a lone backslash")
            current.append(escaped)
        elif char == ":":
            args.append((key, "".join(current)))
            key, current = None, []
        elif char == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(char)
    args.append((key, "".join(current)))
    kind_key, kind = args[0]
    if kind_key is not None:
        raise ValueError(f"endpoint {text!r} does not start with its type")
    return kind, args[1:]


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_PORT:
        raise ValueError(f"port {text!r} is not a number in 0-{MAX_PORT}")
    return int(text)


def _whole(name: str, text: str, maximum: int) -> None:
    if not (text.isascii() and text.isdigit()) or int(text) > maximum:
        raise ValueError(f"{name} {text!r} is not a whole number in 0-{maximum}")


def parse_endpoint(text: str) -> Endpoint:
    """Read and check a Twisted server endpoint string of one of ``ENDPOINT_TYPES``.

    Raises ``ValueError`` with a short problem naming the endpoint.
    """
    kind, args = _split(text.strip())
    endpoint = Endpoint(kind, tuple(args))
    if kind not in ENDPOINT_TYPES:
        raise ValueError(f"endpoint {text!r}: unknown type {kind!r} (one of {', '.join(ENDPOINT_TYPES)})")
    if kind in _PORTED:
        port = endpoint.get("port", 0)
        if port is None:
            raise ValueError(f"endpoint {text!r} has no port")
        _port(port)
    elif kind == "unix":
        if not endpoint.get("address", 0):
            raise ValueError(f"endpoint {text!r} has no path")
        mode = endpoint.get("mode")
        if mode is not None and not re.fullmatch(r"[0-7]{1,4}", mode):
            raise ValueError(f"endpoint {text!r}: mode {mode!r} is not an octal file mode")
    elif kind == "systemd":
        # Twisted's systemd endpoint takes the inherited socket's index and address family.
        if not (endpoint.get("index") or "").isdigit():
            raise ValueError(f"endpoint {text!r} needs index=N")
        if endpoint.systemd_domain not in SYSTEMD_DOMAINS:
            raise ValueError(f"endpoint {text!r}: domain must be INET, INET6 or UNIX")
    backlog = endpoint.get("backlog")
    if backlog is not None:
        try:
            _whole("backlog", backlog, MAX_BACKLOG)
        except ValueError as e:
            raise ValueError(f"endpoint {text!r}: {e}") from None
    return endpoint


_LISTEN_HOST = re.compile(r"[A-Za-z0-9._-]*")


def listen_endpoint(text: str) -> str:
    """A listen address as a Twisted server endpoint string.

    Takes a Twisted endpoint string (``tcp:9090:interface=127.0.0.1``, ``tcp6:...``, ``unix:/path``,
    ``ssl:...``, ``systemd:domain=INET:index=0``) as it is, after ``parse_endpoint`` checked it, or
    converts the uWSGI ``http-socket`` forms: ``:9090`` (every IPv4 interface), ``HOST:9090``,
    ``[::1]:9090``, and a socket path starting with ``/`` or ``./``.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty listen address")
    kind = text.split(":", 1)[0]
    if kind in ENDPOINT_TYPES and ":" in text:
        parse_endpoint(text)
        return text
    if text.startswith(("/", "./", "../")):
        return str(Endpoint("unix", ((None, text),)))
    if "://" in text:
        raise ValueError(f"listen address {text!r} is a URL: use HOST:PORT or an endpoint string")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not host:
            raise ValueError(f"listen address {text!r} is not [ADDRESS]:PORT")
        if not re.fullmatch(r"[0-9A-Fa-f:.%a-zA-Z]+", host):
            raise ValueError(f"bad IPv6 address {host!r}")
        return str(Endpoint("tcp6", ((None, str(_port(port))), ("interface", host))))
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
    number = _port(port)
    return f"tcp:{number}:interface={host}" if host else f"tcp:{number}"
