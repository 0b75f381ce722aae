"""static-map over real HTTP: files and directories served, nothing outside them, ever.

A real ``Site`` on 127.0.0.1:0 serves the maps; well-formed requests go through treq (its own pool,
closed at the end), hostile ones are written verbatim on a raw TCP connection so no client library
normalises the path first.
"""

from __future__ import annotations

import os
import string
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ssebridge.config.model import StaticMap
from ssebridge.http.static import (
    ForbiddenPath,
    MalformedPath,
    StaticFiles,
    content_type_for,
    safe_join,
    split_url_path,
    static_resource_for,
)
from tests.helpers import raw_exchange

TIMEOUT = 10.0
SECRET = b"TOP-SECRET-OUTSIDE-THE-ROOT"
CLOCK_HTML = b"<!doctype html><div id=clock></div>\n"


# --- the tree under test ---------------------------------------------------------------------------


def make_tree(base: Path) -> dict[str, Path]:
    """A static root with files, a subdirectory and symlinks, next to a secret it must not leak."""
    (base / "secret.txt").write_bytes(SECRET)
    outside = base / "outside"
    outside.mkdir()
    (outside / "passwd").write_bytes(SECRET)
    root = base / "root"
    (root / "css").mkdir(parents=True)
    (root / "img").mkdir()
    (root / "app.js").write_bytes(b"console.log('hi');\n")
    (root / "css" / "site.css").write_bytes(b"body { color: red }\n")
    (root / "img" / "dot.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "data.bin").write_bytes(b"\x00\x01\x02")
    (root / "caf\u00e9.txt").write_bytes(b"unicode name\n")
    (root / "inside-link.js").symlink_to(root / "app.js")
    (root / "escape-link.txt").symlink_to(base / "secret.txt")
    (root / "escape-dir").symlink_to(outside)
    (root / "parent-link").symlink_to("..")
    clock = base / "clock.html"
    clock.write_bytes(CLOCK_HTML)
    return {"base": base, "root": root, "clock": clock}


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    return make_tree(tmp_path)


@pytest.fixture
def maps(tree: dict[str, Path]) -> list[StaticMap]:
    return [StaticMap("/clock", tree["clock"]), StaticMap("/static", tree["root"])]


class _AppOrStatic(Resource):
    """A stand-in router: static files first, then "the app", as the web layer would do it."""

    isLeaf = True

    def __init__(self, maps: list[StaticMap]) -> None:
        super().__init__()
        self.maps = maps

    def render(self, request: Request) -> Any:
        found = static_resource_for(self.maps, request)
        if found is not None:
            return found.render(request)
        request.setHeader(b"content-type", b"text/plain")
        return b"the app answered\n"


@pytest.fixture
def server(maps: list[StaticMap]) -> Iterator[int]:
    """A Site with StaticFiles as its root on 127.0.0.1:<free port>; yields the port."""
    port = reactor.listenTCP(0, Site(StaticFiles(maps)), interface="127.0.0.1")
    try:
        yield port.getHost().port
    finally:
        pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def app_server(maps: list[StaticMap]) -> Iterator[int]:
    port = reactor.listenTCP(0, Site(_AppOrStatic(maps)), interface="127.0.0.1")
    try:
        yield port.getHost().port
    finally:
        pytest_twisted.blockon(port.stopListening())


@pytest_twisted.async_yield_fixture
async def pool() -> AsyncIterator[HTTPConnectionPool]:
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        yield pool
    finally:
        await pool.closeCachedConnections()


async def fetch(
    pool: HTTPConnectionPool, method: str, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any, bytes]:
    response = await treq.request(method, url, pool=pool, headers=headers, timeout=TIMEOUT)
    body = await treq.content(response).addTimeout(TIMEOUT, reactor)
    return response.code, response.headers, body


async def raw_get(port: int, target: bytes, method: bytes = b"GET") -> tuple[int, bytes]:
    """Send one request line verbatim; return (status, whole response)."""
    request = method + b" " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    response = await raw_exchange(port, request, TIMEOUT)
    status_line = response.split(b"\r\n", 1)[0]
    return int(status_line.split(b" ")[1]), response


# --- serving -------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_file_map_serves_exactly_its_prefix(server: int, pool: HTTPConnectionPool) -> None:
    base = f"http://127.0.0.1:{server}"
    code, headers, body = await fetch(pool, "GET", base + "/clock")
    assert code == 200
    assert body == CLOCK_HTML
    assert headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    assert headers.getRawHeaders("last-modified")
    # Query strings do not change which file answers.
    code, _, body = await fetch(pool, "GET", base + "/clock?x=1")
    assert (code, body) == (200, CLOCK_HTML)
    for miss in ("/clock/", "/clock/x", "/clockx", "/", "/nothing"):
        code, _, body = await fetch(pool, "GET", base + miss)
        assert code == 404, miss
        assert CLOCK_HTML not in body


@pytest_twisted.ensureDeferred
async def test_directory_map_content_types(server: int, pool: HTTPConnectionPool) -> None:
    base = f"http://127.0.0.1:{server}/static"
    expected = {
        "/app.js": ("application/javascript; charset=utf-8", b"console.log('hi');\n"),
        "/css/site.css": ("text/css; charset=utf-8", b"body { color: red }\n"),
        "/img/dot.png": ("image/png", b"\x89PNG\r\n\x1a\n"),
        "/data.bin": ("application/octet-stream", b"\x00\x01\x02"),
        "/caf%C3%A9.txt": ("text/plain; charset=utf-8", b"unicode name\n"),
        # A symlink that stays inside the root is fine.
        "/inside-link.js": ("application/javascript; charset=utf-8", b"console.log('hi');\n"),
    }
    for path, (content_type, content) in expected.items():
        code, headers, body = await fetch(pool, "GET", base + path)
        assert code == 200, path
        assert body == content, path
        assert headers.getRawHeaders("content-type") == [content_type], path
        assert headers.getRawHeaders("x-content-type-options") == ["nosniff"]


@pytest_twisted.ensureDeferred
async def test_no_directory_listing(server: int, pool: HTTPConnectionPool) -> None:
    base = f"http://127.0.0.1:{server}/static"
    for path in ("", "/", "/css", "/css/", "/missing.js", "/css/missing.css"):
        code, _, body = await fetch(pool, "GET", base + path)
        assert code == 404, path
        assert b"site.css" not in body and b"app.js" not in body


@pytest_twisted.ensureDeferred
async def test_head_and_conditional_get(server: int, pool: HTTPConnectionPool) -> None:
    url = f"http://127.0.0.1:{server}/static/css/site.css"
    code, headers, body = await fetch(pool, "HEAD", url)
    assert code == 200
    assert body == b""
    assert headers.getRawHeaders("content-length") == [str(len(b"body { color: red }\n"))]
    assert headers.getRawHeaders("content-type") == ["text/css; charset=utf-8"]
    last_modified = headers.getRawHeaders("last-modified")[0]
    code, _, body = await fetch(pool, "GET", url, headers={"If-Modified-Since": last_modified})
    assert (code, body) == (304, b"")
    code, _, body = await fetch(
        pool, "GET", url, headers={"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"}
    )
    assert code == 200


@pytest_twisted.ensureDeferred
async def test_only_get_and_head(server: int, pool: HTTPConnectionPool) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        code, headers, _ = await fetch(pool, method, f"http://127.0.0.1:{server}/static/app.js")
        assert code == 405, method
        assert headers.getRawHeaders("allow") == ["GET, HEAD"]
    code, _, _ = await fetch(pool, "POST", f"http://127.0.0.1:{server}/clock")
    assert code == 405


@pytest_twisted.ensureDeferred
async def test_unmatched_paths_fall_through_to_the_app(app_server: int, pool: HTTPConnectionPool) -> None:
    base = f"http://127.0.0.1:{app_server}"
    code, _, body = await fetch(pool, "GET", base + "/clock")
    assert (code, body) == (200, CLOCK_HTML)
    for path in ("/whattimeisit", "/staticfoo", "/static/missing.js", "/static/css"):
        code, _, body = await fetch(pool, "GET", base + path)
        assert (code, body) == (200, b"the app answered\n"), path
    # A traversal attempt under a mapped prefix is answered, not handed to the app.
    status, response = await raw_get(app_server, b"/static/../secret.txt")
    assert status == 404
    assert b"the app answered" not in response


# --- never outside the root ----------------------------------------------------------------------------

HOSTILE = [
    b"/static/../secret.txt",
    b"/static/../../etc/passwd",
    b"/static/../../../../../../../../etc/passwd",
    b"/static/%2e%2e/secret.txt",
    b"/static/%2E%2E/%2E%2E/etc/passwd",
    b"/static/.%2e/secret.txt",
    b"/static/..%2fsecret.txt",
    b"/static/..%2Fsecret.txt",
    b"/static/..%5csecret.txt",
    b"/static/..\\secret.txt",
    b"/static/%252e%252e/secret.txt",
    b"/static/%252e%252e%252fsecret.txt",
    b"/static//etc/passwd",
    b"/static/%2fetc%2fpasswd",
    b"/static/escape-link.txt",
    b"/static/escape-dir/passwd",
    b"/static/parent-link/secret.txt",
    b"/static/./app.js/../../secret.txt",
    b"/static/css/../../secret.txt",
    b"/clock/../static/../secret.txt",
    b"/static/%u002e%u002e/secret.txt",
    b"/static/%c0%ae%c0%ae/secret.txt",
    b"/static/..;/secret.txt",
]

MALFORMED = [
    b"/static/%ff",
    b"/static/%c0%ae%c0%ae",
    b"/static/%zz",
    b"/static/%2",
    b"/static/a%00b",
    b"/static/%00/../secret.txt",
]


@pytest_twisted.ensureDeferred
async def test_traversal_is_refused(server: int) -> None:
    for target in HOSTILE:
        status, response = await raw_get(server, target)
        assert status in (400, 404), target
        assert SECRET not in response, target
        assert b"Traceback" not in response, target


@pytest_twisted.ensureDeferred
async def test_malformed_paths_are_400(server: int) -> None:
    for target in MALFORMED:
        status, response = await raw_get(server, target)
        assert status == 400, target
        assert b"Traceback" not in response and SECRET not in response, target


@pytest_twisted.ensureDeferred
async def test_raw_nul_and_absolute_form_never_leak(server: int) -> None:
    # Twisted's parser may refuse these before we see them; either way: no file, no traceback.
    for target in (b"/static/a\x00b", b"http://127.0.0.1/static/../secret.txt", b"../secret.txt", b"*"):
        status, response = await raw_get(server, target)
        assert 400 <= status < 500, target
        assert SECRET not in response and b"Traceback" not in response, target


# --- the pure parts ------------------------------------------------------------------------------------


def test_split_url_path() -> None:
    assert split_url_path(b"") == ()
    assert split_url_path(b"/a/b.css") == ("a", "b.css")
    assert split_url_path(b"/caf%C3%A9") == ("caf\u00e9",)
    assert split_url_path(b"/a%20b") == ("a b",)
    assert split_url_path(b"/...") == ("...",)
    for bad in (b"/..", b"/.", b"/%2e", b"/a/%2E%2e", b"/a%2fb", b"/a%5Cb", b"/%25", b"//a", b"/a/", b"a"):
        with pytest.raises(ForbiddenPath):
            split_url_path(bad)
    for bad in (b"/%ff", b"/%", b"/%g0", b"/a\x00", b"/%00"):
        with pytest.raises(MalformedPath):
            split_url_path(bad)


def test_safe_join_examples(tree: dict[str, Path]) -> None:
    root = tree["root"]
    assert safe_join(root, b"/css/site.css") == (root / "css" / "site.css").resolve()
    assert safe_join(root, b"") == root.resolve()
    assert safe_join(root, b"/inside-link.js") == (root / "app.js").resolve()
    assert safe_join(root, b"/does/not/exist") == (root / "does" / "not" / "exist").resolve()
    for bad in (b"/../secret.txt", b"/escape-link.txt", b"/escape-dir/passwd", b"/parent-link", b"/%2e%2e"):
        assert safe_join(root, bad) is None, bad


def test_content_types() -> None:
    assert content_type_for(Path("a.HTML")) == "text/html; charset=utf-8"
    assert content_type_for(Path("a.svg")) == "image/svg+xml"
    assert content_type_for(Path("a.jpeg")) == "image/jpeg"
    assert content_type_for(Path("a.tar.gz")) == "application/gzip"
    assert content_type_for(Path("Makefile")) == "application/octet-stream"
    assert content_type_for(Path("a.unknown-ext")) == "application/octet-stream"


@pytest.fixture(scope="module")
def hypothesis_tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tree(tmp_path_factory.mktemp("static"))


_TOKENS = st.sampled_from(
    [
        b"..", b".", b"%2e", b"%2E", b"%2f", b"%2F", b"%5c", b"%25", b"%252e", b"%00", b"\x00", b"%ff",
        b"\\", b"/", b"//", b"a", b"css", b"site.css", b"escape-dir", b"escape-link.txt", b"parent-link",
        b"inside-link.js", b"root", b"secret.txt", b"passwd", b"~", b"%7e", b"%c0%ae",
    ]
)  # fmt: skip
_URL_RESTS = st.one_of(
    st.lists(_TOKENS, max_size=12).map(lambda parts: b"/" + b"".join(parts)),
    st.lists(_TOKENS, max_size=12).map(b"/".join),
    st.binary(max_size=40),
    st.text(alphabet=string.printable, max_size=40).map(lambda s: s.encode()),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(url_rest=_URL_RESTS)
def test_safe_join_never_escapes_root(hypothesis_tree: dict[str, Path], url_rest: bytes) -> None:
    root = hypothesis_tree["root"]
    real_root = root.resolve()
    result = safe_join(root, url_rest)
    if result is not None:
        assert result == real_root or result.is_relative_to(real_root), (url_rest, result)
        # What it returns is already fully resolved: opening it cannot take another symlink out.
        assert Path(os.path.realpath(result)) == result


@settings(max_examples=200, deadline=None)
@given(
    segments=st.lists(
        st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=8),
        min_size=1,
        max_size=5,
    )
)
def test_safe_join_plain_segments_map_directly(segments: list[str]) -> None:
    root = Path("/nonexistent-static-root")
    assert safe_join(root, ("/" + "/".join(segments)).encode()) == root.joinpath(*segments)
