"""Listening sockets: what an endpoint string opens, in one process or shared by a worker pool.

The parent of a pool opens the sockets (``parse_listen``, ``open_listener``) and its workers adopt
them (``adopt_listeners``); a single process listens through Twisted's endpoints (``with_backlog``).
Each worker serves its own metrics on ``per_worker_endpoint``.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Pending connections the kernel queues per listener: browsers reconnect in crowds.
DEFAULT_BACKLOG = 4096
#: The first inherited descriptor a worker finds its listening sockets at.
FIRST_FD = 3


@dataclass(frozen=True)
class ListenSpec:
    """A listening address a parent can open itself: what ``workers`` supports."""

    family: int
    address: Any
    backlog: int = 4096
    shared: bool = False
    inherited_fd: int | None = None


def parse_listen(description: str) -> ListenSpec:
    """Read a Twisted endpoint string (``tcp``, ``tcp6``, ``unix``, ``systemd``) as a socket to open.

    Raises ``ValueError`` for kinds a worker pool cannot share (``ssl``: terminate TLS in front).
    """
    kind, _, rest = description.partition(":")
    # Twisted escapes a colon inside a value (an IPv6 interface) as "\\:".
    args = [a.replace("\\:", ":") for a in re.split(r"(?<!\\):", rest)] if rest else []
    positional = [a for a in args if "=" not in a]
    options = dict(a.split("=", 1) for a in args if "=" in a)
    backlog = int(options.get("backlog", "4096"))
    if kind in ("tcp", "tcp6"):
        if not positional:
            raise ValueError(f"{description}: no port")
        default = "::" if kind == "tcp6" else "0.0.0.0"
        interface = options.get("interface", default)
        family = socket.AF_INET6 if kind == "tcp6" or ":" in interface else socket.AF_INET
        return ListenSpec(family, (interface, int(positional[0])), backlog)
    if kind == "unix":
        if not positional:
            raise ValueError(f"{description}: no path")
        return ListenSpec(socket.AF_UNIX, positional[0], backlog, shared=True)
    if kind == "systemd":
        index = int(options.get("index", "0"))
        domain = options.get("domain", "INET")
        family = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}[domain]
        return ListenSpec(family, None, backlog, shared=True, inherited_fd=FIRST_FD + index)
    raise ValueError(f"{description}: workers cannot share a '{kind}' listener")


def per_worker_endpoint(description: str, index: int) -> str:
    """The endpoint worker ``index`` serves its own metrics on: the port plus ``index`` (a unix path
    gets ``.index``).

    Metrics and health describe one process; workers sharing one port would answer a scrape at
    random, so each worker is its own scrape target.
    """
    kind, _, rest = description.partition(":")
    args = re.split(r"(?<!\\):", rest) if rest else []
    for i, arg in enumerate(args):
        key, equals, value = arg.partition("=")
        if not equals:
            key, value = "", arg
        if kind in ("tcp", "tcp6", "ssl") and key in ("", "port") and value.isdigit():
            args[i] = f"{key}{equals}{int(value) + index}"
            return ":".join([kind, *args])
        if kind == "unix" and key in ("", "address"):
            args[i] = f"{key}{equals}{value}.{index}"
            return ":".join([kind, *args])
    raise ValueError(f"{description}: workers need a tcp port or a unix path for their metrics")


def open_listener(spec: ListenSpec) -> socket.socket:
    """Open (bind and listen) one socket for ``spec``; ``SO_REUSEPORT`` on TCP."""
    if spec.inherited_fd is not None:
        inherited = socket.socket(fileno=spec.inherited_fd)
        # systemd passes a blocking socket unless the unit says NonBlocking=yes; workers woken for a
        # connection another worker took would then hang in accept().
        inherited.setblocking(False)
        return inherited
    sock = socket.socket(spec.family, socket.SOCK_STREAM)
    if spec.family != socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    else:
        try:
            os.unlink(spec.address)
        except FileNotFoundError:
            pass
    sock.bind(spec.address)
    sock.listen(spec.backlog)
    sock.setblocking(False)
    return sock


def with_backlog(description: str) -> str:
    """Add a deep listen backlog to a ``tcp:``/``unix:`` endpoint string that does not name one."""
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "unix", "ssl") and "backlog=" not in description:
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description


def adopt_listeners(reactor: Any, families: Sequence[int], factory: Any) -> list[Any]:
    """In a worker: adopt the inherited listening sockets (fds 3, 4, ...)."""
    ports = []
    for n, family in enumerate(families):
        fd = FIRST_FD + n
        ports.append(reactor.adoptStreamPort(fd, family, factory))
        os.close(fd)  # adoptStreamPort dup()s it
    return ports
