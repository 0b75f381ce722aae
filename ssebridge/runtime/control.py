"""Signals of a running ``twistd ssebridge``: SIGHUP reloads the config, SIGUSR2 upgrades the code.

- A worker pool (``workers`` above 1, or any process started by an upgrade) reloads in place:
  ``WorkerPool.reload`` replaces its workers one at a time on the same listening sockets.
- A single-process bridge (``workers = 1``) has no parent to keep its sockets while it is replaced,
  so SIGHUP checks the file and then hands its sockets over (``handoff``) to a new process that runs
  one worker under a parent: from then on it is a pool of one, and the next SIGHUP reloads in place.
- SIGUSR2, in both, hands the sockets over to a new process running the code now installed: the new
  process reads the config afresh (a changed ``listen`` or ``workers`` is applied there), and the old
  one stops once the new one serves.

Every failure (a bad config, a new process that exits or does not get ready) leaves the running
process serving as before, with the reason logged.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ssebridge.config.model import check_config
from ssebridge.runtime.handoff import Sockets, Successor, start_successor
from ssebridge.runtime.pool import WorkerPool
from ssebridge.runtime.sdnotify import notify, reloading_notice
from ssebridge.runtime.service import BridgeService

__all__ = ["Control", "runs_in_foreground"]

log = Logger()


def runs_in_foreground(argv: Sequence[str]) -> bool:
    """Whether twistd was told ``--nodaemon`` (``-n``, alone or among short flags) before the plugin.

    A daemonising successor would fork away from the pipe it reports ready on: upgrades need it.
    """
    for arg in argv:
        if arg == "ssebridge":
            break
        if arg == "--nodaemon" or (arg.startswith("-") and not arg.startswith("--") and "n" in arg[1:]):
            return True
    return False


class Control:
    """Reload and upgrade for the service ``twistd ssebridge`` runs (a ``WorkerPool`` or a
    ``BridgeService``)."""

    def __init__(
        self, service: Service, config_path: str | None, reactor: Any = None, strict: bool = False
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.service = service
        self.config_path = config_path
        #: ``--strict``: a reload refuses unknown keys too, as the start did.
        self.strict = strict
        self.reactor = reactor
        self.handing_over = False
        #: Listening ports given up to a successor: kept referenced (and never closed) until exit.
        self.released: list[Any] = []
        #: The process a hand-over is starting, until it is ready or given up.
        self.successor: Successor | None = None

    def install(self) -> None:
        """Handle SIGHUP and SIGUSR2 (the handlers only schedule the work on the reactor)."""
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))
        signal.signal(signal.SIGUSR2, lambda *_: self.reactor.callFromThread(self._usr2))
        self.reactor.addSystemEventTrigger("before", "shutdown", self._abandon)

    def _abandon(self) -> None:
        # Stopping (SIGTERM) while a successor starts: it must not go on serving without us.
        if self.successor is not None:
            self.successor.give_up("this process is stopping")

    def _usr2(self) -> None:
        log.info("SIGUSR2: starting a new process on our listening sockets")
        self.upgrade()

    def reload(self) -> Deferred[bool]:
        """SIGHUP: a pool reloads in place; a single process checks the file, then hands over."""
        if not self.service.running:
            log.warn("SIGHUP ignored: the service has not started yet (or is stopping)")
            return Deferred.fromCoroutine(_false())
        if self.handing_over:
            log.warn("SIGHUP ignored: a new process is taking the sockets over")
            return Deferred.fromCoroutine(_false())
        if isinstance(self.service, WorkerPool):
            log.info("SIGHUP: reloading {path}", path=self.config_path or "the built-in config")
            return self.service.reload(self.strict)
        log.info("SIGHUP: reloading; this single process hands its sockets to a parent and one worker")
        if self.config_path:
            found, problems = check_config(self.config_path, self.strict)
            if found is None:
                for problem in problems:
                    log.error("reload refused: {problem}", problem=str(problem))
                log.error("reload refused: the running config is kept")
                return Deferred.fromCoroutine(_false())
        return self.upgrade()

    def upgrade(self) -> Deferred[bool]:
        """SIGUSR2 (and a single process's SIGHUP): start a successor on our sockets, stop once it serves."""
        return Deferred.fromCoroutine(self._upgrade())

    async def _upgrade(self) -> bool:
        if not self.service.running:
            log.warn("upgrade ignored: the service has not started yet (or is stopping)")
            return False
        if self.handing_over:
            log.warn("a new process is already starting; ignored")
            return False
        if isinstance(self.service, WorkerPool) and self.service.reloading:
            log.warn("upgrade ignored: a reload is under way; send it again once it is done")
            return False
        # twistd's own arguments (``ssebridge run`` hands twistd a command line of its making).
        if not runs_in_foreground(sys.argv):
            log.error("cannot hand over: twistd must run with --nodaemon for a new process to take over")
            return False
        sockets = self.sockets()
        if not sockets:
            log.error("cannot hand over: no listening socket yet")
            return False
        self.handing_over = True
        notify(reloading_notice())
        try:
            successor = self.successor = start_successor(self.reactor, sockets)
            if not await successor.ready:
                log.error("hand-over failed: this process keeps serving")
                notify("READY=1")
                return False
        finally:
            self.handing_over = False
            self.successor = None
        assert successor.transport is not None
        pid = successor.transport.pid
        self.handing_over = True  # for good: signals from now on are the new process's to handle
        # systemd now follows the new process (its own notices count only once it is the main
        # one); ours stopping is not the service stopping.
        notify(f"MAINPID={pid}\nREADY=1")
        # Anything more from us (STOPPING=1 as we stop) would come from a process that is no longer
        # the main one: systemd would drop it with a warning.
        os.environ.pop("NOTIFY_SOCKET", None)
        log.info("pid {pid} serves now; this process stops", pid=pid)
        self._release()
        self.reactor.stop()
        return True

    def sockets(self) -> Sockets:
        """The listening sockets to hand over, keyed (listen entry, worker slot)."""
        if isinstance(self.service, WorkerPool):
            pool = self.service.sockets
            return {(i, w): sock for w, socks in enumerate(pool) for i, sock in enumerate(socks)}
        if isinstance(self.service, BridgeService):
            return {(i, 0): _socket_of(port) for i, port in enumerate(self.service.listener_ports)}
        return {}

    def _release(self) -> None:
        """Stop accepting on sockets the successor now owns, without closing (or shutting) them."""
        if isinstance(self.service, WorkerPool):
            self.service.handed_over = True
            return
        if isinstance(self.service, BridgeService):
            for port in self.service.listener_ports:
                # Not stopListening: Twisted shuts a socket it opened down, for every process
                # sharing it, and unlinks a unix socket's path.
                port.stopReading()
                self.released.append(port)
                if port in self.service.ports:
                    self.service.ports.remove(port)
            self.service.listener_ports = []


def _socket_of(port: Any) -> socket.socket:
    sock: socket.socket = port.socket
    return sock


async def _false() -> bool:
    return False
