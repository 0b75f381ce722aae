"""Mules: publisher processes run beside the service, as uWSGI's ``mule = clock.pl`` does.

``MuleService`` runs one ``MuleSpec`` as a child process and keeps it running: its stdout and stderr
lines go to twisted.logger, an exit is followed by a restart after an exponential backoff with
jitter (so a crashing mule neither spins the CPU nor restarts in lockstep with its siblings), and
stopping the service stops the child (SIGTERM, then SIGKILL after a grace period).

A mule that cannot be started at all (missing executable, bad working directory) is logged and
retried with the same backoff; nothing here raises into the reactor.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ssebridge.config.schema import MuleSpec
from ssebridge.runtime.backoff import backoff_delay
from ssebridge.runtime.deathsig import launcher

__all__ = ["MuleReactor", "MuleService", "backoff_delay"]

log = Logger()

#: A line longer than this (without a newline) is logged in pieces, so a mule writing binary
#: junk or one endless line cannot grow our buffer without bound.
MAX_LINE = 64 * 1024


class _DelayedCall(Protocol):
    def cancel(self) -> None: ...

    def active(self) -> bool: ...


class _ProcessTransport(Protocol):
    pid: int | None

    def signalProcess(self, signalID: str | int) -> None: ...

    def closeStdin(self) -> None: ...


class MuleReactor(Protocol):
    """What ``MuleService`` needs of a reactor: time, timers and processes.

    A typing Protocol rather than Twisted's zope interfaces, which mypy cannot check without a
    plugin. The global reactor provides it; tests pass a ``Clock`` with a fake ``spawnProcess``.
    """

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any
    ) -> _DelayedCall: ...

    def spawnProcess(
        self,
        processProtocol: Any,
        executable: bytes | str,
        args: Sequence[bytes | str],
        env: Mapping[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> _ProcessTransport: ...


def _find_executable(argv0: str, cwd: Path | None, env: Mapping[str, str]) -> str | None:
    """Where ``argv0`` is, as the child would find it: relative to ``cwd`` if it has a slash,
    else on ``PATH``. ``None`` if it is not an executable file."""
    if os.sep in argv0:
        candidate = Path(argv0) if cwd is None or os.path.isabs(argv0) else cwd / argv0
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return os.fspath(candidate)
        return None
    return shutil.which(argv0, path=env.get("PATH", os.defpath))


class _MuleProtocol(ProcessProtocol):
    """One run of the child: splits its output into lines for the log and reports its exit.

    The exit is reported on ``processExited`` (the child is reaped), not ``processEnded`` (also
    every pipe closed): a grandchild the mule left behind holding stdout open must not delay a
    restart or a shutdown. Output still arriving after that is logged under the old pid.
    """

    def __init__(self, service: MuleService) -> None:
        self.service = service
        self.pid: int | None = None
        self.buffers: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def connectionMade(self) -> None:
        transport = cast(_ProcessTransport, self.transport)
        self.pid = transport.pid
        # A mule has no input; EOF at once keeps one that reads stdin from waiting forever.
        transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._received("stdout", data)

    def errReceived(self, data: bytes) -> None:
        self._received("stderr", data)

    def _received(self, stream: str, data: bytes) -> None:
        buffered = self.buffers[stream] + data
        *lines, rest = buffered.split(b"\n")
        while len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        self.buffers[stream] = rest
        for line in lines:
            self.service._line(stream, line, self.pid)

    def processExited(self, reason: Failure) -> None:
        self.service._ended(self, reason)

    def processEnded(self, reason: Failure) -> None:
        # Every pipe is closed: what is left is a last line without a newline.
        for stream, rest in self.buffers.items():
            if rest:
                self.service._line(stream, rest, self.pid)
        self.buffers = {"stdout": b"", "stderr": b""}


class MuleService(Service):
    """Supervise one mule process for as long as the service runs.

    - ``startService`` spawns ``spec.argv`` (executable looked up on ``PATH`` when it has no
      slash, else relative to ``spec.cwd``), environment inherited, in ``spec.cwd``; on Linux it
      gets SIGTERM when this process dies, however it dies (``deathsig``).
    - Each stdout/stderr line is logged: ``mule {name} said: {line}`` with ``stream`` and
      ``pid`` fields (stdout at info, stderr at warn).
    - When it exits, or cannot be spawned, it is restarted after ``backoff_delay`` (``initial``
      doubling to ``maximum``, ``±jitter``); a run that lasted ``stable_after`` seconds resets
      the backoff, so a mule that crashes once a day restarts at once.
    - ``stopService`` sends SIGTERM, SIGKILL after ``kill_timeout`` seconds, and returns a
      Deferred that fires once the child is gone (or, if even SIGKILL is not answered within
      ``kill_timeout`` more, gives up with an error in the log so shutdown never hangs).

    The service's ``name`` is left for its parent to set; ``label`` names the mule in logs.
    """

    def __init__(
        self,
        spec: MuleSpec,
        *,
        label: str | None = None,
        reactor: MuleReactor | None = None,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.2,
        stable_after: float = 30.0,
        kill_timeout: float = 5.0,
        env: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not spec.argv:
            raise ValueError("a mule needs a command (MuleSpec.argv is empty)")
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = cast(MuleReactor, global_reactor)
        self.spec = spec
        self.label = label if label is not None else Path(spec.argv[0]).name
        self.reactor = reactor
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.factor = factor
        self.jitter = jitter
        self.stable_after = stable_after
        self.kill_timeout = kill_timeout
        #: Environment overrides on top of ``os.environ`` (read at each spawn).
        self.env: dict[str, str] = dict(env or {})
        self.rng = rng or random.Random()

        #: Restarts since the last stable run; drives the backoff.
        self.failures = 0
        #: Number of successful spawns so far (for tests and status pages).
        self.spawns = 0
        self._protocol: _MuleProtocol | None = None
        self._transport: _ProcessTransport | None = None
        self._started_at = 0.0
        self._restart_call: _DelayedCall | None = None
        self._kill_call: _DelayedCall | None = None
        self._give_up_call: _DelayedCall | None = None
        self._gone_waiters: list[Deferred[None]] = []

    # -- public state ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The running child's pid, or ``None`` between runs."""
        return self._transport.pid if self._transport is not None else None

    # -- Service -----------------------------------------------------------------------------

    def startService(self) -> None:
        """Start the mule now (or, if a previous run is still being stopped, once it is gone)."""
        super().startService()  # type: ignore[no-untyped-call]
        self.failures = 0
        if self._protocol is None:
            self._spawn()
        # Otherwise _ended() sees self.running and restarts it.

    def stopService(self) -> Deferred[None]:
        """Stop restarting; SIGTERM the child, SIGKILL it after ``kill_timeout``.

        The Deferred fires when the child is gone. It never fails: twistd would swallow the
        error, so any problem is logged here instead.
        """
        try:
            super().stopService()  # type: ignore[no-untyped-call]
            self._cancel_restart()
            if self._protocol is None:
                return succeed(None)
            gone: Deferred[None] = Deferred()
            self._gone_waiters.append(gone)
            if self._kill_call is None:
                log.info("mule {name}: stopping pid {pid} (SIGTERM)", name=self.label, pid=self.pid)
                self._signal("TERM")
                self._kill_call = self.reactor.callLater(self.kill_timeout, self._kill)
            return gone
        except Exception:
            log.failure("mule {name}: error while stopping", name=self.label)
            return succeed(None)

    # -- running the child -------------------------------------------------------------------

    def _spawn(self) -> None:
        self._restart_call = None
        if not self.running:
            return
        env = {**os.environ, **self.env}
        argv = self.spec.argv
        cwd = self.spec.cwd
        if cwd is not None and not cwd.is_dir():
            log.error(
                "mule {name}: cannot start {argv!r}: working directory {cwd} does not exist",
                name=self.label,
                argv=argv,
                cwd=os.fspath(cwd),
            )
            self._schedule_restart()
            return
        executable = _find_executable(argv[0], cwd, env)
        if executable is None:
            log.error(
                "mule {name}: cannot start {argv!r}: executable {executable!r} not found or not executable",
                name=self.label,
                argv=argv,
                executable=argv[0],
                cwd=os.fspath(cwd) if cwd is not None else None,
            )
            self._schedule_restart()
            return
        protocol = _MuleProtocol(self)
        # Through the launcher, the mule dies with this process even if it is SIGKILLed: no orphan
        # keeps publishing beside the next run's mule.
        run, run_argv = launcher(executable, argv)
        try:
            transport = self.reactor.spawnProcess(
                protocol,
                run,
                run_argv,
                env=env,
                path=os.fspath(cwd) if cwd is not None else None,
                childFDs={0: "w", 1: "r", 2: "r"},
            )
        except Exception as exc:
            log.failure(
                "mule {name}: cannot start {argv!r}: {error}", name=self.label, argv=argv, error=str(exc)
            )
            self._schedule_restart()
            return
        self._protocol = protocol
        self._transport = transport
        self._started_at = self.reactor.seconds()
        self.spawns += 1
        log.info("mule {name}: started {argv!r} as pid {pid}", name=self.label, argv=argv, pid=transport.pid)

    def _line(self, stream: str, raw: bytes, pid: int | None) -> None:
        line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
        emit = log.info if stream == "stdout" else log.warn
        emit("mule {name} said: {line}", name=self.label, line=line, stream=stream, pid=pid)

    def _ended(self, protocol: _MuleProtocol, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        pid = protocol.pid
        ran_for = self.reactor.seconds() - self._started_at
        self._protocol = None
        self._transport = None
        for call in (self._kill_call, self._give_up_call):
            if call is not None and call.active():
                call.cancel()
        self._kill_call = self._give_up_call = None

        value = reason.value
        status: int | None = getattr(value, "exitCode", None)
        signal: int | None = getattr(value, "signal", None)
        if not isinstance(value, ProcessDone | ProcessTerminated):
            level = log.error
        elif isinstance(value, ProcessDone) or not self.running:
            # A clean exit, or the end we asked for: nothing to worry about.
            level = log.info
        else:
            level = log.warn
        level(
            "mule {name}: pid {pid} exited (status {status}, signal {signal}) after {ran_for:.1f}s",
            name=self.label,
            pid=pid,
            status=status,
            signal=signal,
            ran_for=ran_for,
        )

        waiters, self._gone_waiters = self._gone_waiters, []
        for waiter in waiters:
            waiter.callback(None)

        if self.running:
            if ran_for >= self.stable_after:
                self.failures = 0
            self._schedule_restart()

    def _schedule_restart(self) -> None:
        if not self.running or self._restart_call is not None:
            return
        delay = backoff_delay(
            self.failures,
            initial=self.initial_delay,
            maximum=self.max_delay,
            factor=self.factor,
            jitter=self.jitter,
            rng=self.rng,
        )
        self.failures += 1
        log.info(
            "mule {name}: restarting in {delay:.2f}s", name=self.label, delay=delay, failures=self.failures
        )
        self._restart_call = self.reactor.callLater(delay, self._spawn)

    def _cancel_restart(self) -> None:
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        self._restart_call = None

    def _signal(self, name: str) -> None:
        if self._transport is None:
            return
        try:
            self._transport.signalProcess(name)
        except ProcessExitedAlready:
            # It is already gone; processEnded is on its way and will fire the waiters.
            pass

    def _kill(self) -> None:
        self._kill_call = None
        try:
            log.warn(
                "mule {name}: pid {pid} still running {timeout}s after SIGTERM; sending SIGKILL",
                name=self.label,
                pid=self.pid,
                timeout=self.kill_timeout,
            )
            self._signal("KILL")
        except Exception:
            log.failure("mule {name}: could not SIGKILL pid {pid}", name=self.label, pid=self.pid)
        self._give_up_call = self.reactor.callLater(self.kill_timeout, self._give_up)

    def _give_up(self) -> None:
        self._give_up_call = None
        log.error(
            "mule {name}: pid {pid} did not exit after SIGKILL; no longer waiting for it",
            name=self.label,
            pid=self.pid,
        )
        waiters, self._gone_waiters = self._gone_waiters, []
        for waiter in waiters:
            waiter.callback(None)
