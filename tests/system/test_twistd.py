"""``twistd ssebridge`` as a real subprocess: the seed's clock example, bad configs, workers, SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ssebridge.testing import EventStreamParser, RedisProcess, free_port
from tests.helpers import run_twistd, stop_process, twistd, wait_port


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


class Stream:
    """A blocking SSE reader (HTTP/1.0, so no chunking) for subprocess tests."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        self.parser = EventStreamParser()
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += self.sock.recv(4096)
        head, _, rest = buf.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ")[1])
        self.head = head
        self.parser.feed(rest)

    def events(self, n: int, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.parser.events) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.parser.events)} of {n} events")
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError("stream closed")
            self.parser.feed(chunk)
        return [e.data for e in self.parser.events[:n]]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def stop() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        stop_process(p)


SEED_INI = """[uwsgi]
; eventually use absolue path for the plugin if it is not in the current directory
plugin = sse_offload
; bind on http port 9090
http-socket = :{port}
; run clock.pl as a mule
mule = clock.py
; map requests to /clock to the html file
static-map = /clock=clock.html
; route requests to ^/whattimeisit to the sse engine subscribed to the 'clock' redis channel
route = ^/whattimeisit sse:clock
; enable 1 offload thread
offload-threads = 1
"""

PUBLISHER = """#!{python}
import socket, time
s = socket.create_connection(("127.0.0.1", {redis_port}))
while True:
    t = str(int(time.time() * 1000)).encode()
    s.sendall(b"*3\\r\\n$7\\r\\nPUBLISH\\r\\n$5\\r\\nclock\\r\\n$%d\\r\\n%s\\r\\n" % (len(t), t))
    s.recv(100)
    time.sleep(0.1)
"""


def test_seed_clock_example_runs_with_its_ini(tmp_path: Path, redis: RedisProcess, stop: list) -> None:  # type: ignore[type-arg]
    port = free_port()
    # The seed's ini, only the port changed; Redis is the default 127.0.0.1:6379 in the seed, so this test
    # points the default at its own server with one extra line.
    (tmp_path / "clock.ini").write_text(SEED_INI.format(port=port) + f"redis = 127.0.0.1:{redis.port}\n")
    (tmp_path / "clock.py").write_text(PUBLISHER.format(python=sys.executable, redis_port=redis.port))
    (tmp_path / "clock.html").write_text(
        "<div id='clock'></div><script>new EventSource('/whattimeisit')</script>"
    )
    proc = twistd("-n", "--pidfile=", "ssebridge", "--config", "clock.ini", cwd=tmp_path)
    stop.append(proc)
    wait_port(port)
    status, body = http_get(port, "/clock")
    assert status == 200 and b"EventSource" in body
    stream = Stream(port, "/whattimeisit")
    assert stream.status == 200 and b"text/event-stream" in stream.head
    values = stream.events(3)
    assert all(v.isdigit() for v in values) and values == sorted(values)
    assert redis.numsub("clock") == 1
    stream.close()
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    # The mule went with the service.
    assert redis.numsub("clock") == 0
    assert redis.command("CLIENT", "LIST").count(b"\n") <= 1


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("route = ^/(unclosed sse:x", "regex"),
        ("route = ^/x nosuch:x", "nosuch"),
        ("route = ^/x sse:", "channel"),
        ("route = ^/x sse:server=nowhere:99999,subscribe=x", "port"),
        ("http-socket = what:is:this", "what"),
    ],
)
def test_bad_config_exits_nonzero_with_one_line(tmp_path: Path, line: str, problem: str) -> None:
    (tmp_path / "bad.ini").write_text(f"[uwsgi]\nhttp-socket = :{free_port()}\n{line}\n")
    proc = twistd("-n", "--pidfile=", "ssebridge", "--config", "bad.ini", cwd=tmp_path)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, err.decode()
    assert lines[0].startswith("ssebridge: ") and "bad.ini:3:" in lines[0]
    assert problem in lines[0].lower()
    assert b"Traceback" not in out + err


