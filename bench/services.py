"""Starting and stopping what is benchmarked: a throw-away redis-server and the bridge under test.

Every process started here is put in its own session (so a Ctrl-C at the terminal reaches only the
benchmark, which then stops them in order), asks the kernel to SIGTERM it if the benchmark dies
(``PR_SET_PDEATHSIG``), and is registered with a ``Reaper`` that stops it on the way out, whatever
the way out is. Only processes started here are ever signalled, by their own pid or process group.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent exits, even by SIGKILL.

    Used as ``preexec_fn`` for redis-server and the bridge, and at the start of the load and publisher
    processes, so no part of a benchmark outlives it.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        pass


def _die_with_parent() -> None:
    die_with_parent(signal.SIGTERM)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Return once ``host:port`` accepts a TCP connection; raise if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepted on {host}:{port} within {timeout:.0f} s") from None
            time.sleep(0.1)


def _read_reply(f: BinaryIO) -> Any:
    """Read one RESP2 reply from a buffered socket file (strings, integers, errors, arrays)."""
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RuntimeError(f"Redis: {rest.decode('utf-8', 'replace')}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else f.read(size + 2)[:-2]
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_read_reply(f) for _ in range(size)]
    raise ConnectionError(f"unexpected RESP reply {line[:40]!r}")


def resp_command(host: str, port: int, *args: bytes, timeout: float = 5.0) -> Any:
    """Send one RESP command and return its decoded reply (PING, PUBSUB NUMSUB: nothing in the hot path)."""
    out = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection((host, port), timeout=timeout) as s, s.makefile("rb") as f:
        s.sendall(out)
        return _read_reply(f)


def numsub(host: str, port: int, channel: bytes) -> int:
    """How many subscribers Redis counts on ``channel`` (one per bridge process that has clients)."""
    reply = resp_command(host, port, b"PUBSUB", b"NUMSUB", channel)
    return int(reply[1]) if isinstance(reply, list) and len(reply) == 2 else 0


@dataclass
class Managed:
    """A started process, how to stop it gently, and how long to give it before SIGKILL."""

    name: str
    proc: subprocess.Popen[bytes]
    stop_timeout: float


class Reaper:
    """Stops every registered process (last started, first stopped); safe to call more than once."""

    def __init__(self) -> None:
        self.procs: list[Managed] = []
        self.callbacks: list[Callable[[], None]] = []

    def add(self, name: str, proc: subprocess.Popen[bytes], stop_timeout: float = 10.0) -> None:
        self.procs.append(Managed(name, proc, stop_timeout))

    def on_exit(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    def stop(self, name: str) -> None:
        """Stop one registered process now (e.g. the bridge before Redis)."""
        for managed in list(self.procs):
            if managed.name == name:
                _stop(managed)
                self.procs.remove(managed)

    def stop_all(self) -> None:
        while self.callbacks:
            try:
                self.callbacks.pop()()
            except Exception as e:  # a failing cleanup must not keep the others from running
                print(f"bench: cleanup error: {e}", file=sys.stderr)
        while self.procs:
            _stop(self.procs.pop())


def _stop(managed: Managed) -> None:
    """SIGTERM the process group of a process we started; SIGKILL it if it outlives its timeout."""
    proc = managed.proc
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(managed.stop_timeout)
    except subprocess.TimeoutExpired:
        print(f"bench: {managed.name} ignored SIGTERM for {managed.stop_timeout:.0f} s: SIGKILL",
              file=sys.stderr)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5.0)


def start_redis(reaper: Reaper, out_dir: Path, timeout: float = 10.0) -> tuple[str, int, int]:
    """Start a private ``redis-server`` (no persistence) on a free port; return host, port, pid."""
    port = free_port()
    argv = [
        "redis-server",
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(out_dir),
        "--logfile", str(out_dir / "redis.log"),
    ]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    reaper.add("redis-server", proc, stop_timeout=5.0)
    wait_for_port("127.0.0.1", port, timeout, proc)
    deadline = time.monotonic() + timeout
    while resp_command("127.0.0.1", port, b"PING") != b"PONG":
        if time.monotonic() > deadline:
            raise TimeoutError("redis-server does not answer PING")
        time.sleep(0.1)
    return "127.0.0.1", port, proc.pid


def write_bridge_config(path: Path, port: int, redis: str, workers: int, extra: list[str]) -> None:
    """The bridge's config, in the uWSGI ini syntax it accepts from the seed (stable across versions)."""
    lines = [
        "[uwsgi]",
        f"http-socket = 127.0.0.1:{port}",
        f"redis = {redis}",
        "route = ^/events/(.+)$ sse:$1",
    ]
    if workers > 1:
        lines.append(f"workers = {workers}")
    lines.extend(extra)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


DEFAULT_BRIDGE_CMD = "{python} -m twisted ssebridge --config {config}"


def start_bridge(
    reaper: Reaper,
    repo: Path,
    config: Path,
    port: int,
    log_path: Path,
    command: str = DEFAULT_BRIDGE_CMD,
    timeout: float = 30.0,
    stop_timeout: float = 20.0,
) -> subprocess.Popen[bytes]:
    """Start the bridge (``python -m twisted ssebridge``) with ``PYTHONPATH=<repo>``; wait until it listens.

    ``command`` is a template (``{python}``, ``{config}``, ``{port}``, ``{repo}``) so another build or a
    stand-in can be benchmarked the same way. Its output goes to ``log_path``.
    """
    argv = [
        part.format(python=sys.executable, config=config, port=port, repo=repo)
        for part in shlex.split(command)
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=str(config.parent),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    reaper.add("bridge", proc, stop_timeout=stop_timeout)
    try:
        wait_for_port("127.0.0.1", port, timeout, proc)
    except (RuntimeError, TimeoutError) as e:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
        message = f"bridge did not start: {e}\n--- {log_path} (tail) ---\n" + "\n".join(tail)
        raise RuntimeError(message) from None
    return proc
