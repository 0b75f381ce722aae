"""WSGIUpstream against real parts: a twisted.web Site on loopback, a real thread pool, a real client.

The router (ssebridge/http/router.py) is not used: ``Front`` (tests/helpers.py) is a stand-in that does
what the router does with a reply (offload on ``X-SSE-OFFLOAD`` / ``X-SSE-Offload``, else pass the reply
through).
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.web.client import ResponseFailed
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import provider

from ssebridge.upstream import uwsgi_compat
from ssebridge.upstream.wsgi import (
    WSGIUpstream,
    build_environ,
    load_wsgi_file,
    load_wsgi_module,
    offload_header,
)
from tests.helpers import EXAMPLES, WAIT, Collector, Front, Served, header, until, within


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """Build a WSGIUpstream (on a pool of its own) behind a Front; everything is torn down after."""
    served: list[Served] = []

    def make(app: Any, **kw: Any) -> Served:
        pool = ThreadPool(minthreads=1, maxthreads=kw.pop("threads", 4), name="test-wsgi")
        upstream = WSGIUpstream(app, reactor, pool, **kw)
        s = Served(upstream)
        served.append(s)
        return s

    yield make
    for s in served:
        pytest_twisted.blockon(Deferred.fromCoroutine(s.close()))


@pytest.fixture
def log_events() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


# --- the seed's apps -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_seed_clock_sets_the_offload_variable(serve: Callable[..., Served]) -> None:
    """clock.py calls uwsgi.add_var and returns [] without start_response: a reply to offload."""
    s = serve(load_wsgi_file(EXAMPLES / "clock" / "clock.py"))
    response, body = await s.request("GET", "/whattimeisit")
    assert s.front.replies[0].variables == {"X-SSE-OFFLOAD": "clock"}
    assert header(response, "X-Offloaded-To") == "clock"
    assert body == b""

    response, body = await s.request("GET", "/")
    assert response.code == 200
    assert header(response, "Content-Type") == "text/plain"
    assert body == b"Hello World"
    assert s.front.replies[1].variables == {}


class _Closing:
    """An iterable that records whether the server closed it."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = chunks
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.closed.set()


@pytest_twisted.ensureDeferred
async def test_seed_headers_example_offloads_and_closes_the_body(serve: Callable[..., Served]) -> None:
    """The seed's second app: add_var plus event/stream headers; the offload drops (and closes) the body."""
    import uwsgi  # the stand-in, installed by WSGIUpstream

    bodies: list[_Closing] = []

    def application(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/whattimeisit":
            uwsgi.add_var("X-SSE-OFFLOAD", "clock")
            start_response(
                "200 OK", [("Content-Type", "event/stream"), ("Cache-Control", "no-cache"), ("Foo", "Bar")]
            )
            body = _Closing([b"never sent"])
            bodies.append(body)
            return body
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"Hello World"]

    s = serve(application)
    response, body = await s.request("GET", "/whattimeisit")
    reply = s.front.replies[0]
    assert reply.status == 200 and reply.reason == b"OK"
    assert reply.variables == {"X-SSE-OFFLOAD": "clock"}
    assert (b"Foo", b"Bar") in reply.headers
    assert (b"Content-Type", b"event/stream") in reply.headers
    assert header(response, "Foo") == "Bar"
    assert header(response, "X-Offloaded-To") == "clock"
    assert body == b""
    await until(bodies[0].closed.is_set, what="iterable closed")


@pytest_twisted.ensureDeferred
async def test_native_offload_header(serve: Callable[..., Served]) -> None:
    def application(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [offload_header("café")])
        return []

    s = serve(application)
    await s.request("GET", "/x")
    assert (b"X-SSE-Offload", "café".encode()) in s.front.replies[0].headers


