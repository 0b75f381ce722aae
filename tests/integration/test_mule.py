"""MuleService with real child processes, plus its backoff arithmetic on a fake clock.

The real-process tests run small Python scripts written into tmp_path: they record each start in a
file, then exit, sleep, or ignore SIGTERM. Every wait is bounded, and every test stops its service.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from ssebridge.config.model import MuleSpec
from ssebridge.runtime.mules import MuleReactor, MuleService, backoff_delay

TIMEOUT = 10.0


# --- helpers -------------------------------------------------------------------------------------------


@implementer(ILogObserver)
class _Events:
    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == "ssebridge.runtime.mules":
            self.events.append(event)

    def texts(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def said(self) -> list[tuple[str, str]]:
        return [(e["stream"], e["line"]) for e in self.events if "line" in e]


@pytest.fixture
def events() -> Iterator[_Events]:
    observer = _Events()
    globalLogPublisher.addObserver(observer)
    try:
        yield observer
    finally:
        globalLogPublisher.removeObserver(observer)


def script(tmp_path: Path, body: str) -> tuple[str, ...]:
    """A Python mule: ``body`` runs after it appended its pid to ``starts`` in its cwd."""
    path = tmp_path / "mule.py"
    path.write_text(
        "import os, signal, sys, time\n"
        "with open('starts', 'a') as f:\n"
        "    f.write(f'{os.getpid()}\\n')\n" + body
    )
    return (sys.executable, "-u", str(path))


def starts(tmp_path: Path) -> list[int]:
    try:
        return [int(line) for line in (tmp_path / "starts").read_text().split()]
    except FileNotFoundError:
        return []


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.02, lambda: None)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def stop(service: MuleService, timeout: float = TIMEOUT) -> float:
    """Stop the service; return how long the Deferred took to fire."""
    began = time.monotonic()
    await service.stopService().addTimeout(timeout, reactor)
    return time.monotonic() - began


# --- real processes ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_output_lines_are_logged_and_stop_kills_the_child(tmp_path: Path, events: _Events) -> None:
    argv = script(
        tmp_path,
        "print('hello from stdout')\n"
        "print('caf\\u00e9 on stderr', file=sys.stderr)\n"
        "sys.stdout.write('no newline yet'); sys.stdout.flush()\n"
        "time.sleep(60)\n",
    )
    service = MuleService(MuleSpec(argv, cwd=tmp_path), label="sleeper", kill_timeout=5.0)
    service.startService()
    try:
        await wait_for(lambda: len(starts(tmp_path)) == 1, "the mule to start")
        await wait_for(lambda: len(events.said()) >= 2, "its output")
        pid = starts(tmp_path)[0]
        assert service.pid == pid
        assert alive(pid)
    finally:
        took = await stop(service)
    assert took < 4.0, "SIGTERM alone should have stopped it"
    assert not alive(pid)
    assert service.pid is None
    # The partial last line is flushed once the pipes close (possibly just after the exit).
    await wait_for(lambda: ("stdout", "no newline yet") in events.said(), "the last partial line")
    said = events.said()
    assert ("stdout", "hello from stdout") in said
    assert ("stderr", "caf\u00e9 on stderr") in said
    hello = next(e for e in events.events if e.get("line") == "hello from stdout")
    assert hello["name"] == "sleeper" and hello["pid"] == pid
    assert formatEvent(hello) == "mule sleeper said: hello from stdout"
    await deferLater(reactor, 0.3, lambda: None)
    assert len(starts(tmp_path)) == 1, "a stopped mule must not be restarted"


@pytest_twisted.ensureDeferred
async def test_exiting_mule_is_restarted_with_backoff(tmp_path: Path, events: _Events) -> None:
    argv = script(tmp_path, "sys.exit(3)\n")
    service = MuleService(
        MuleSpec(argv, cwd=tmp_path), initial_delay=0.05, max_delay=0.2, jitter=0.0, stable_after=30.0
    )
    service.startService()
    try:
        await wait_for(lambda: len(starts(tmp_path)) >= 4, "three restarts")
    finally:
        await stop(service)
    pids = starts(tmp_path)
    assert len(set(pids)) == len(pids), "each restart is a new process"
    assert all(not alive(pid) for pid in pids)
    assert service.failures >= 3
    texts = events.texts()
    assert any("exited (status 3" in t for t in texts)
    assert any("restarting in 0.05s" in t for t in texts)
    assert any("restarting in 0.10s" in t for t in texts)
    count = len(starts(tmp_path))
    await deferLater(reactor, 0.4, lambda: None)
    assert len(starts(tmp_path)) == count, "no restart after stopService"


@pytest_twisted.ensureDeferred
async def test_a_grandchild_holding_stdout_does_not_delay_restart_or_stop(tmp_path: Path) -> None:
    # The mule leaves a grandchild with our stdout pipe behind, then exits: the exit alone
    # must drive the restart and the stop, not the pipe closing.
    argv = script(
        tmp_path,
        "import subprocess\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "with open('grandchildren', 'a') as f:\n"
        "    f.write(f'{child.pid}\\n')\n"
        "if len(open('starts').read().split()) < 2:\n"
        "    sys.exit(0)\n"
        "time.sleep(60)\n",
    )
    service = MuleService(MuleSpec(argv, cwd=tmp_path), initial_delay=0.05, jitter=0.0, kill_timeout=5.0)
    service.startService()
    try:
        await wait_for(lambda: len(starts(tmp_path)) == 2, "a restart while the grandchild lives")
        await wait_for(lambda: service.pid == starts(tmp_path)[1], "the second run to be current")
    finally:
        took = await stop(service)
        for pid in (int(p) for p in (tmp_path / "grandchildren").read_text().split()):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    assert took < 4.0, "stop waited for the pipe instead of the process"
    assert not alive(starts(tmp_path)[1])


@pytest_twisted.ensureDeferred
async def test_sigterm_ignored_means_sigkill(tmp_path: Path, events: _Events) -> None:
    argv = script(
        tmp_path,
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready')\ntime.sleep(60)\n",
    )
    service = MuleService(MuleSpec(argv, cwd=tmp_path), kill_timeout=0.5)
    service.startService()
    try:
        await wait_for(lambda: ("stdout", "ready") in events.said(), "the mule to ignore SIGTERM")
        pid = starts(tmp_path)[0]
    finally:
        took = await stop(service)
    assert 0.4 < took < 4.0
    assert not alive(pid)
    assert any("sending SIGKILL" in t for t in events.texts())


@pytest_twisted.ensureDeferred
async def test_missing_executable_is_logged_and_retried(tmp_path: Path, events: _Events) -> None:
    service = MuleService(
        MuleSpec(("no-such-mule-executable-xyz", "--flag")), initial_delay=0.05, max_delay=0.05, jitter=0.0
    )
    service.startService()
    try:
        await wait_for(
            lambda: sum("not found" in t for t in events.texts()) >= 3, "three failed attempts to start"
        )
        assert service.pid is None
        assert service.spawns == 0
    finally:
        took = await stop(service)
    assert took < 1.0
    failed = next(e for e in events.events if "not found" in formatEvent(e))
    assert failed["executable"] == "no-such-mule-executable-xyz"


@pytest_twisted.ensureDeferred
async def test_missing_cwd_is_logged_and_retried(tmp_path: Path, events: _Events) -> None:
    service = MuleService(
        MuleSpec((sys.executable, "-c", "pass"), cwd=tmp_path / "gone"),
        initial_delay=0.05,
        max_delay=0.05,
        jitter=0.0,
    )
    service.startService()
    try:
        await wait_for(lambda: sum("does not exist" in t for t in events.texts()) >= 2, "two failed attempts")
    finally:
        await stop(service)


@pytest_twisted.ensureDeferred
async def test_relative_executable_resolved_against_cwd(tmp_path: Path) -> None:
    mule = tmp_path / "run-me.sh"
    mule.write_text("#!/bin/sh\necho $$ >> starts\nexec sleep 60\n")
    mule.chmod(0o755)
    service = MuleService(MuleSpec(("./run-me.sh",), cwd=tmp_path))
    service.startService()
    try:
        await wait_for(lambda: len(starts(tmp_path)) == 1, "the shell mule to start")
    finally:
        await stop(service)
    assert not alive(starts(tmp_path)[0])


@pytest_twisted.ensureDeferred
async def test_stop_then_start_again(tmp_path: Path) -> None:
    argv = script(tmp_path, "time.sleep(60)\n")
    service = MuleService(MuleSpec(argv, cwd=tmp_path))
    service.startService()
    await wait_for(lambda: len(starts(tmp_path)) == 1, "first start")
    await stop(service)
    service.startService()
    try:
        await wait_for(lambda: len(starts(tmp_path)) == 2, "second start")
    finally:
        await stop(service)
    assert not any(alive(pid) for pid in starts(tmp_path))


# --- backoff and failure paths on a fake reactor --------------------------------------------------------


class _FakeTransport:
    def __init__(self, pid: int, fail_signal: bool = False) -> None:
        self.pid: int | None = pid
        self.signals: list[str | int] = []
        self.fail_signal = fail_signal

    def signalProcess(self, signalID: str | int) -> None:
        if self.fail_signal:
            raise RuntimeError("signal delivery exploded")
        self.signals.append(signalID)

    def closeStdin(self) -> None:
        pass


class _FakeReactor(Clock):
    """A Clock that records spawnProcess calls instead of forking."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, _FakeTransport]] = []
        self.fail_signal = False

    def spawnProcess(self, processProtocol: Any, executable: Any, args: Any, **kwargs: Any) -> _FakeTransport:
        transport = _FakeTransport(1000 + len(self.spawned), self.fail_signal)
        processProtocol.makeConnection(transport)
        self.spawned.append((processProtocol, transport))
        return transport

    def end(self, code: int = 1) -> None:
        protocol, transport = self.spawned[-1]
        transport.pid = None
        reason = ProcessDone(0) if code == 0 else ProcessTerminated(exitCode=code)
        protocol.processExited(Failure(reason))
        protocol.processEnded(Failure(reason))