@pytest.mark.parametrize(
    ("listen", "workers"),
    [
        ("tcp:{busy}:interface=127.0.0.1", 1),
        ("systemd:domain=INET:index=0", 1),
        ("tcp:{busy}:interface=127.0.0.1", 2),
    ],
    ids=["port in use", "no systemd socket", "port in use, workers"],
)
def test_a_listener_that_cannot_open_exits_nonzero_saying_why(
    tmp_path: Path, redis: RedisProcess, listen: str, workers: int
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        description = listen.format(busy=busy.getsockname()[1])
        (tmp_path / "c.toml").write_text(
            f'listen = "{description}"\nredis = "127.0.0.1:{redis.port}"\nworkers = {workers}\n'
        )
        status, out, err = run_twistd("-n", "--pidfile=", "ssebridge", "--config", "c.toml", cwd=tmp_path)
    assert status == 1
    text = (out + err).decode()
    assert "could not start: " in text
    assert "Traceback" not in text


def test_workers_with_an_app_that_does_not_load_exit_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("import nonexistent_module_for_this_test\n")
    (tmp_path / "w.ini").write_text(
        f"[uwsgi]\nhttp-socket = 127.0.0.1:{free_port()}\nwsgi-file = app.py\nworkers = 2\n"
    )
    status, out, err = run_twistd("-n", "--pidfile=", "ssebridge", "--config", "w.ini", cwd=tmp_path)
    assert status == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "nonexistent_module_for_this_test" in lines[0], err.decode()
    assert b"Traceback" not in out + err


def children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return set()
    return {int(p) for p in text.split()}


def test_workers_share_the_port_replace_a_dead_one_and_stop_together(
    tmp_path: Path,
    redis: RedisProcess,
    stop: list,  # type: ignore[type-arg]
) -> None:
    port = free_port()
    (tmp_path / "w.toml").write_text(
        f'listen = "tcp:{port}:interface=127.0.0.1"\nredis = "127.0.0.1:{redis.port}"\nworkers = 2\n'
        '[[route]]\nmatch = "^/s$"\naction = "sse:w"\n'
    )
    proc = twistd("-n", "--pidfile=", "ssebridge", "--config", "w.toml", cwd=tmp_path)
    stop.append(proc)
    wait_port(port)
    deadline = time.monotonic() + 15
    while len(children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = children(proc.pid)
    assert len(workers) == 2
    # Enough clients that both workers get some: each worker holds its own subscription.
    streams = [Stream(port, "/s") for _ in range(40)]
    assert redis.numsub("w") == 2
    redis.publish("w", "to all")
    assert all(s.events(1) == ["to all"] for s in streams)
    for s in streams:
        s.close()
    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = children(proc.pid)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.1)
    replaced = children(proc.pid)
    assert len(replaced) == 2 and victim not in replaced
    # The port kept answering meanwhile and still does.
    assert Stream(port, "/s").status == 200
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    for pid in replaced:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_workers_do_not_outlive_a_killed_parent(tmp_path: Path, redis: RedisProcess) -> None:
    port = free_port()
    (tmp_path / "w.toml").write_text(
        f'listen = "tcp:{port}:interface=127.0.0.1"\nredis = "127.0.0.1:{redis.port}"\nworkers = 2\n'
    )
    proc = twistd("-n", "--pidfile=", "ssebridge", "--config", "w.toml", cwd=tmp_path)
    try:
        wait_port(port, proc=proc)
        deadline = time.monotonic() + 15
        while len(children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = children(proc.pid)
        assert len(workers) == 2
    finally:
        proc.kill()  # SIGKILL: the parent cannot pass anything on
        proc.communicate(timeout=10)
    deadline = time.monotonic() + 15
    alive = set(workers)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = {pid for pid in alive if Path(f"/proc/{pid}").exists()}
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "workers kept running after their parent was killed"


def test_check_validates_without_binding(tmp_path: Path) -> None:
    port = free_port()
    good = tmp_path / "good.ini"
    good.write_text(f"[uwsgi]\nhttp-socket = :{port}\nroute = ^/x sse:x\nmaster = true\n")
    proc = twistd("-n", "--pidfile=", "ssebridge", "--config", str(good), "--check")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert b"is sound" in out
    assert b"unknown key 'master' ignored" in out
    # Nothing was bound: the port is still free.
    socket.socket().bind(("0.0.0.0", port))
    bad = tmp_path / "bad.ini"
    bad.write_text("[uwsgi]\nroute = ^/(x sse:a\nroute = ^/y nosuch:b\nheartbeat = soon\n")
    proc = twistd("-n", "--pidfile=", "ssebridge", "--config", str(bad), "--check")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    lines = err.decode().strip().splitlines()
    assert [line.split(":")[2] for line in lines[:3]] == ["2", "3", "4"]
    assert b"Traceback" not in err


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2], ids=["one process", "worker pool"])
def test_mules_do_not_outlive_a_killed_parent(tmp_path: Path, redis: RedisProcess, workers: int) -> None:
    """Defect 8: SIGKILL to the parent used to orphan the mule (a restart then ran two publishers)."""
    port = free_port()
    (tmp_path / "mule.py").write_text(
        "import os, pathlib, time\npathlib.Path('mule.pid').write_text(str(os.getpid()))\ntime.sleep(600)\n"
    )
    (tmp_path / "m.toml").write_text(
        f'listen = "tcp:{port}:interface=127.0.0.1"\nredis = "127.0.0.1:{redis.port}"\nworkers = {workers}\n'
        '[[mule]]\nscript = "mule.py"\n'
    )
    proc = twistd("-n", "--pidfile=", "ssebridge", "--config", "m.toml", cwd=tmp_path)
    mule = 0
    try:
        wait_port(port, proc=proc)
        pidfile = tmp_path / "mule.pid"
        _wait_for(lambda: pidfile.exists() and bool(pidfile.read_text()), "the mule to start")
        mule = int(pidfile.read_text())
        assert not _gone(mule)
    finally:
        proc.kill()  # SIGKILL: the parent can neither stop its mule nor pass anything on
        proc.communicate(timeout=10)
    try:
        _wait_for(lambda: _gone(mule), f"mule pid {mule} to exit after its parent was killed")
    finally:
        if mule and not _gone(mule):
            os.kill(mule, signal.SIGKILL)