# --- bodies ----------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_body_is_streamed_chunk_by_chunk(serve: Callable[..., Served]) -> None:
    """Each chunk reaches the client before the app produces the next one: nothing is buffered."""
    received = [threading.Event() for _ in range(3)]
    body = _Closing([])

    def chunks() -> Iterator[bytes]:
        for i in range(3):
            yield b"chunk-%d;" % i
            # The next chunk only once the client has this one.
            assert received[i].wait(WAIT), f"client did not get chunk {i}"

    body.chunks = chunks()

    def application(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    s = serve(application)
    response = await s.start("GET", "/stream")
    seen = bytearray()

    def on_data(data: bytes) -> None:
        seen.extend(data)
        for i, event in enumerate(received):
            if b"chunk-%d;" % i in seen:
                event.set()

    collector = Collector(on_data)
    response.deliverBody(collector)
    assert await within(collector.done) == b"chunk-0;chunk-1;chunk-2;"
    assert header(response, "Content-Type") == "text/plain"
    await until(body.closed.is_set, what="iterable closed")


@pytest_twisted.ensureDeferred
async def test_legacy_write_callable_and_empty_chunks(serve: Callable[..., Served]) -> None:
    def application(environ: dict[str, Any], start_response: Any) -> Any:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"a")
        write(b"b")
        return [b"", b"c", b""]

    s = serve(application)
    response, body = await s.request("GET", "/")
    assert body == b"abc"


