"""Every core: ``workers = N`` runs N bridge processes that share the listening sockets.

The parent opens the listening sockets and passes them to its children, which adopt them
(``reactor.adoptStreamPort``). For TCP each child gets a socket of its own bound with ``SO_REUSEPORT``
to the same address, so the kernel spreads new connections evenly over the children; a unix or systemd
socket is shared by all. Each child has its own hub and Redis subscriptions. The parent runs the mules,
restarts a child that dies (its sockets stay open in the parent meanwhile, so connections wait in the
backlog instead of being refused), and passes SIGTERM on to every child when it stops.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ssebridge.config.model import Config
from ssebridge.runtime.mules import backoff_delay
from ssebridge.runtime.sdnotify import notify
from ssebridge.runtime.worker import EXIT_CANNOT_START

log = Logger()

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


class _WorkerProtocol(ProcessProtocol):
    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.pool.worker_ended(self.index, reason)


class WorkerPool(MultiService):
    """The parent of ``workers`` bridge processes; its child services (mules) run here only once."""

    def __init__(self, config: Config, config_path: str | None, count: int, reactor: Any = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.config_path = config_path
        self.count = count
        self.reactor = reactor
        self.specs = [parse_listen(d) for d in config.listen]
        # sockets[w] = the sockets worker w inherits, in listen order.
        self.sockets: list[list[socket.socket]] = []
        self.workers: dict[int, _WorkerProtocol] = {}
        self.failures: dict[int, int] = {}
        self.started_at: dict[int, float] = {}
        self.stopping = False
        from ssebridge.runtime.mules import MuleService

        for spec in config.mules:
            MuleService(spec).setServiceParent(self)  # type: ignore[no-untyped-call]

    def startService(self) -> None:
        shared: dict[int, socket.socket] = {}
        opened: list[socket.socket] = []

        def open_one(spec: ListenSpec) -> socket.socket:
            sock = open_listener(spec)
            opened.append(sock)
            return sock

        try:
            for _ in range(self.count):
                socks = []
                for i, spec in enumerate(self.specs):
                    if spec.shared:
                        if i not in shared:
                            shared[i] = open_one(spec)
                        socks.append(shared[i])
                    else:
                        socks.append(open_one(spec))
                self.sockets.append(socks)
        except (OSError, ValueError) as e:
            log.critical("could not start: {error}", error=str(e))
            for sock in opened:
                sock.close()
            self.sockets = []
            self.fail_to_start()
            return
        for w in range(self.count):
            self.spawn(w)
        log.info("started {count} workers", count=self.count)
        super().startService()  # type: ignore[no-untyped-call]
        notify(f"READY=1\nSTATUS={self.count} workers\nMAINPID={os.getpid()}")

    def spawn(self, index: int) -> None:
        if self.stopping:
            return
        socks = self.sockets[index]
        child_fds: dict[int, int | str] = {0: "w", 1: 1, 2: 2}
        families = []
        for n, sock in enumerate(socks):
            child_fds[FIRST_FD + n] = sock.fileno()
            families.append(str(int(sock.family)))
        argv = [
            sys.executable,
            "-m",
            "ssebridge.runtime.worker",
            "--index",
            str(index),
            "--families",
            ",".join(families),
            "--parent",
            str(os.getpid()),
        ]
        if self.config_path:
            argv += ["--config", str(Path(self.config_path).resolve())]
        protocol = _WorkerProtocol(self, index)
        self.workers[index] = protocol
        self.started_at[index] = self.reactor.seconds()
        process = self.reactor.spawnProcess(
            protocol, sys.executable, argv, env=dict(os.environ), childFDs=child_fds
        )
        log.info("worker {index} started, pid {pid}", index=index, pid=process.pid)

    def worker_ended(self, index: int, reason: Failure) -> None:
        if self.stopping:
            return
        if getattr(reason.value, "exitCode", None) == EXIT_CANNOT_START:
            # Its config or app cannot load: restarting would fail the same way, forever.
            log.critical("worker {index} cannot start; stopping", index=index)
            self.fail_to_start()
            return
        if self.reactor.seconds() - self.started_at.get(index, 0) > 30:
            self.failures[index] = 0
        failures = self.failures.get(index, 0) + 1
        self.failures[index] = failures
        delay = backoff_delay(failures, initial=0.2, maximum=10.0, factor=2.0, jitter=0.2)
        log.warn(
            "worker {index} exited ({why}); restarting in {delay:.1f}s",
            index=index,
            why=reason.getErrorMessage(),
            delay=delay,
        )
        self.reactor.callLater(delay, self.spawn, index)

    def fail_to_start(self) -> None:
        # service imports this module: import it here.
        from ssebridge.runtime.service import stop_and_exit

        stop_and_exit(self.reactor, 1)

    def pids(self) -> list[int]:
        return [p.transport.pid for p in self.workers.values() if p.transport is not None and p.transport.pid]

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.stopping = True
        notify("STOPPING=1")
        try:
            waits = []
            for protocol in self.workers.values():
                if protocol.transport is not None and protocol.transport.pid:
                    protocol.transport.signalProcess("TERM")
                    waits.append(protocol.ended)
            grace = self.config.shutdown_window + 10.0
            timer = self.reactor.callLater(grace, self._kill_all)
            await DeferredList(waits, consumeErrors=True)
            if timer.active():
                timer.cancel()
            await super().stopService()  # type: ignore[no-untyped-call]
        except Exception:
            log.failure("error while stopping the workers")
        finally:
            for socks in self.sockets:
                for sock in socks:
                    sock.close()

    def _kill_all(self) -> None:
        for pid in self.pids():
            log.warn("worker pid {pid} did not stop in time; killing it", pid=pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def resolve_workers(value: int | str) -> int:
    """``workers`` as a count: ``auto`` is the number of cores this process may run on."""
    if value == "auto":
        return len(os.sched_getaffinity(0))
    return int(value)


def adopt_listeners(reactor: Any, families: Sequence[int], factory: Any) -> list[Any]:
    """In a worker: adopt the inherited listening sockets (fds 3, 4, ...)."""
    ports = []
    for n, family in enumerate(families):
        fd = FIRST_FD + n
        ports.append(reactor.adoptStreamPort(fd, family, factory))
        os.close(fd)  # adoptStreamPort dup()s it
    return ports