def test_workers_ignore_sighup(tmp_path: Path, redis: RedisProcess, stop: list) -> None:  # type: ignore[type-arg]
    """Defect 8: SIGHUP killed a worker (its streams cut with no retry hint); the parent owns reload."""
    port, metrics = free_port(), free_port()
    while metrics + 1 == port or not _port_free(metrics + 1):
        metrics = free_port()
    (tmp_path / "w.toml").write_text(
        f'listen = "tcp:{port}:interface=127.0.0.1"\nredis = "127.0.0.1:{redis.port}"\nworkers = 2\n'
        f'metrics_listen = "tcp:{metrics}:interface=127.0.0.1"\n'
    )
    proc = twistd("-n", "--pidfile=", "ssebridge", "--config", "w.toml", cwd=tmp_path)
    stop.append(proc)
    for p in (port, metrics, metrics + 1):
        wait_port(p, proc=proc)
    workers = children(proc.pid)
    assert len(workers) == 2
    for pid in workers:
        os.kill(pid, signal.SIGHUP)
    # Each worker answers on its own metrics port after the signal was delivered (a process runs
    # nothing before its pending signals), so both survived it; and none was replaced.
    assert http_get(metrics, "/livez")[0] == 200
    assert http_get(metrics + 1, "/livez")[0] == 200
    assert children(proc.pid) == workers


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("workers", [1, 2], ids=["one process", "worker pool"])
def test_a_systemd_listener_without_its_socket_names_the_setting(
    tmp_path: Path, redis: RedisProcess, workers: int
) -> None:
    """Defect 9: started without its socket unit, it said ``list index out of range`` (one process) or
    adopted whatever fd 3 was (a pool); --check cannot know, so start-up says it in one line."""
    (tmp_path / "s.toml").write_text(
        f'listen = "systemd:domain=INET:index=0"\nredis = "127.0.0.1:{redis.port}"\nworkers = {workers}\n'
    )
    status, _, _ = run_twistd("-n", "--pidfile=", "ssebridge", "--config", "s.toml", "--check", cwd=tmp_path)
    assert status == 0
    status, out, err = run_twistd("-n", "--pidfile=", "ssebridge", "--config", "s.toml", cwd=tmp_path)
    assert status == 1
    text = (out + err).decode()
    lines = [line for line in text.splitlines() if "could not start" in line]
    assert len(lines) == 1, text
    named = "could not start: listen 'systemd:domain=INET:index=0': systemd passed no listening socket"
    assert named in lines[0]
    assert "index out of range" not in text and "Traceback" not in text