@pytest_twisted.ensureDeferred
async def test_no_default_content_type_is_added(serve: Callable[..., Served]) -> None:
    def application(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("204 No Content", [])
        return []

    s = serve(application)
    response, body = await s.request("GET", "/")
    assert response.code == 204
    assert header(response, "Content-Type") is None


@pytest_twisted.ensureDeferred
async def test_slow_client_pauses_the_app(serve: Callable[..., Served]) -> None:
    """A client that stops reading stops the app's generator (after the socket buffers fill)."""
    produced = [0]
    chunk = b"x" * (1024 * 1024)
    total = 64

    def application(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Length", str(total * len(chunk)))])

        def body() -> Iterator[bytes]:
            for _ in range(total):
                produced[0] += 1
                yield chunk

        return body()

    s = serve(application)
    response = await s.start("GET", "/big")
    collector = Collector()
    response.deliverBody(collector)
    collector.transport.pauseProducing()  # type: ignore[union-attr]
    await until(lambda: produced[0] >= 2, what="app started")
    from twisted.internet.task import deferLater

    await deferLater(reactor, 1.0, lambda: None)
    # Loopback buffers hold a few MiB; without backpressure the app would have produced all 64.
    stalled_at = produced[0]
    assert stalled_at < 24, f"app produced {stalled_at} MiB while the client read nothing"
    collector.transport.resumeProducing()  # type: ignore[union-attr]
    data = await within(collector.done, 30)
    assert len(data) == total * len(chunk)


@pytest_twisted.ensureDeferred
async def test_client_disconnect_closes_the_iterable(serve: Callable[..., Served]) -> None:
    body = _Closing([])

    def endless() -> Iterator[bytes]:
        while True:
            yield b"tick\n"
            time.sleep(0.01)

    body.chunks = endless()

    def application(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    s = serve(application)
    response = await s.start("GET", "/endless")
    collector = Collector()
    response.deliverBody(collector)
    await until(lambda: collector.received > 0, what="first tick")
    collector.transport.stopProducing()  # type: ignore[union-attr]
    with pytest.raises(ResponseFailed):
        await within(collector.done)
    await until(body.closed.is_set, what="iterable closed after the client left")
    await until(lambda: s.upstream.active == 0, what="call finished")


# --- failures --------------------------------------------------------------------------------------


def _failures(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if "log_failure" in e]


@pytest.mark.parametrize("where", ["before start_response", "in the generator"])
@pytest_twisted.ensureDeferred
async def test_app_error_is_a_500_with_the_traceback_only_in_the_log(
    serve: Callable[..., Served], log_events: list[LogEvent], where: str
) -> None:
    def application(environ: dict[str, Any], start_response: Any) -> Any:
        if where == "before start_response":
            raise ZeroDivisionError("secret detail")

        def body() -> Iterator[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            raise ZeroDivisionError("secret detail")
            yield b""

        return body()

    s = serve(application)
    response, body = await s.request("GET", "/boom")
    assert response.code == 500
    assert body == b"Internal Server Error"
    await until(lambda: _failures(log_events), what="failure logged")
    failure = _failures(log_events)[0]["log_failure"]
    assert failure.check(ZeroDivisionError)
    assert "secret detail" in failure.getTraceback()


@pytest_twisted.ensureDeferred
async def test_app_error_mid_body_cuts_the_connection(
    serve: Callable[..., Served], log_events: list[LogEvent]
) -> None:
    def application(environ: dict[str, Any], start_response: Any) -> Any:
        def body() -> Iterator[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"part one"
            raise ZeroDivisionError("half-way")

        return body()

    s = serve(application)
    response = await s.start("GET", "/half")
    assert response.code == 200
    collector = Collector()
    response.deliverBody(collector)
    with pytest.raises(ResponseFailed):
        await within(collector.done)
    await until(lambda: _failures(log_events), what="failure logged")


@pytest_twisted.ensureDeferred
async def test_exc_info_replaces_the_response_before_it_is_sent(serve: Callable[..., Served]) -> None:
    def application(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("nope")
        except ValueError:
            start_response("503 Try Later", [("Content-Type", "text/plain")], sys.exc_info())
            return [b"sorry"]

    s = serve(application)
    response, body = await s.request("GET", "/")
    assert (response.code, response.phrase, body) == (503, b"Try Later", b"sorry")


@pytest_twisted.ensureDeferred
async def test_no_start_response_and_no_variable_is_a_500(serve: Callable[..., Served]) -> None:
    s = serve(lambda environ, start_response: [])
    response, body = await s.request("GET", "/")
    assert response.code == 500


@pytest_twisted.ensureDeferred
async def test_bad_header_is_a_500(serve: Callable[..., Served]) -> None:
    def application(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: b")])
        return [b""]

    s = serve(application)
    response, body = await s.request("GET", "/")
    assert response.code == 500
    assert header(response, "Set-Cookie") is None


@pytest_twisted.ensureDeferred
async def test_slow_app_is_a_504(serve: Callable[..., Served], log_events: list[LogEvent]) -> None:
    release = threading.Event()
    closed = threading.Event()

    def application(environ: dict[str, Any], start_response: Any) -> Any:
        release.wait(WAIT)
        start_response("200 OK", [])
        body = _Closing([b"too late"])
        body.closed = closed
        return body

    s = serve(application, timeout=0.3)
    started = time.monotonic()
    response, body = await s.request("GET", "/slow")
    assert response.code == 504
    assert time.monotonic() - started < 3
    assert body == b"Gateway Timeout"
    # The thread ran on; once the app answers, its late reply is dropped and its body closed.
    release.set()
    await until(closed.is_set, what="late body closed")
    await until(lambda: s.upstream.active == 0, what="call finished")


def answers_once_released(release: threading.Event) -> Any:
    """A WSGI app that holds its pool thread until ``release`` is set, then answers 200."""

    def application(environ: dict[str, Any], start_response: Any) -> Any:
        release.wait(WAIT)
        start_response("200 OK", [])
        return [b"late"]

    return application


@pytest_twisted.ensureDeferred
async def test_stop_releases_a_waiting_request(serve: Callable[..., Served]) -> None:
    release = threading.Event()
    s = serve(answers_once_released(release))
    pending = Deferred.fromCoroutine(s.request("GET", "/"))
    await until(lambda: s.upstream.active == 1, what="request in the app")
    stopped = s.upstream.stop()
    response, body = await within(pending)
    assert response.code == 503
    release.set()
    await within(stopped)
    assert await s.upstream.forward(None, {}).addErrback(lambda f: f.value.code) == 503


@pytest_twisted.ensureDeferred
async def test_a_request_that_timed_out_in_the_queue_never_runs(serve: Callable[..., Served]) -> None:
    release = threading.Event()
    ran: list[str] = []

    def application(environ: dict[str, Any], start_response: Any) -> Any:
        ran.append(environ["PATH_INFO"])
        if environ["PATH_INFO"] == "/busy":
            release.wait(WAIT)
        start_response("200 OK", [])
        return [b"done"]

    s = serve(application, threads=1, timeout=0.5)
    busy = Deferred.fromCoroutine(s.request("GET", "/busy"))
    await until(lambda: ran == ["/busy"], what="the one thread busy")
    response, _ = await s.request("POST", "/order-pizza")
    assert response.code == 504
    release.set()
    await within(busy)
    await until(lambda: s.upstream.active == 0, what="both calls ended")
    # Its client had its 504: the app must not place the order afterwards.
    assert ran == ["/busy"]


@pytest_twisted.ensureDeferred
async def test_stop_waits_for_app_code_only_so_long(serve: Callable[..., Served]) -> None:
    release = threading.Event()
    s = serve(answers_once_released(release))
    pending = Deferred.fromCoroutine(s.request("GET", "/"))
    await until(lambda: s.upstream.active == 1, what="request in the app")
    started = time.monotonic()
    await within(s.upstream.stop(grace=0.5))
    assert time.monotonic() - started < 3
    release.set()
    await within(pending)


# --- what reaches the app ------------------------------------------------------------------------


def _echo(environ: dict[str, Any], start_response: Any) -> Any:
    body = environ["wsgi.input"].read()
    fields = {
        key: environ.get(key)
        for key in (
            "REQUEST_METHOD",
            "SCRIPT_NAME",
            "PATH_INFO",
            "QUERY_STRING",
            "CONTENT_TYPE",
            "CONTENT_LENGTH",
            "HTTP_COOKIE",
            "HTTP_AUTHORIZATION",
            "HTTP_HOST",
            "HTTP_X_CUSTOM",
            "HTTP_X_UNDER_SCORE",
            "SERVER_NAME",
            "SERVER_PORT",
            "SERVER_PROTOCOL",
            "REMOTE_ADDR",
            "wsgi.url_scheme",
        )
    }
    fields["body_sha256"] = hashlib.sha256(body).hexdigest()
    fields["body_length"] = len(body)
    fields["input_terminated"] = environ.get("wsgi.input_terminated")
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(fields).encode()]


@pytest.mark.parametrize("size", [13, 300_000])
@pytest_twisted.ensureDeferred
async def test_request_reaches_the_app(serve: Callable[..., Served], size: int) -> None:
    """Method, path (percent-decoded, latin-1), query, body (small and spooled), cookies, Authorization."""
    s = serve(_echo)
    payload = (b"0123456789abc" * (size // 13 + 1))[:size]
    response, body = await s.request(
        "POST",
        "/caf%C3%A9/x%2Fy?q=1&r=%C3%A9",
        {
            "Content-Type": ["application/octet-stream"],
            "Cookie": ["a=1", "b=2"],
            "Authorization": ["Bearer s3cret"],
            "X-Custom": ["one", "two"],
            "X-Under_Score": ["spoof"],
            "Host": ["example.test:8080"],
        },
        payload,
    )
    seen = json.loads(body)
    assert seen["REQUEST_METHOD"] == "POST"
    assert seen["SCRIPT_NAME"] == ""
    assert seen["PATH_INFO"] == "/café/x/y".encode().decode("latin-1")
    assert seen["QUERY_STRING"] == "q=1&r=%C3%A9"
    assert seen["CONTENT_TYPE"] == "application/octet-stream"
    assert seen["CONTENT_LENGTH"] == str(size)
    assert seen["body_length"] == size
    assert seen["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert seen["HTTP_COOKIE"] == "a=1; b=2"
    assert seen["HTTP_AUTHORIZATION"] == "Bearer s3cret"
    assert seen["HTTP_X_CUSTOM"] == "one,two"
    assert seen["HTTP_X_UNDER_SCORE"] is None
    assert seen["HTTP_HOST"] == "example.test:8080"
    assert seen["SERVER_NAME"] == "example.test"
    assert seen["SERVER_PORT"] == str(s.port.getHost().port)
    assert seen["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert seen["REMOTE_ADDR"] == "127.0.0.1"
    assert seen["wsgi.url_scheme"] == "http"
    assert seen["input_terminated"] is True


@pytest.mark.parametrize("forwarded", [True, False])
@pytest_twisted.ensureDeferred
async def test_forwarded_headers_only_when_trusted(serve: Callable[..., Served], forwarded: bool) -> None:
    s = serve(_echo, forwarded=forwarded)
    response, body = await s.request(
        "GET",
        "/",
        {
            "X-Forwarded-For": ["198.51.100.7, 203.0.113.9"],
            "X-Forwarded-Proto": ["https"],
            "X-Forwarded-Host": ["public.example:8443"],
        },
    )
    seen = json.loads(body)
    if forwarded:
        assert seen["REMOTE_ADDR"] == "203.0.113.9"
        assert seen["wsgi.url_scheme"] == "https"
        assert seen["HTTP_HOST"] == "public.example:8443"
        assert (seen["SERVER_NAME"], seen["SERVER_PORT"]) == ("public.example", "8443")
    else:
        assert seen["REMOTE_ADDR"] == "127.0.0.1"
        assert seen["wsgi.url_scheme"] == "http"
        assert seen["HTTP_HOST"] != "public.example:8443"


@pytest_twisted.ensureDeferred
async def test_router_variables_reach_the_environ(serve: Callable[..., Served]) -> None:
    seen: dict[str, Any] = {}

    def application(environ: dict[str, Any], start_response: Any) -> Any:
        seen.update(environ)
        start_response("200 OK", [])
        return []

    class VariablesFront(Front):
        def render(self, request: Request) -> Any:
            d = self.upstream.forward(
                request, {"ROUTE_VAR": "yes", "PATH_INFO": "/ignored", "HTTP_X_FAKE": "no"}
            )
            d.addCallbacks(self._reply, self._error, callbackArgs=(request,), errbackArgs=(request,))
            return NOT_DONE_YET

    s = serve(application)
    s.site.resource = VariablesFront(s.upstream)
    await s.request("GET", "/real")
    assert seen["ROUTE_VAR"] == "yes"
    assert seen["PATH_INFO"] == "/real"
    assert "HTTP_X_FAKE" not in seen


# --- collect-header / pull-header ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_collect_and_pull_headers(serve: Callable[..., Served]) -> None:
    """The seed's last ini: Content-Type collected (still sent), X-SSE-Channel pulled (not sent)."""

    def application(environ: dict[str, Any], start_response: Any) -> Any:
        start_response(
            "200 OK",
            [("Content-Type", "event/stream"), ("x-sse-channel", "foobar"), ("Cache-Control", "no-cache")],
        )
        return [b"body"]

    s = serve(
        application,
        collect_headers=[("Content-Type", "RESPONSE_TYPE")],
        pull_headers=[("X-SSE-Channel", "X_SSE_CHANNEL")],
    )
    response, body = await s.request("GET", "/")
    reply = s.front.replies[0]
    assert reply.variables == {"RESPONSE_TYPE": "event/stream", "X_SSE_CHANNEL": "foobar"}
    names = [name.lower() for name, _ in reply.headers]
    assert b"content-type" in names and b"x-sse-channel" not in names
    assert header(response, "X-SSE-Channel") is None
    assert header(response, "Content-Type") == "event/stream"
    assert body == b"body"


@pytest_twisted.ensureDeferred
async def test_django_sse_view_with_pull_header(serve: Callable[..., Served]) -> None:
    pytest.importorskip("django")
    s = serve(
        load_wsgi_file(EXAMPLES / "django_view" / "app.py"),
        collect_headers=[("Content-Type", "RESPONSE_TYPE")],
        pull_headers=[("X-SSE-Channel", "X_SSE_CHANNEL")],
    )
    response, body = await s.request("GET", "/events/anything")
    reply = s.front.replies[0]
    assert reply.status == 200
    assert reply.variables == {"RESPONSE_TYPE": "event/stream", "X_SSE_CHANNEL": "foobar"}
    assert all(name.lower() != b"x-sse-channel" for name, _ in reply.headers)
    response, body = await s.request("GET", "/")
    assert body == b"Hello from Django\n"


# --- the Flask example: authorisation in the app, 401 passes through -------------------------------


@pytest_twisted.ensureDeferred
async def test_flask_auth_example(serve: Callable[..., Served]) -> None:
    s = serve(load_wsgi_file(EXAMPLES / "flask_auth" / "app.py"))
    response, body = await s.request("GET", "/events")
    assert response.code == 401
    assert header(response, "Content-Type") == "application/json"
    assert json.loads(body)["error"] == "unauthorized"
    assert header(response, "WWW-Authenticate") == 'Bearer realm="events"'

    response, body = await s.request("GET", "/events", {"Authorization": ["Bearer wrong"]})
    assert response.code == 401

    response, body = await s.request("GET", "/events", {"Authorization": ["Bearer alice-token"]})
    assert header(response, "X-Offloaded-To") == "user-alice"

    # The session cookie way: log in, then present the cookie.
    response, body = await s.request(
        "POST",
        "/login",
        {"Content-Type": ["application/x-www-form-urlencoded"]},
        b"user=bob&password=builder",
    )
    assert response.code == 200, body
    cookie = header(response, "Set-Cookie")
    assert cookie is not None
    response, body = await s.request("GET", "/events", {"Cookie": [cookie.split(";")[0]]})
    assert header(response, "X-Offloaded-To") == "user-bob"


# --- loading and the uwsgi stand-in ----------------------------------------------------------------


def test_load_wsgi_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no such file"):
        load_wsgi_file(tmp_path / "missing.py")
    (tmp_path / "noapp.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match=r"no 'application'"):
        load_wsgi_file(tmp_path / "noapp.py")
    (tmp_path / "broken.py").write_text("def (:\n")
    with pytest.raises(ValueError, match=r"importing it failed: SyntaxError") as raised:
        load_wsgi_file(tmp_path / "broken.py")
    assert "\n" not in str(raised.value)
    (tmp_path / "notcallable.py").write_text("application = 3\n")
    with pytest.raises(ValueError, match=r"not a WSGI callable"):
        load_wsgi_file(tmp_path / "notcallable.py")


def test_load_wsgi_file_sees_its_neighbours(tmp_path: Path) -> None:
    (tmp_path / "helper_for_wsgi_test.py").write_text("TEXT = b'from a neighbour'\n")
    (tmp_path / "site_app.py").write_text(
        "import helper_for_wsgi_test\n"
        "def application(environ, start_response):\n"
        "    return [helper_for_wsgi_test.TEXT]\n"
    )
    app = load_wsgi_file(tmp_path / "site_app.py")
    assert list(app({}, lambda *a: None)) == [b"from a neighbour"]  # type: ignore[arg-type]


def test_load_wsgi_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "wsgi_mod_test.py").write_text(
        "def application(e, s):\n    return [b'default']\n"
        "class Holder:\n    @staticmethod\n    def app(e, s):\n        return [b'dotted']\n"
    )
    assert list(load_wsgi_module("wsgi_mod_test")({}, None)) == [b"default"]  # type: ignore[arg-type]
    assert list(load_wsgi_module("wsgi_mod_test:Holder.app")({}, None)) == [b"dotted"]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"no module named 'no_such_module_here'"):
        load_wsgi_module("no_such_module_here:app")
    with pytest.raises(ValueError, match=r"no 'missing'"):
        load_wsgi_module("wsgi_mod_test:missing")
    with pytest.raises(ValueError, match=r"not a module name"):
        load_wsgi_module("not a module")


def test_uwsgi_stand_in() -> None:
    module = uwsgi_compat.install()
    assert sys.modules["uwsgi"] is module
    with pytest.raises(RuntimeError, match=r"outside a request"):
        uwsgi_compat.add_var("X", "y")
    variables: dict[str, str] = {}
    with uwsgi_compat.request_scope(variables):
        assert uwsgi_compat.add_var(b"X-SSE-OFFLOAD", b"clock") is True
        uwsgi_compat.close_scope()
        uwsgi_compat.add_var("LATE", "ignored")
    assert variables == {"X-SSE-OFFLOAD": "clock"}
    assert isinstance(uwsgi_compat.version, bytes)
    assert uwsgi_compat.opt == {}


def test_environ_of_a_plain_request() -> None:
    """build_environ on a twisted.web test request, without a server."""
    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest([b"a b"])
    request.uri = b"/a%20b?x=1"
    request.method = b"GET"
    request.requestHeaders.setRawHeaders(b"host", [b"h.example"])
    request.isSecure = lambda: False  # type: ignore[attr-defined]
    environ = build_environ(request)  # type: ignore[arg-type]
    assert environ["PATH_INFO"] == "/a b"
    assert environ["QUERY_STRING"] == "x=1"
    assert "CONTENT_LENGTH" not in environ
    assert environ["wsgi.input"].read() == b""


@pytest_twisted.ensureDeferred
async def test_wsgi_errors_go_to_the_log(serve: Callable[..., Served], log_events: list[LogEvent]) -> None:
    def application(environ: dict[str, Any], start_response: Any) -> Any:
        environ["wsgi.errors"].write("first line\nsecond ")
        environ["wsgi.errors"].write("line\nunfinished")
        environ["wsgi.errors"].flush()
        start_response("200 OK", [])
        return []

    s = serve(application)
    await s.request("GET", "/noisy")
    lines = [e["line"] for e in log_events if e.get("wsgi_errors")]
    assert lines == ["first line", "second line", "unfinished"]


@pytest_twisted.ensureDeferred
async def test_head_request_sends_no_body(serve: Callable[..., Served]) -> None:
    s = serve(load_wsgi_file(EXAMPLES / "clock" / "clock.py"))
    response, body = await s.request("HEAD", "/")
    assert response.code == 200
    assert body == b""
