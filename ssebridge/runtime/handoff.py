"""Handing the listening sockets to a successor process: code upgrades with no refused connection.

``SIGUSR2`` (and ``SIGHUP`` for a bridge running in one process) starts a successor: the same command
line (``sys.orig_argv``), with the listening sockets passed as open descriptors. The successor runs a
worker pool on them, reports ready through a pipe once every worker serves, and only then does the
old process stop accepting, tell systemd the successor is the main process (``MAINPID=``) and close
its streams with their spread ``retry:`` hint. The sockets never close, so connection attempts made
meanwhile wait in the backlog; a successor that fails (a bad config, new code that does not import)
exits before it reports ready, and the old process keeps serving.

The contract, in the environment (removed from ``os.environ`` as soon as it is read, so workers and
mules do not inherit it): ``SSEBRIDGE_INHERIT`` = ``LISTEN:SLOT:FAMILY:FD,...`` (the socket of listen
entry LISTEN for worker SLOT) and ``SSEBRIDGE_READY_FD`` = the descriptor to write one line to.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "INHERIT_ENV",
    "READY_ENV",
    "READY_TIMEOUT",
    "Successor",
    "inherited_sockets",
    "report_ready",
    "start_successor",
]

log = Logger()

INHERIT_ENV = "SSEBRIDGE_INHERIT"
READY_ENV = "SSEBRIDGE_READY_FD"
#: Seconds a successor (or a reload's replacement worker) gets to report ready before it is given up.
READY_TIMEOUT = 60.0

#: (listen entry, worker slot) -> socket.
Sockets = dict[tuple[int, int], socket.socket]


def inherited_sockets(environ: MutableMapping[str, str] | None = None) -> Sockets | None:
    """The sockets a predecessor passed (``None`` when started normally); consumes the variable.

    A malformed value is a ``ValueError``: better to fail before ready (the predecessor keeps
    serving) than to serve on the wrong socket.
    """
    env = os.environ if environ is None else environ
    text = env.pop(INHERIT_ENV, None)
    if text is None:
        return None
    sockets: Sockets = {}
    for item in filter(None, text.split(",")):
        listen, slot, family, fd = (int(part) for part in item.split(":"))
        sock = socket.socket(family, socket.SOCK_STREAM, fileno=fd)
        sock.setblocking(False)
        sockets[(listen, slot)] = sock
    return sockets


def report_ready(environ: MutableMapping[str, str] | None = None) -> bool:
    """Tell the predecessor (if any) that this process serves; return whether there was one."""
    env = os.environ if environ is None else environ
    fd = env.pop(READY_ENV, None)
    if fd is None:
        return False
    try:
        os.write(int(fd), b"ready\n")
        os.close(int(fd))
    except (OSError, ValueError) as e:
        log.warn("could not tell the previous process we are ready: {error}", error=str(e))
        return False
    return True


class Successor(ProcessProtocol):
    """The successor process, seen from its predecessor: ``ready`` fires True once it serves, False
    if it exits (or times out) first."""

    def __init__(self, ready_fd: int) -> None:
        self.ready_fd = ready_fd
        self.ready: Deferred[bool] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == self.ready_fd and data and not self.ready.called:
            self.ready.callback(True)

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            log.error("the new process exited before it was ready: {why}", why=reason.getErrorMessage())
            self.ready.callback(False)

    def give_up(self, why: str = f"it was not ready within {READY_TIMEOUT:.0f}s") -> None:
        """Stop waiting, and stop it (it would otherwise serve beside us, or after us, unsupervised)."""
        if self.ready.called:
            return
        log.error("stopping the new process: {why}", why=why)
        if self.transport is not None and self.transport.pid:
            self.transport.signalProcess("KILL")
        self.ready.callback(False)


def successor_argv(orig_argv: Sequence[str] | None = None) -> list[str]:
    """This process's own command line, run by this interpreter (``python -c``, ``twistd`` or
    ``python -m twisted`` alike), without a pidfile."""
    argv = [sys.executable, *list(sys.orig_argv if orig_argv is None else orig_argv)[1:]]
    if "ssebridge" in argv:
        # Our pidfile names us, alive: twistd would refuse to start beside it. The new process
        # writes none (twistd removes ours when we exit).
        argv.insert(argv.index("ssebridge"), "--pidfile=")
    return argv


def start_successor(
    reactor: Any, sockets: Mapping[tuple[int, int], socket.socket], environ: Mapping[str, str] | None = None
) -> Successor:
    """Start this command line again with ``sockets`` passed; return it (watch ``ready``)."""
    child_fds: dict[int, int | str] = {0: 0, 1: 1, 2: 2}
    described = []
    fd = 3
    for (listen, slot), sock in sorted(sockets.items()):
        child_fds[fd] = sock.fileno()
        described.append(f"{listen}:{slot}:{int(sock.family)}:{fd}")
        fd += 1
    ready_fd = fd
    child_fds[ready_fd] = "r"
    env = dict(os.environ if environ is None else environ)
    env[INHERIT_ENV] = ",".join(described)
    env[READY_ENV] = str(ready_fd)
    successor = Successor(ready_fd)
    argv = successor_argv()
    process = reactor.spawnProcess(successor, argv[0], argv, env=env, childFDs=child_fds)
    log.info("started the new process, pid {pid}; waiting until it is ready", pid=process.pid)
    timer = reactor.callLater(READY_TIMEOUT, successor.give_up)

    def done(ready: bool) -> bool:
        if timer.active():
            timer.cancel()
        return ready

    successor.ready.addCallback(done)
    return successor
