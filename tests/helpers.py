"""Small waiting helpers shared by the integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


async def until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` on the reactor until it is true; fail after ``timeout`` seconds."""
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await sleep(0.02)
        waited += 0.02


# --- the bridge as a subprocess -------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
#: ``twistd`` run by this interpreter (``python -m twisted`` is the other runner, ``twist``).
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistd(*args: str, cwd: Path | None = None, **popen: Any) -> subprocess.Popen[bytes]:
    """Start ``twistd ARGS`` with this checkout importable (its plugin and package)."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([*TWISTD, *args], cwd=cwd, env=env, **popen)


def wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts on 127.0.0.1:``port``; fail if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"the process exited ({proc.returncode}) before listening") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {port}") from None
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_twistd(*args: str, cwd: Path, timeout: float = 30.0) -> tuple[int, bytes, bytes]:
    """Run ``twistd ARGS`` to its end: (status, stdout, stderr); killed if it outlives ``timeout``."""
    proc = twistd(*args, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def raw_request(port: int, data: bytes) -> bytes:
    """Send ``data`` to 127.0.0.1:``port`` on a plain socket; return all it answers until it closes.

    Blocking: from a reactor test, run it with ``deferToThread``.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        return reply


def port_of(service: Any) -> int:
    """The TCP port a started ``BridgeService`` listens on first."""
    return int(service.ports[0].getHost().port)
