"""Every core: ``workers = N`` runs N bridge processes that share the listening sockets.

The parent opens the listening sockets and passes them to its children, which adopt them
(``reactor.adoptStreamPort``). For TCP each child gets a socket of its own bound with ``SO_REUSEPORT``
to the same address, so the kernel spreads new connections evenly over the children; a unix or systemd
socket is shared by all. Each child has its own hub and Redis subscriptions. The parent runs the mules,
restarts a child that dies (its sockets stay open in the parent meanwhile, so connections wait in the
backlog instead of being refused), and passes SIGTERM on to every child when it stops.

Reload (``reload``, on SIGHUP): the config file is checked again, and a sound one replaces the workers
one at a time: worker *i*'s successor gets the very socket worker *i* accepts from, reports ready
through a pipe, and only then is the old worker sent SIGTERM (its streams close with their spread
``retry:`` hint). Nothing listening ever closes, so no connection attempt is refused.
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

from ssebridge.config.model import Config, check_config
from ssebridge.runtime.backoff import backoff_delay
from ssebridge.runtime.handoff import READY_TIMEOUT, Sockets, report_ready
from ssebridge.runtime.lifecycle import EXIT_CANNOT_START, StartError, stop_and_exit
from ssebridge.runtime.listeners import FIRST_FD, check_inherited, parse_listen, worker_sockets
from ssebridge.runtime.mules import MuleService
from ssebridge.runtime.sdnotify import notify, reloading_notice

log = Logger()

#: A worker that ran this many seconds before it died is restarted at once (its backoff resets).
STABLE_AFTER = 30.0
#: Restart backoff of a worker that keeps dying: seconds, first and longest wait.
RESTART_INITIAL = 0.2
RESTART_MAXIMUM = 10.0
#: Seconds past ``shutdown_window`` (or ``drain_timeout``, if longer) the workers get to stop
#: before they are killed.
STOP_GRACE = 10.0


class _WorkerProtocol(ProcessProtocol):
    """One worker process. ``ready`` fires True when it reports it serves, False if it ends first."""

    def __init__(self, pool: WorkerPool, index: int, ready_fd: int) -> None:
        self.pool = pool
        self.index = index
        self.ready_fd = ready_fd
        self.ready: Deferred[bool] = Deferred()
        self.ready.addCallback(pool._worker_ready)
        self.is_ready = False
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == self.ready_fd and data and not self.ready.called:
            self.is_ready = True
            self.ready.callback(True)

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.callback(False)
        self.ended.callback(None)
        self.pool.worker_ended(self, reason)

    def alive(self) -> bool:
        return not self.ended.called and self.transport is not None and bool(self.transport.pid)

    def signal(self, name: str) -> None:
        if self.alive():
            assert self.transport is not None
            self.transport.signalProcess(name)


class WorkerPool(MultiService):
    """The parent of ``workers`` bridge processes; its child services (mules) run here only once."""

    def __init__(
        self,
        config: Config,
        config_path: str | None,
        count: int,
        reactor: Any = None,
        inherited: Sockets | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.config_path = config_path
        self.count = count
        self.reactor = reactor
        self.specs = [parse_listen(d) for d in config.listen]
        #: Sockets a previous process handed over (an upgrade); adopted instead of opened.
        self.inherited = inherited
        # sockets[w] = the sockets worker w inherits, in listen order.
        self.sockets: list[list[socket.socket]] = []
        #: The serving worker of each index.
        self.workers: dict[int, _WorkerProtocol] = {}
        #: Workers replaced by a reload, still closing their streams.
        self.retiring: set[_WorkerProtocol] = set()
        self.restarts: dict[int, Any] = {}
        self.failures: dict[int, int] = {}
        self.started_at: dict[int, float] = {}
        self.stopping = False
        self.reloading = False
        #: Set when a successor took the sockets over (an upgrade): it is systemd's main process now.
        self.handed_over = False
        #: Set once every first worker served: from then on a worker that cannot start is retried.
        self.served = False
        for spec in config.mules:
            MuleService(spec).setServiceParent(self)  # type: ignore[no-untyped-call]

    def startService(self) -> None:
        try:
            if self.inherited is None:
                for description in self.config.listen:
                    check_inherited(description, "listen")
            self.sockets = worker_sockets(self.specs, self.count, self.inherited)
        except (OSError, ValueError, StartError) as e:
            log.critical("could not start: {error}", error=str(e))
            self.fail_to_start()
            return
        for w in range(self.count):
            self.spawn(w)
        log.info("started {count} workers", count=self.count)
        super().startService()  # type: ignore[no-untyped-call]

    def _worker_ready(self, ready: bool) -> bool:
        if not ready or self.served or self.stopping:
            return ready
        if not all(w.is_ready for w in self.workers.values()):
            return ready
        # Readiness (systemd's, a predecessor's) means every worker serves, not merely spawned.
        self.served = True
        log.info("all {count} workers ready", count=self.count)
        if not report_ready():
            # (A successor's predecessor tells systemd instead: this is not its main process yet.)
            notify(f"READY=1\nSTATUS={self.count} workers\nMAINPID={os.getpid()}")
        return ready

    def spawn(self, index: int, replacing: bool = False) -> _WorkerProtocol:
        pending = self.restarts.pop(index, None)
        if pending is not None and pending.active():
            pending.cancel()
        socks = self.sockets[index]
        child_fds: dict[int, int | str] = {0: "w", 1: 1, 2: 2}
        families = []
        for n, sock in enumerate(socks):
            child_fds[FIRST_FD + n] = sock.fileno()
            families.append(str(int(sock.family)))
        ready_fd = FIRST_FD + len(socks)
        child_fds[ready_fd] = "r"
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
            "--ready-fd",
            str(ready_fd),
        ]
        if replacing or self.inherited is not None:
            # Its predecessor may still hold the metrics port: wait for it instead of failing.
            argv.append("--replacing")
        if self.config_path:
            argv += ["--config", str(Path(self.config_path).resolve())]
        protocol = _WorkerProtocol(self, index, ready_fd)
        self.workers[index] = protocol
        self.started_at[index] = self.reactor.seconds()
        process = self.reactor.spawnProcess(
            protocol, sys.executable, argv, env=dict(os.environ), childFDs=child_fds
        )
        log.info("worker {index} started, pid {pid}", index=index, pid=process.pid)
        return protocol

    def worker_ended(self, protocol: _WorkerProtocol, reason: Failure) -> None:
        self.retiring.discard(protocol)
        index = protocol.index
        if self.stopping or self.workers.get(index) is not protocol:
            # A worker a reload replaced, or a replacement given up: nothing to restart.
            return
        cannot = getattr(reason.value, "exitCode", None) == EXIT_CANNOT_START
        if cannot and not self.served and not self.reloading:
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
        self.restarts[index] = self.reactor.callLater(delay, self._restart, index, protocol)

    def _restart(self, index: int, dead: _WorkerProtocol) -> None:
        self.restarts.pop(index, None)
        if not self.stopping and self.workers.get(index) is dead:
            self.spawn(index)

    # --- reload ---------------------------------------------------------------------------------------

    def reload(self, strict: bool = False) -> Deferred[bool]:
        """Check the config file again and, if sound, replace the workers one at a time.

        Fires True when every worker was replaced; False when the config was refused (the running
        one is kept) or a new worker did not become ready (it is stopped; the workers not yet
        replaced keep the old config).
        """
        return Deferred.fromCoroutine(self._reload(strict))

    async def _reload(self, strict: bool) -> bool:
        if self.stopping:
            return False
        if self.reloading:
            log.warn("reload: one is already under way; ignored")
            return False
        if not self.config_path:
            log.info("reload: no config file (the built-in default); replacing the workers")
            new = self.config
        else:
            found, problems = check_config(self.config_path, strict)
            if found is None:
                for problem in problems:
                    log.error("reload refused: {problem}", problem=str(problem))
                log.error(
                    "reload refused: {path} has {count} problem(s); the running config is kept",
                    path=self.config_path,
                    count=len(problems),
                )
                return False
            new = found
        self._explain_kept(new)
        self.reloading = True
        notify(reloading_notice())
        try:
            log.info("reload: replacing {count} workers one at a time", count=self.count)
            for index in range(self.count):
                if not await self._replace(index, new):
                    log.error("reload stopped at worker {index}: it did not become ready", index=index)
                    return False
                if self.stopping:
                    return False
            await self._reload_mules(new)
            self.config = new
            log.info("reload done: {count} workers serve {source}", count=self.count, source=new.source)
            notify(f"READY=1\nSTATUS={self.count} workers (reloaded)")
            return True
        finally:
            if self.reloading:
                self.reloading = False
                notify("READY=1")

    def _explain_kept(self, new: Config) -> None:
        """What a reload cannot change, said before it starts: those settings keep their old value."""
        if new.listen != self.config.listen:
            log.warn(
                "reload: listen changed from {old} to {new}: not applied, the sockets stay as they are "
                "(an upgrade, SIGUSR2, or a restart applies it)",
                old=list(self.config.listen),
                new=list(new.listen),
            )
        if new.workers != self.count:
            log.warn(
                "reload: workers changed from {old} to {new}: not applied (an upgrade, SIGUSR2, or a "
                "restart applies it)",
                old=self.count,
                new=new.workers,
            )

    async def _replace(self, index: int, new: Config) -> bool:
        old = self.workers.get(index)
        fresh = self.spawn(index, replacing=True)
        timer = self.reactor.callLater(READY_TIMEOUT, self._too_slow, fresh)
        ready = await fresh.ready
        if timer.active():
            timer.cancel()
        if not ready:
            if old is not None and old.alive():
                # The old one serves on; the new one's end is then not restarted (worker_ended).
                self.workers[index] = old
            # Else the new one stays worker ``index``: its end restarts it with backoff.
            return False
        if old is not None and old.alive():
            self.retiring.add(old)
            old.signal("TERM")
            # It runs the config it started with: its own window and drain bound its stop.
            grace = max(self.config.shutdown_window, self.config.drain_timeout) + STOP_GRACE
            self.reactor.callLater(grace, self._kill_retired, old)
            log.info("worker {index} replaced; the old one closes its streams", index=index)
        return True

    def _kill_retired(self, worker: _WorkerProtocol) -> None:
        if worker.alive():
            log.warn("replaced worker {index} did not stop in time; killing it", index=worker.index)
            worker.signal("KILL")

    def _too_slow(self, worker: _WorkerProtocol) -> None:
        if not worker.ready.called:
            log.error(
                "worker {index}: not ready in {timeout:.0f}s; stopping it",
                index=worker.index,
                timeout=READY_TIMEOUT,
            )
            worker.signal("KILL")

    async def _reload_mules(self, new: Config) -> None:
        if new.mules == self.config.mules:
            return
        log.info("reload: the mules changed; restarting them")
        for mule in [s for s in self if isinstance(s, MuleService)]:
            await mule.disownServiceParent()  # type: ignore[no-untyped-call]
        for spec in new.mules:
            MuleService(spec).setServiceParent(self)  # type: ignore[no-untyped-call]

    # --- stopping -------------------------------------------------------------------------------------

    def fail_to_start(self) -> None:
        stop_and_exit(self.reactor, 1)

    def processes(self) -> list[_WorkerProtocol]:
        return [p for p in [*self.workers.values(), *self.retiring] if p.alive()]

    def pids(self) -> list[int]:
        return [p.transport.pid for p in self.processes() if p.transport is not None]

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.stopping = True
        if not self.handed_over:
            notify("STOPPING=1")
        for pending in self.restarts.values():
            if pending.active():
                pending.cancel()
        try:
            waits = []
            for protocol in self.processes():
                protocol.signal("TERM")
                waits.append(protocol.ended)
            # Each worker closes its streams and drains its app requests side by side: the longer.
            grace = max(self.config.shutdown_window, self.config.drain_timeout) + STOP_GRACE
            timer = self.reactor.callLater(grace, self._kill_all)
            await DeferredList(waits, consumeErrors=True)
            if timer.active():
                timer.cancel()
            await super().stopService()  # type: ignore[no-untyped-call]
        except Exception:
            log.failure("error while stopping the workers")
        finally:
            self.close_sockets()

    def close_sockets(self) -> None:
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