def fake_service(fake: _FakeReactor, **kwargs: Any) -> MuleService:
    options: dict[str, Any] = {"initial_delay": 0.5, "max_delay": 30.0, "jitter": 0.0, "stable_after": 30.0}
    options.update(kwargs)
    return MuleService(MuleSpec((sys.executable, "-c", "pass")), reactor=cast(MuleReactor, fake), **options)


def test_backoff_doubles_caps_and_resets_after_a_stable_run() -> None:
    fake = _FakeReactor()
    service = fake_service(fake)
    service.startService()
    assert len(fake.spawned) == 1
    waits = []
    for _ in range(9):
        fake.advance(1.0)
        fake.end(1)
        (call,) = fake.getDelayedCalls()
        waits.append(round(call.getTime() - fake.seconds(), 3))
        fake.advance(call.getTime() - fake.seconds())
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert len(fake.spawned) == 10
    # This run lasts past stable_after: the next restart is quick again.
    fake.advance(31.0)
    fake.end(1)
    (call,) = fake.getDelayedCalls()
    assert call.getTime() - fake.seconds() == pytest.approx(0.5)
    call.cancel()
    service.running = False


def test_jitter_stays_within_bounds() -> None:
    rng = random.Random(7)
    for failures in range(12):
        nominal = min(30.0, 0.5 * 2**failures)
        delay = backoff_delay(failures, initial=0.5, maximum=30.0, jitter=0.2, rng=rng)
        assert nominal * 0.8 <= delay <= min(30.0, nominal * 1.2)
    assert backoff_delay(10_000, initial=0.5, maximum=30.0) == 30.0


