"""The flask_auth example's configs (ini and TOML) with waitress run as their comments say: the app
sees the client's own address, not the bridge's; without ``--trusted-proxy``, waitress would not."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from ssebridge.config.model import load_config
from ssebridge.runtime.service import BridgeService
from ssebridge.testing import RedisProcess, free_port
from tests.helpers import EXAMPLES, port_of, serve_flask_example

FLASK_AUTH = EXAMPLES / "flask_auth"
#: What the examples tell users to run (checked against their text below).
TRUSTING = [
    "--trusted-proxy",
    "127.0.0.1",
    "--trusted-proxy-headers",
    "x-forwarded-for x-forwarded-proto x-forwarded-host",
]
#: A client address other than the bridge's: Linux routes all of 127/8 to loopback.
CLIENT = "127.0.0.2"


@pytest.fixture
def trusting_app() -> Iterator[str]:
    yield from serve_flask_example(*TRUSTING)


@pytest.fixture
def plain_app() -> Iterator[str]:
    yield from serve_flask_example()


def _example(name: str, tmp_path: Path, app_url: str, redis: RedisProcess) -> tuple[Path, int]:
    """The example config, as shipped but for its addresses (the test's free ports)."""
    text = (FLASK_AUTH / name).read_text()
    port = free_port()
    for shipped, here in (
        ("tcp:9090:", f"tcp:{port}:"),
        ("127.0.0.1:9090", f"127.0.0.1:{port}"),
        ("http://127.0.0.1:5000", app_url),
        ("127.0.0.1:6379", f"127.0.0.1:{redis.port}"),
    ):
        text = text.replace(shipped, here)
    assert str(port) in text and app_url in text
    if name.endswith(".ini"):
        # The ini names no Redis (the default, 127.0.0.1:6379, which tests never touch).
        text += f"redis = 127.0.0.1:{redis.port}\n"
    path = tmp_path / name
    path.write_text(text)
    return path, port


def _whoami(port: int) -> dict[str, object]:
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(CLIENT, 0)) as s:
        s.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    result: dict[str, object] = json.loads(body)
    return result


def test_the_examples_say_what_the_test_runs() -> None:
    for name in ("ssebridge.ini", "ssebridge.toml", "app.py"):
        # The command as one line: comment markers and continuation backslashes dropped.
        lines = [
            line.strip().lstrip(";#").rstrip("\\") for line in (FLASK_AUTH / name).read_text().splitlines()
        ]
        text = " ".join(" ".join(lines).split())
        assert f'--trusted-proxy 127.0.0.1 --trusted-proxy-headers "{TRUSTING[3]}" app:app' in text, name
    for name in ("ssebridge.ini", "ssebridge.toml"):
        config = load_config(FLASK_AUTH / name)
        assert config.forwarded is True and config.proxy == "http://127.0.0.1:5000"
        assert config.warnings == ()


@pytest.mark.parametrize("name", ["ssebridge.ini", "ssebridge.toml"])
@pytest_twisted.ensureDeferred
async def test_the_app_sees_the_client_address(
    name: str, tmp_path: Path, redis: RedisProcess, trusting_app: str
) -> None:
    path, _ = _example(name, tmp_path, trusting_app, redis)
    service = BridgeService(load_config(path))
    await service.startService()
    try:
        seen = await deferToThread(_whoami, port_of(service))
    finally:
        await service.stopService()
    assert seen == {"client": CLIENT, "user": None}


@pytest_twisted.ensureDeferred
async def test_without_trusted_proxy_the_app_sees_the_bridge(
    tmp_path: Path, redis: RedisProcess, plain_app: str
) -> None:
    """Why the examples name --trusted-proxy: waitress drops X-Forwarded-For from an untrusted peer."""
    path, _ = _example("ssebridge.ini", tmp_path, plain_app, redis)
    service = BridgeService(load_config(path))
    await service.startService()
    try:
        seen = await deferToThread(_whoami, port_of(service))
    finally:
        await service.stopService()
    assert seen["client"] == "127.0.0.1"
