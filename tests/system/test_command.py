"""The README's commands beside a running instance: twistd's pidfile no longer refuses a check, and
``ssebridge run`` starts a second instance from the same directory (no pidfile unless asked for)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ssebridge.testing import RedisProcess, free_port
from tests.helpers import REPO, stop_process, twistd, wait_port


def _config(tmp_path: Path, name: str, port: int, redis: RedisProcess) -> Path:
    path = tmp_path / name
    path.write_text(
        f'listen = "tcp:{port}:interface=127.0.0.1"\nredis = "127.0.0.1:{redis.port}"\n'
        "[[route]]\nmatch = '^/events/(?P<c>[a-z]+)$'\naction = 'sse:${c}'\npublic = true\n"
    )
    return path


def _command(*args: str, cwd: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "ssebridge.runtime.command", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_check_and_run_beside_a_running_instance(tmp_path: Path, redis: RedisProcess) -> None:
    first_port, second_port = free_port(), free_port()
    first = _config(tmp_path, "first.toml", first_port, redis)
    # The running instance, started the way twistd's users do: its pidfile is ./twistd.pid.
    running = twistd("-n", "ssebridge", "--config", str(first), cwd=tmp_path)
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_port(first_port, proc=running)
        assert (tmp_path / "twistd.pid").read_text().strip() == str(running.pid)
        # The README's check, from the same directory, with no --pidfile=.
        check = twistd("-n", "ssebridge", "--config", str(first), "--check", cwd=tmp_path)
        out, err = check.communicate(timeout=30)
        assert check.returncode == 0, err
        assert b"is sound" in out and b"Another twistd server" not in err
        misspelled = tmp_path / "typo.toml"
        misspelled.write_text('metrics_listn = "tcp:9091"\n')
        check = twistd("-n", "ssebridge", "--config", str(misspelled), "--check", "--strict", cwd=tmp_path)
        out, err = check.communicate(timeout=30)
        assert check.returncode == 1 and b"did you mean 'metrics_listen'?" in err
        # The console script's check.
        check = _command("check", str(first), cwd=tmp_path)
        out, err = check.communicate(timeout=30)
        assert check.returncode == 0 and b"is sound" in out, err
        # A second instance from the same directory: ssebridge run writes no pidfile.
        second = _command(
            "run", "--config", str(_config(tmp_path, "second.toml", second_port, redis)), cwd=tmp_path
        )
        wait_port(second_port, proc=second)
        assert running.poll() is None
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=30)
        # The running instance's pidfile is its own still.
        assert (tmp_path / "twistd.pid").read_text().strip() == str(running.pid)
    finally:
        if second is not None and second.poll() is None:
            second.kill()
            second.communicate()
        stop_process(running)
