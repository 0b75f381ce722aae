"""The worker pool's pure parts: which listeners workers can share, and each worker's metrics address."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from ssebridge.runtime.deathsig import launcher
from ssebridge.runtime.listeners import FIRST_FD, parse_listen, per_worker_endpoint


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
