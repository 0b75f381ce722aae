"""Listening sockets: what an endpoint string opens, in one process or shared by a worker pool.

The parent of a pool opens the sockets (``parse_listen``, ``open_listener``) and its workers adopt
them (``adopt_listeners``); a single process listens through Twisted's endpoints (``with_backlog``).
Each worker serves its own metrics on ``per_worker_endpoint``.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from ssebridge.config import defaults
from ssebridge.config.endpoint import parse_endpoint
from ssebridge.runtime.lifecycle import StartError

log = Logger()

#: The first inherited descriptor a worker finds its listening sockets at.
FIRST_FD = 3

_FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


@dataclass(frozen=True)
class ListenSpec:
    """A listening address a parent can open itself: what ``workers`` supports."""

    family: int
    address: Any
    backlog: int = defaults.BACKLOG
    shared: bool = False
    inherited_fd: int | None = None


def parse_listen(description: str) -> ListenSpec:
    """Read a Twisted endpoint string (``tcp``, ``tcp6``, ``unix``, ``systemd``) as a socket to open.

    Raises ``ValueError`` for a bad string, and for kinds a worker pool cannot share (``ssl``:
    terminate TLS in front).
    """
    endpoint = parse_endpoint(description)
    backlog = endpoint.backlog if endpoint.backlog is not None else defaults.BACKLOG
    if endpoint.kind in ("tcp", "tcp6"):
        assert endpoint.port is not None  # parse_endpoint checked it
        default = "::" if endpoint.kind == "tcp6" else "0.0.0.0"
        interface = endpoint.interface or default
        family = socket.AF_INET6 if endpoint.kind == "tcp6" or ":" in interface else socket.AF_INET
        return ListenSpec(family, (interface, endpoint.port), backlog)
    if endpoint.kind == "unix":
        return ListenSpec(socket.AF_UNIX, endpoint.path, backlog, shared=True)
    if endpoint.kind == "systemd":
        index = endpoint.systemd_index or 0
        family = _FAMILIES[endpoint.systemd_domain]
        return ListenSpec(family, None, backlog, shared=True, inherited_fd=FIRST_FD + index)
    raise ValueError(f"{description}: workers cannot share a '{endpoint.kind}' listener")


def per_worker_endpoint(description: str, index: int) -> str:
    """The endpoint worker ``index`` serves its own metrics on: the port plus ``index`` (a unix path
    gets ``.index``).

    Metrics and health describe one process; workers sharing one port would answer a scrape at
    random, so each worker is its own scrape target.
    """
    try:
        return str(parse_endpoint(description).for_worker(index))
    except ValueError as e:
        if "metrics" in str(e):
            raise
        raise ValueError(f"{e} (each worker needs a tcp port or a unix path for its metrics)") from None


def _is_listening_socket(fd: int) -> bool:
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        with socket.socket(fileno=os.dup(fd)) as sock:
            return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


def check_inherited(description: str, setting: str) -> None:
    """Raise ``StartError`` naming ``setting`` if ``description`` is a systemd endpoint whose socket
    this process did not inherit (started without its ``.socket`` unit, say).

    Twisted would fail with ``list index out of range``; a worker pool would adopt whatever fd 3 is.
    """
    endpoint = parse_endpoint(description)
    if endpoint.kind != "systemd":
        return
    index = endpoint.systemd_index or 0
    if not _is_listening_socket(FIRST_FD + index):
        raise StartError(
            f"{setting} {description!r}: systemd passed no listening socket at index {index}; start "
            "the service through its .socket unit (or systemd-socket-activate), or listen on tcp:PORT"
        )


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


def same_address(sock: socket.socket, spec: ListenSpec) -> bool:
    """Whether ``sock`` (handed over by a previous process) listens where ``spec`` says."""
    if spec.inherited_fd is not None:
        return bool(sock.family == spec.family)
    if sock.family != spec.family:
        return False
    try:
        name = sock.getsockname()
    except OSError:
        return False
    if spec.family == socket.AF_UNIX:
        return bool(name == spec.address)
    host, port = spec.address
    # getsockname() gives the numeric form ('::' may read '::'; an IPv6 name has 4 fields).
    return bool(name[1] == port and _numeric(spec.family, host) == _numeric(spec.family, name[0]))


def _numeric(family: int, host: str) -> str:
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, host))
    except OSError:
        return host


def worker_sockets(
    specs: Sequence[ListenSpec], count: int, inherited: Mapping[tuple[int, int], socket.socket] | None
) -> list[list[socket.socket]]:
    """Each of ``count`` workers' sockets, in ``specs`` order: opened, or taken over from
    ``inherited`` (keyed listen entry, worker slot: an upgrade). All closed again on failure.

    An inherited socket the config no longer listens on is closed and a new one opened; one of a
    worker slot that no longer exists is closed (connection attempts queued on it are reset).
    """
    left = dict(inherited or {})
    shared: dict[int, socket.socket] = {}
    opened: list[socket.socket] = []
    result: list[list[socket.socket]] = []

    def take(i: int, w: int, spec: ListenSpec) -> socket.socket:
        sock = left.pop((i, w), None)
        if sock is not None and not same_address(sock, spec):
            log.warn("listen {i}: the socket handed over is not {spec}; opening a new one", i=i, spec=spec)
            sock.close()
            sock = None
        if sock is None:
            if inherited is not None and spec.inherited_fd is not None:
                raise StartError(f"listen {i}: the previous process passed no systemd socket")
            try:
                sock = open_listener(spec)
            except OSError as e:
                first = result[0][i] if result and e.errno == errno.EADDRINUSE else None
                if first is None or inherited is None:
                    raise
                # A single-process bridge's socket (Twisted binds it without SO_REUSEPORT) allows
                # no second one on its port: the workers added since all accept from it instead.
                log.info("listen {i}: worker {w} shares the socket handed over", i=i, w=w)
                return first
        opened.append(sock)
        return sock

    try:
        for w in range(count):
            socks = []
            for i, spec in enumerate(specs):
                if spec.shared:
                    if i not in shared:
                        shared[i] = take(i, w, spec)
                    socks.append(shared[i])
                else:
                    socks.append(take(i, w, spec))
            result.append(socks)
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    for (i, w), sock in left.items():
        if i >= len(specs) or not specs[i].shared:
            log.warn("listen {i}: closing the socket of former worker {w}", i=i, w=w)
        sock.close()  # a shared socket's other copies are the same socket: closing them is free
    return result


def with_backlog(description: str) -> str:
    """Add a deep listen backlog (``defaults.BACKLOG``) to an endpoint string that names none."""
    endpoint = parse_endpoint(description)
    if endpoint.with_default_backlog(defaults.BACKLOG) is endpoint:
        return description
    # Appended to the text as written, so the rest reaches Twisted exactly as the config said it.
    return f"{description}:backlog={defaults.BACKLOG}"


def adopt_listeners(reactor: Any, families: Sequence[int], factory: Any) -> list[Any]:
    """In a worker: adopt the inherited listening sockets (fds 3, 4, ...)."""
    ports = []
    for n, family in enumerate(families):
        fd = FIRST_FD + n
        port = reactor.adoptStreamPort(fd, family, factory)
        os.close(fd)  # adoptStreamPort dup()s it
        if family == socket.AF_UNIX:
            _keep_path(port)
        ports.append(port)
    return ports


def _keep_path(port: Any) -> None:
    """Make a stopping unix port leave the socket it shares alone: its path, and its listening state.

    Twisted, stopping a unix port (also one it adopted), unlinks its path and calls ``shutdown()`` on
    the socket, which stops it listening in every process that shares it (its TCP ports skip the
    shutdown for an adopted socket; its unix ports do not). Here the parent and the other workers
    (or a reload's new worker) still accept from it: either would fail every new connection. Both
    are Twisted's private attributes: a ``_bindPath`` in the abstract namespace (a leading NUL) is
    never unlinked, and ``_shouldShutdown`` off is what its TCP ports set for adopted sockets.
    """
    path = getattr(port, "_bindPath", None)
    if isinstance(path, bytes) and hasattr(port, "_shouldShutdown"):
        port._bindPath = b"\0" + path
        port._shouldShutdown = False
    else:  # pragma: no cover - a Twisted that changed: say so rather than fail silently
        log.warn("cannot keep the shared unix socket of {port}: a reload may break it", port=port)


async def listen(reactor: Any, description: str, factory: Any, setting: str) -> IListeningPort:
    """Listen on ``description`` (given as ``setting``) with ``factory``, with a deep backlog.

    A systemd endpoint whose socket is missing is a ``StartError`` naming the setting, never
    Twisted's ``list index out of range``.
    """
    check_inherited(description, setting)
    try:
        endpoint = serverFromString(reactor, with_backlog(description))
    except (IndexError, KeyError):
        # Twisted's own table of passed sockets (LISTEN_FDS, LISTEN_FDNAMES) lacks this one.
        raise StartError(
            f"{setting} {description!r}: systemd passed no socket at this index (LISTEN_FDS and "
            "LISTEN_FDNAMES must both name it)"
        ) from None
    port: IListeningPort = await endpoint.listen(factory)
    return port
