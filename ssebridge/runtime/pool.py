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
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ssebridge.config.model import Config
from ssebridge.runtime.backoff import backoff_delay
from ssebridge.runtime.lifecycle import EXIT_CANNOT_START, StartError, stop_and_exit
from ssebridge.runtime.listeners import FIRST_FD, ListenSpec, check_inherited, open_listener, parse_listen
from ssebridge.runtime.mules import MuleService
from ssebridge.runtime.sdnotify import notify

log = Logger()

#: A worker that ran this many seconds before it died is restarted at once (its backoff resets).
STABLE_AFTER = 30.0
#: Restart backoff of a worker that keeps dying: seconds, first and longest wait.
RESTART_INITIAL = 0.2
RESTART_MAXIMUM = 10.0
#: Seconds past ``shutdown_window`` the workers get to stop before they are killed.
STOP_GRACE = 10.0


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
            for description in self.config.listen:
                check_inherited(description, "listen")
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
        except (OSError, ValueError, StartError) as e:
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
        if self.reactor.seconds() - self.started_at.get(index, 0) > STABLE_AFTER:
            self.failures[index] = 0
        failures = self.failures.get(index, 0) + 1
        self.failures[index] = failures
        delay = backoff_delay(
            failures, initial=RESTART_INITIAL, maximum=RESTART_MAXIMUM, factor=2.0, jitter=0.2
        )
        log.warn(
            "worker {index} exited ({why}); restarting in {delay:.1f}s",
            index=index,
            why=reason.getErrorMessage(),
            delay=delay,
        )
        self.reactor.callLater(delay, self.spawn, index)

    def fail_to_start(self) -> None:
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
            grace = self.config.shutdown_window + STOP_GRACE
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
