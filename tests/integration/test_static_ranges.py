"""Range requests on static files over real HTTP: one span at most, bounded bytes, never a hang.

The issue's reproductions (twisted.web's multi-range producer hung or sent 209.7 MB) are sent
verbatim on raw sockets; each must come back complete, with the connection closed, within a timeout.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.http import datetimeToString
from twisted.web.server import Site

from ssebridge.config.model import StaticMap
from ssebridge.http.static import StaticFiles
from tests.helpers import raw_exchange, sleep

TIMEOUT = 15.0
SIX = b"abcdef"
MIB = 1024 * 1024


@pytest.fixture
def files(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "six.txt").write_bytes(SIX)
    (root / "big.bin").write_bytes(bytes(range(256)) * 255 + bytes(120))  # 65,400 bytes
    (root / "mib.bin").write_bytes(os.urandom(MIB))
    (root / "empty.txt").write_bytes(b"")
    return root


@pytest.fixture
def server(files: Path) -> Iterator[int]:
    port = reactor.listenTCP(0, Site(StaticFiles([StaticMap("/s", files)])), interface="127.0.0.1")
    try:
        yield port.getHost().port
    finally:
        pytest_twisted.blockon(port.stopListening())


async def exchange(port: int, path: bytes, *headers: bytes, method: bytes = b"GET") -> bytes:
    """One request with ``Connection: close``; everything the server sent until it closed."""
    head = b"\r\n".join(
        [method + b" " + path + b" HTTP/1.1", b"Host: localhost", b"Connection: close", *headers]
    )
    return await raw_exchange(port, head + b"\r\n\r\n", TIMEOUT)


def parse(response: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(b" ")[1]), headers, body


# --- the reproductions -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_overlapping_ranges_on_65400_bytes_complete(server: int, files: Path) -> None:
    data = (files / "big.bin").read_bytes()
    status, headers, body = parse(await exchange(server, b"/s/big.bin", b"Range: bytes=0-65399,0-0"))
    assert status == 206
    assert headers[b"content-range"] == b"bytes 0-65399/65400"
    assert headers[b"content-length"] == b"65400"
    assert body == data


@pytest_twisted.ensureDeferred
async def test_700_ranges_on_6_bytes_complete(server: int) -> None:
    ranges = b",".join([b"0-0"] * 700)
    status, headers, body = parse(await exchange(server, b"/s/six.txt", b"Range: bytes=" + ranges))
    assert (status, headers[b"content-range"], body) == (206, b"bytes 0-0/6", b"a")


@pytest_twisted.ensureDeferred
async def test_200_open_ranges_on_1_mib_send_the_file_once(server: int, files: Path) -> None:
    ranges = b",".join([b"0-"] * 200)
    response = await exchange(server, b"/s/mib.bin", b"Range: bytes=" + ranges)
    status, headers, body = parse(response)
    assert status == 206
    assert headers[b"content-range"] == b"bytes 0-1048575/1048576"
    assert body == (files / "mib.bin").read_bytes()
    # Before: 209.7 MB. Now the file once plus the headers.
    print(f"\n200 ranges '0-' on 1 MiB: {len(response)} bytes sent")
    assert len(response) < MIB + 1024


@pytest_twisted.ensureDeferred
async def test_disjoint_ranges_get_the_whole_file(server: int, files: Path) -> None:
    many = b",".join(b"%d-%d" % (i, i) for i in range(0, 60000, 2))  # 30,000 one-byte ranges
    response = await exchange(server, b"/s/big.bin", b"Range: bytes=" + many[:8000])
    status, headers, body = parse(response)
    assert (status, b"content-range" in headers) == (200, False)
    assert body == (files / "big.bin").read_bytes()
    status, _, body = parse(await exchange(server, b"/s/six.txt", b"Range: bytes=0-0,2-3"))
    assert (status, body) == (200, SIX)


# --- what must keep working ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_single_suffix_and_unsatisfiable_ranges(server: int) -> None:
    cases = {
        b"bytes=1-2": (206, b"bytes 1-2/6", b"bc"),
        b"bytes=4-": (206, b"bytes 4-5/6", b"ef"),
        b"bytes=-2": (206, b"bytes 4-5/6", b"ef"),
        b"bytes=-100": (206, b"bytes 0-5/6", SIX),
        b"bytes=2-99999999999999999999999999": (206, b"bytes 2-5/6", b"cdef"),
        b"BYTES = 0-1 , 2-3": (206, b"bytes 0-3/6", b"abcd"),
        b"bytes=0-0, 9-12": (206, b"bytes 0-0/6", b"a"),
        b"bytes=6-": (416, b"bytes */6", b""),
        b"bytes=6-7,10-": (416, b"bytes */6", b""),
        b"bytes=-0": (416, b"bytes */6", b""),
        b"bytes=3-1": (200, None, SIX),
        b"items=0-1": (200, None, SIX),
        b"bytes=a-b": (200, None, SIX),
        b"bytes=": (200, None, SIX),
    }
    for value, (code, content_range, content) in cases.items():
        status, headers, body = parse(await exchange(server, b"/s/six.txt", b"Range: " + value))
        assert (status, headers.get(b"content-range"), body) == (code, content_range, content), value
        assert headers[b"content-length"] == b"%d" % len(content), value
    # An empty file has no byte to select: always the (empty) whole.
    status, headers, body = parse(await exchange(server, b"/s/empty.txt", b"Range: bytes=-5"))
    assert (status, headers[b"content-length"], body) == (200, b"0", b"")


@pytest_twisted.ensureDeferred
async def test_if_range_head_and_304(server: int, files: Path) -> None:
    status, headers, body = parse(await exchange(server, b"/s/six.txt", method=b"HEAD"))
    assert (status, headers[b"content-length"], headers[b"accept-ranges"], body) == (200, b"6", b"bytes", b"")
    last_modified = headers[b"last-modified"]
    # HEAD ignores Range (it is defined for GET only).
    status, headers, _ = parse(await exchange(server, b"/s/six.txt", b"Range: bytes=1-2", method=b"HEAD"))
    assert (status, headers[b"content-length"]) == (200, b"6")
    # If-Range: the Last-Modified sent matches; an older date or an entity tag does not.
    status, _, body = parse(
        await exchange(server, b"/s/six.txt", b"Range: bytes=1-2", b"If-Range: " + last_modified)
    )
    assert (status, body) == (206, b"bc")
    old = datetimeToString(0)
    status, _, body = parse(await exchange(server, b"/s/six.txt", b"Range: bytes=1-2", b"If-Range: " + old))
    assert (status, body) == (200, SIX)
    status, _, body = parse(await exchange(server, b"/s/six.txt", b"Range: bytes=1-2", b'If-Range: "x"'))
    assert (status, body) == (200, SIX)
    # A conditional GET still gets its 304, Range or not.
    status, _, body = parse(
        await exchange(server, b"/s/six.txt", b"Range: bytes=1-2", b"If-Modified-Since: " + last_modified)
    )
    assert (status, body) == (304, b"")


@pytest_twisted.ensureDeferred
async def test_keep_alive_after_a_range(server: int) -> None:
    """Two requests on one connection: the first answer's length is exact, so the second follows."""
    one = b"GET /s/six.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0,0-1\r\n\r\n"
    two = b"GET /s/six.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    response = await raw_exchange(server, one + two, TIMEOUT)
    first, _, rest = response.partition(b"\r\n\r\n")
    assert b"206" in first.split(b"\r\n")[0] and rest.startswith(b"abHTTP/1.1 200")
    assert rest.endswith(b"\r\n\r\n" + SIX)


@pytest_twisted.ensureDeferred
async def test_a_file_cut_short_while_sent_closes_the_connection(server: int, files: Path) -> None:
    """The file shrinks half-way: the connection is cut (its Content-Length promised more)."""
    big = files / "large.bin"
    size = 32 * MIB
    with big.open("wb") as f:
        f.truncate(size)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)

    def start() -> bytes:
        sock.connect(("127.0.0.1", server))
        # Keep-alive: a server that just finished the short answer would leave the client waiting.
        sock.sendall(b"GET /s/large.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        return sock.recv(4096)

    first = await deferToThread(start)
    assert first.startswith(b"HTTP/1.1 200")
    await sleep(0.5)  # let the server fill the socket buffers and pause
    os.truncate(big, 1000)

    def drain() -> int:
        got = len(first)
        try:
            while chunk := sock.recv(65536):
                got += len(chunk)
        except ConnectionResetError:
            pass
        return got

    try:
        got = await deferToThread(drain)
    finally:
        sock.close()
    assert got < size
