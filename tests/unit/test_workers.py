"""The worker pool's pure parts: which listeners workers can share, and each worker's metrics address."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ssebridge.runtime.control import runs_in_foreground
from ssebridge.runtime.deathsig import launcher
from ssebridge.runtime.handoff import INHERIT_ENV, READY_ENV, inherited_sockets, report_ready, successor_argv
from ssebridge.runtime.listeners import FIRST_FD, parse_listen, per_worker_endpoint, same_address


@pytest.mark.parametrize(
    ("description", "index", "expected"),
    [
        ("tcp:9100:interface=127.0.0.1", 0, "tcp:9100:interface=127.0.0.1"),
        ("tcp:9100:interface=127.0.0.1", 3, "tcp:9103:interface=127.0.0.1"),
        ("tcp:interface=127.0.0.1:port=9100", 1, "tcp:interface=127.0.0.1:port=9101"),
        ("unix:address=/run/m.sock", 1, "unix:address=/run/m.sock.1"),
        ("unix:mode=660", 1, None),
        (r"tcp6:9100:interface=\:\:1", 1, r"tcp6:9101:interface=\:\:1"),
        ("unix:/run/ssebridge-metrics.sock", 2, "unix:/run/ssebridge-metrics.sock.2"),
        ("unix:/run/m.sock:mode=660", 1, "unix:/run/m.sock.1:mode=660"),
        ("systemd:domain=INET:index=1", 1, None),
    ],
)
def test_each_worker_gets_its_own_metrics_address(description: str, index: int, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="metrics"):
            per_worker_endpoint(description, index)
    else:
        assert per_worker_endpoint(description, index) == expected


def test_listeners_workers_can_share() -> None:
    tcp = parse_listen("tcp:9090:interface=127.0.0.1")
    assert (tcp.family, tcp.address, tcp.shared) == (socket.AF_INET, ("127.0.0.1", 9090), False)
    assert parse_listen("unix:/run/s.sock").shared
    activated = parse_listen("systemd:domain=INET:index=1")
    assert activated.inherited_fd == FIRST_FD + 1
    with pytest.raises(ValueError, match="ssl"):
        parse_listen("ssl:9443:privateKey=k.pem")


def test_the_mule_launcher_becomes_the_program_or_says_why_not(tmp_path: Path) -> None:
    """The launcher (deathsig.py, run as a script) execs the program in its own process."""
    executable, argv = launcher("/bin/sh", ["sh", "-c", "echo $$"])
    with subprocess.Popen(argv, executable=executable, stdout=subprocess.PIPE, text=True) as proc:
        out, _ = proc.communicate(timeout=30)
    # The program's pid is the launcher's: what the mule's supervisor spawned is what it signals.
    assert (proc.returncode, int(out)) == (0, proc.pid)
    missing = launcher(str(tmp_path / "nope"), ["nope"])
    failed = subprocess.run(
        missing[1], executable=missing[0], capture_output=True, text=True, timeout=30, check=False
    )
    assert failed.returncode == 127
    assert "cannot run" in failed.stderr and "Traceback" not in failed.stderr


# --- reload and upgrade: the pure parts -------------------------------------------------------------


def test_a_handed_over_socket_is_kept_only_where_the_config_still_listens(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert same_address(sock, parse_listen(f"tcp:{port}:interface=127.0.0.1"))
        assert not same_address(sock, parse_listen(f"tcp:{port + 1}:interface=127.0.0.1"))
        assert not same_address(sock, parse_listen(f"tcp:{port}"))  # 0.0.0.0: another socket
        assert not same_address(sock, parse_listen(f"unix:{tmp_path / 's.sock'}"))
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(path)
        unix.listen()
        assert same_address(unix, parse_listen(f"unix:{path}"))
        assert not same_address(unix, parse_listen(f"unix:{path}.2"))


def test_the_sockets_a_predecessor_passed_are_read_once_and_kept_out_of_children() -> None:
    with socket.socket() as a, socket.socket(socket.AF_INET6) as b:
        env = {
            INHERIT_ENV: f"0:0:{int(a.family)}:{os.dup(a.fileno())},0:1:{int(b.family)}:{os.dup(b.fileno())}"
        }
        found = inherited_sockets(env)
        assert found is not None and sorted(found) == [(0, 0), (0, 1)]
        assert found[(0, 1)].family == socket.AF_INET6
        assert INHERIT_ENV not in env  # workers and mules must not think they are successors
        for sock in found.values():
            sock.close()
    assert inherited_sockets({}) is None
    with pytest.raises(ValueError):
        inherited_sockets({INHERIT_ENV: "0:0:2"})


def test_ready_is_one_line_on_the_pipe_the_predecessor_named() -> None:
    read, write = os.pipe()
    env = {READY_ENV: str(write)}
    assert report_ready(env) and READY_ENV not in env
    assert os.read(read, 100) == b"ready\n"
    assert os.read(read, 100) == b""  # closed: the predecessor sees the end too
    os.close(read)
    assert not report_ready({})


def test_the_successor_runs_the_same_command_line_without_our_pidfile() -> None:
    argv = successor_argv(["python3", "-c", "run()", "-n", "--pidfile=x.pid", "ssebridge", "--config", "c"])
    assert argv == [
        sys.executable,
        "-c",
        "run()",
        "-n",
        "--pidfile=x.pid",
        "--pidfile=",
        "ssebridge",
        "--config",
        "c",
    ]


@pytest.mark.parametrize(
    ("argv", "foreground"),
    [
        (["twistd", "-n", "ssebridge"], True),
        (["twistd", "--nodaemon", "--pidfile=", "ssebridge"], True),
        (["twistd", "-no", "ssebridge"], True),
        (["twistd", "--pidfile=", "ssebridge", "-n"], False),  # the plugin's, not twistd's
        (["twistd", "ssebridge"], False),
        (["twistd", "--logger=x.n", "ssebridge"], False),
    ],
)
def test_an_upgrade_needs_twistd_in_the_foreground(argv: list[str], foreground: bool) -> None:
    assert runs_in_foreground(argv) is foreground