def test_stop_escalates_to_sigkill_then_gives_up_without_hanging() -> None:
    fake = _FakeReactor()
    service = fake_service(fake, kill_timeout=3.0)
    service.startService()
    _, transport = fake.spawned[-1]
    done: Deferred[None] = service.stopService()
    fired: list[object] = []
    done.addBoth(fired.append)
    assert transport.signals == ["TERM"]
    fake.advance(3.0)
    assert transport.signals == ["TERM", "KILL"]
    assert not fired
    fake.advance(3.0)
    assert fired == [None]
    assert not fake.getDelayedCalls()


def test_exit_during_stop_fires_and_cancels_the_kill_timer() -> None:
    fake = _FakeReactor()
    service = fake_service(fake)
    service.startService()
    fired: list[object] = []
    service.stopService().addBoth(fired.append)
    fake.end(0)
    assert fired == [None]
    assert not fake.getDelayedCalls()
    assert len(fake.spawned) == 1


def test_error_in_stop_service_is_logged_not_raised(events: _Events) -> None:
    fake = _FakeReactor()
    fake.fail_signal = True
    service = fake_service(fake)
    service.startService()
    fired: list[object] = []
    service.stopService().addBoth(fired.append)
    assert fired == [None]
    failures = [e for e in events.events if e.get("log_failure") is not None]
    assert failures and "error while stopping" in formatEvent(failures[0])
    for call in fake.getDelayedCalls():
        call.cancel()


def test_empty_argv_is_refused() -> None:
    with pytest.raises(ValueError):
        MuleService(MuleSpec(()))
