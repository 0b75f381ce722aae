"""The in-process upstream: a WSGI app run on a thread pool, its reply handed back to the reactor.

``WSGIUpstream`` builds a PEP 3333 environ from the Twisted request, calls the app in a pool thread
inside a ``uwsgi.add_var`` scope, and waits there until the app has called ``start_response`` and the
first non-empty body chunk (or the end of the body) is known: PEP 3333 lets a server hold the headers
until then, and it is the latest moment an app can still change its mind (``exc_info``) or set a
variable. Then the reply goes to the reactor thread, and the pool thread waits for the router's
verdict: ``send_body`` streams the rest of the iterable from that same thread, one reactor write per
chunk, pausing while the client's transport is full; ``discard_body`` (an offloaded connection) only
closes the iterable.

The same thread runs the whole call, body included, because apps keep per-thread state (database
connections, thread-locals) that a generator may still use while it yields.

Loading: ``load_wsgi_file`` (uWSGI's ``wsgi-file``) and ``load_wsgi_module`` (``pkg.mod:app``) install
the ``uwsgi`` stand-in first, so the seed's ``import uwsgi`` works. New apps can skip it and answer
with an ``X-SSE-Offload: CHANNEL`` header (``offload_header(channel)``) instead.

Longer than most modules (~700 lines) on purpose: one WSGI call crosses threads (the pool thread runs the
app, the reactor owns the connection), and its states, timeouts and hand-over are easier to check
when they sit together than when split across files that each hold half of a lock's story.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Literal, cast
from urllib.parse import unquote_to_bytes
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Request
from zope.interface import implementer

from ssebridge.logs import printable
from ssebridge.publish.offload import OFFLOAD_HEADER, OFFLOAD_VARIABLE, offload, offload_header
from ssebridge.takeover import gone
from ssebridge.upstream import uwsgi_compat
from ssebridge.upstream.base import (
    DelayedCall,
    HeaderRules,
    ThreadedTimers,
    Upstream,
    UpstreamError,
    UpstreamReply,
    detach_body,
    is_forwarding_header,
    strip_hop_by_hop,
)
from ssebridge.upstream.body import BodyBroken, BodyReader
from ssebridge.upstream.drain import close_after_answer, until_drained

__all__ = [
    "OFFLOAD_HEADER",
    "OFFLOAD_VARIABLE",
    "WSGIUpstream",
    "build_environ",
    "load_wsgi_file",
    "load_wsgi_module",
    "offload",
    "offload_header",
]

log = Logger()
app_log = Logger(namespace="ssebridge.upstream.wsgi.app")

#: How long a pool thread waits for the router to take or drop a reply before dropping it itself.
#: The router decides synchronously, so this only bounds a bug.
DECISION_WAIT = 30.0
#: How often a pool thread blocked on the reactor looks whether the call was abandoned meanwhile.
POLL_INTERVAL = 0.5

_STATUS = re.compile(r"([1-9][0-9]{2})(?: (.*))?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")

Mode = Literal["pending", "send", "discard", "abandon"]


# --- environ ---------------------------------------------------------------------------------------


def _latin1(value: bytes) -> str:
    return value.decode("latin-1")


def _last_value(request: Request, name: bytes) -> str | None:
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    last = b",".join(values).split(b",")[-1].strip()
    return _latin1(last) if last else None


class _ErrorStream:
    """``wsgi.errors``: lines the app writes become twisted.logger events (Flask logs here)."""

    def __init__(self, path: str) -> None:
        # PATH_INFO is percent-decoded: an ESC sent as %1b must not reach an operator's terminal.
        self._path = printable(path)
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
        for line in lines:
            app_log.warn("{path}: {line}", path=self._path, line=line, wsgi_errors=True)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self._lock:
            rest, self._partial = self._partial, ""
        if rest:
            app_log.warn("{path}: {line}", path=self._path, line=rest, wsgi_errors=True)


def _split_host(value: str, scheme: str) -> tuple[str, str]:
    """``host[:port]`` or ``[v6][:port]`` into name and port (the scheme's default port if none)."""
    if value.startswith("[") and "]" in value:
        end = value.index("]") + 1
        name, rest = value[:end], value[end:]
    else:
        name, sep, port = value.partition(":")
        rest = sep + port
    if rest.startswith(":") and rest[1:].isdigit():
        return name, rest[1:]
    return name, "443" if scheme == "https" else "80"


def build_environ(
    request: Request,
    variables: dict[str, str] | None = None,
    *,
    forwarded: bool = False,
    body: IO[bytes] | None = None,
) -> WSGIEnvironment:
    """The PEP 3333 environ of ``request``.

    ``variables`` are the router's request variables: those not computed here (and not ``HTTP_*``)
    are added, since in uWSGI every request variable is in the environ. ``PATH_INFO`` is the
    percent-decoded path as latin-1 characters, as PEP 3333 has it. Header names with ``_`` are left
    out: ``X_Forwarded_For`` would otherwise be indistinguishable from ``X-Forwarded-For``. With
    ``forwarded`` (a trusted proxy in front), the last ``X-Forwarded-For`` hop becomes
    ``REMOTE_ADDR``, ``X-Forwarded-Proto`` the URL scheme and ``X-Forwarded-Host`` the host; without
    it, those fields (and ``Forwarded``, ``X-Real-IP``) are left out of the environ.
    """
    uri: bytes = request.uri
    path, _, query = uri.partition(b"?")
    client = request.getClientAddress()
    host = request.getHost()
    if body is None:
        body = detach_body(request)
    length: int | None
    if isinstance(body, BodyReader):
        # Still arriving: its length is known once complete, or as the client declared it.
        length = body.length
    else:
        body.seek(0, 2)
        length = body.tell()
        body.seek(0)
    scheme = "https" if request.isSecure() else "http"
    environ: dict[str, Any] = {
        "REQUEST_METHOD": _latin1(request.method),
        "SCRIPT_NAME": "",
        "PATH_INFO": _latin1(unquote_to_bytes(path)),
        "QUERY_STRING": _latin1(query),
        "REQUEST_URI": _latin1(uri),
        "SERVER_NAME": _latin1(request.getRequestHostname()),
        "SERVER_PORT": str(getattr(host, "port", "")),
        "SERVER_PROTOCOL": _latin1(request.clientproto),
        "REMOTE_ADDR": str(getattr(client, "host", "")),
        "REMOTE_PORT": str(getattr(client, "port", "")),
    }
    content_type = request.requestHeaders.getRawHeaders(b"content-type")
    if content_type:
        environ["CONTENT_TYPE"] = _latin1(content_type[0])
    # Twisted has de-chunked the body already: the length read is the truth, whatever the header said.
    # A chunked body still arriving has none: the app reads to its end (wsgi.input_terminated).
    if length is not None and (length or request.requestHeaders.hasHeader(b"content-length")):
        environ["CONTENT_LENGTH"] = str(length)
    for name, values in request.requestHeaders.getAllRawHeaders():
        lname = name.lower()
        if lname in (b"content-type", b"content-length") or b"_" in name:
            continue
        if not forwarded and is_forwarding_header(name):
            continue  # a client's own X-Forwarded-*: nothing vouches for them
        key = "HTTP_" + _latin1(name).upper().replace("-", "_")
        # RFC 6265: several Cookie fields (HTTP/2 splits them) join with "; ", others with ",".
        sep = b"; " if lname == b"cookie" else b","
        environ[key] = _latin1(sep.join(values))
    if forwarded:
        remote = _last_value(request, b"x-forwarded-for")
        if remote:
            environ["REMOTE_ADDR"] = remote
            environ.pop("REMOTE_PORT", None)
        proto = _last_value(request, b"x-forwarded-proto")
        if proto and proto.lower() in ("http", "https"):
            scheme = proto.lower()
        fhost = _last_value(request, b"x-forwarded-host")
        if fhost and not any(c.isspace() for c in fhost):
            environ["HTTP_HOST"] = fhost
            environ["SERVER_NAME"], environ["SERVER_PORT"] = _split_host(fhost, scheme)
    for key, value in (variables or {}).items():
        if not key.startswith("HTTP_"):
            environ.setdefault(key, value)
    environ.update(
        {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scheme,
            "wsgi.input": body,
            "wsgi.input_terminated": True,
            "wsgi.errors": _ErrorStream(environ["PATH_INFO"]),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
    )
    return environ


# --- one call ----------------------------------------------------------------------------------------


def _parse_status(status: object) -> tuple[int, bytes]:
    if not isinstance(status, str):
        raise TypeError(f"start_response: status must be str, not {type(status).__name__}")
    match = _STATUS.fullmatch(status)
    if match is None:
        raise ValueError(f"start_response: bad status {status!r}")
    return int(match.group(1)), (match.group(2) or "").encode("latin-1")


def _parse_headers(headers: object) -> list[tuple[bytes, bytes]]:
    if not isinstance(headers, list | tuple):
        raise TypeError(f"start_response: headers must be a list, not {type(headers).__name__}")
    out = []
    for header in headers:
        if not isinstance(header, tuple | list) or len(header) != 2:
            raise TypeError(f"start_response: a header must be a (name, value) tuple, not {header!r}")
        name, value = header
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"start_response: header name and value must be str: {header!r}")
        bname, bvalue = name.encode("latin-1"), value.encode("latin-1")
        if not _TOKEN.fullmatch(bname) or _BAD_VALUE.search(bvalue):
            raise ValueError(f"start_response: invalid header {header!r}")
        out.append((bname, bvalue))
    return out


class _ClientGone(ConnectionAbortedError):
    """Raised into the app by ``write()`` once the client has disconnected."""


@implementer(IPushProducer)
class _WSGICall:
    """One request through the app: the pool thread's side and the reactor's side.

    Attributes written by one thread and read by the other are handed over through
    ``threading.Event`` (the decision, each write's completion), so each read happens after the write.
    """

    def __init__(self, upstream: WSGIUpstream, request: Request, variables: dict[str, str]) -> None:
        self.upstream = upstream
        self.reactor = upstream.reactor
        self.request = request
        self.body = detach_body(request)
        self.environ = build_environ(request, variables, forwarded=upstream.forwarded, body=self.body)
        self.path = self.environ["PATH_INFO"]
        self.reply: Deferred[UpstreamReply] = Deferred(self._cancel)
        self._timer: DelayedCall | None = self.reactor.callLater(upstream.timeout, self._timed_out)
        # Thread side.
        #: Set (under the mode lock) once a pool thread took the call: from then on it runs to the end.
        self._running = False
        self._started = False
        self._decided = False
        self._status: tuple[int, bytes] = (500, b"")
        self._headers: list[tuple[bytes, bytes]] = []
        self._variables: dict[str, str] = {}
        self._verdict: Mode = "pending"
        # Shared: the router's verdict.
        self._mode: Mode = "pending"
        self._mode_lock = threading.Lock()
        self._decision = threading.Event()
        # Reactor side, while sending.
        self._paused = False
        self._client_gone = False
        self._waiter: threading.Event | None = None
        self._body_done: Deferred[None] | None = None

    # -- reactor thread --------------------------------------------------------------------------

    def _set_mode(self, mode: Mode, *, only_from_pending: bool = True) -> bool:
        with self._mode_lock:
            if only_from_pending and self._mode != "pending":
                return False
            self._mode = mode
        self._decision.set()
        self._release_waiter()
        return True

    def _release_waiter(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.set()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.reply.called:
            return
        log.warn(
            "WSGI app gave no response to {method} {path!r} within {timeout}s: 504 (its thread runs on)",
            method=self.environ["REQUEST_METHOD"],
            path=self.path,
            timeout=self.upstream.timeout,
        )
        self._set_mode("abandon")
        self.reply.errback(UpstreamError(504, "Gateway Timeout"))

    def _cancel(self, _: Deferred[UpstreamReply]) -> None:
        self._stop_timer()
        self._set_mode("abandon")

    def refuse_if_queued(self) -> bool:
        """The upstream drains: a call still waiting for a pool thread is refused with 503 (the app
        never sees it, so a client's retry cannot run it twice); one already running goes on."""
        with self._mode_lock:
            if self._running or self._mode != "pending":
                return False
            self._mode = "abandon"
        self._decision.set()
        self._stop_timer()
        if not self.reply.called:
            self.reply.errback(UpstreamError(503, "Service Unavailable"))
        return True

    def abandon(self) -> None:
        """The upstream stops: release the pool thread wherever it waits."""
        self._stop_timer()
        if not self.reply.called:
            self._set_mode("abandon")
            self.reply.errback(UpstreamError(503, "Service Unavailable"))
        else:
            self._set_mode("abandon", only_from_pending=False)

    def _replied(
        self, status: tuple[int, bytes], headers: list[tuple[bytes, bytes]], variables: dict[str, str]
    ) -> None:
        if self.reply.called:  # timed out or cancelled meanwhile: nobody takes this reply
            self._set_mode("abandon")
            return
        self._stop_timer()
        headers, collected = self.upstream.rules.apply(headers)
        variables.update(collected)
        self.reply.callback(UpstreamReply(status[0], status[1], headers, variables, body=self))

    def _failed(self, failure: Failure, when: str) -> None:
        if failure.check(BodyBroken):
            # The request body broke off (the client left, or was too slow): not the app's fault,
            # and the client is gone or being cut; no traceback.
            log.info(
                "WSGI app stopped reading the body of {method} {path!r}: {why}",
                method=self.environ["REQUEST_METHOD"],
                path=self.path,
                why=failure.getErrorMessage(),
            )
            if not self.reply.called:
                self._stop_timer()
                self.reply.errback(UpstreamError(400, "Bad Request: the request body broke off"))
            return
        log.failure(
            "WSGI app failed {when} for {method} {path!r}",
            failure,
            when=when,
            method=self.environ["REQUEST_METHOD"],
            path=self.path,
        )
        if not self.reply.called:
            self._stop_timer()
            self.reply.errback(UpstreamError(500, "Internal Server Error"))

    # BodySource

    def send(self, request: Request) -> Deferred[None]:
        """Stream the rest of the app's body into ``request`` (see ``UpstreamReply.send_body``)."""
        if self._body_done is not None:
            raise RuntimeError("the body of this reply was already taken")
        self._body_done = Deferred()
        self.request = request
        # The app governs the headers: no text/html added by twisted.web when it set no Content-Type.
        request.defaultContentType = None
        if gone(request):
            self._set_mode("discard")
            self._body_done.callback(None)
            return self._body_done
        if not self._set_mode("send"):
            self._body_done.callback(None)
            return self._body_done
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(lambda _: self._lost_client())
        return self._body_done

    def discard(self) -> None:
        """Drop the body: the pool thread closes the iterable without writing anything."""
        self._set_mode("discard")

    # IPushProducer, registered on the client's request while sending.

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._release_waiter()

    def stopProducing(self) -> None:
        self._lost_client()

    def _lost_client(self) -> None:
        self._client_gone = True
        self._release_waiter()

    def _write_in_reactor(self, chunk: bytes, done: threading.Event) -> None:
        if gone(self.request):
            self._client_gone = True
        if self._client_gone or self._mode != "send":
            done.set()
            return
        self.request.write(chunk)
        if self._paused:
            self._waiter = done
        else:
            done.set()

    def _body_finished(self, failure: Failure | None, complete: bool) -> None:
        request = self.request
        if request.producer is self and getattr(request, "channel", None) is not None:
            request.unregisterProducer()
        if failure is not None:
            log.failure(
                "WSGI app failed while sending the body of {method} {path!r}",
                failure,
                method=self.environ["REQUEST_METHOD"],
                path=self.path,
            )
        if (failure is not None or not complete) and not self._client_gone:
            # Finishing normally would make a cut body look whole (a last chunk, or a short
            # Content-Length the client might not check): cut the connection instead.
            channel = getattr(request, "channel", None)
            if channel is not None and channel.transport is not None:
                channel.transport.abortConnection()
        if self._body_done is not None and not self._body_done.called:
            self._body_done.callback(None)

    # -- pool thread -----------------------------------------------------------------------------

    def run(self) -> None:
        """The whole call, in a pool thread."""
        with self._mode_lock:
            abandoned = self._mode == "abandon"
            self._running = not abandoned
        if abandoned:
            # It waited in the queue past its 504, or its client left: running the app now would act
            # on a request nobody waits for (and a client that retried would have it done twice).
            self.body.close()
            self.reactor.callFromThread(self.upstream._call_done, self)
            return
        iterable: Iterable[bytes] | None = None
        complete = False
        failure: Failure | None = None
        try:
            with uwsgi_compat.request_scope(self._variables):
                try:
                    iterable = self.upstream.app(self.environ, cast(StartResponse, self._start_response))
                    for chunk in iterable:
                        if not isinstance(chunk, bytes):
                            raise TypeError(f"the app yielded {type(chunk).__name__}, not bytes")
                        if chunk and not self._emit(chunk):
                            break
                    else:
                        complete = True
                    if not self._decided:
                        self._decide()
                except _ClientGone:
                    pass
                except BaseException:
                    # BaseException too: a worker thread gets no KeyboardInterrupt, and an app's
                    # sys.exit() must not take the thread down without an answer to the client.
                    failure = Failure()
                finally:
                    if iterable is not None and hasattr(iterable, "close"):
                        try:
                            iterable.close()
                        except BaseException:
                            if failure is None:
                                failure = Failure()
        finally:
            self.body.close()
            self._report(failure, complete)

    def _report(self, failure: Failure | None, complete: bool) -> None:
        if not self._decided:
            assert failure is not None
            self.reactor.callFromThread(self._failed, failure, "before its response")
        elif self._verdict == "send":
            self.reactor.callFromThread(self._body_finished, failure, complete)
        elif failure is not None:
            self.reactor.callFromThread(self._failed, failure, "after its response was dropped")
        self.reactor.callFromThread(self.upstream._call_done, self)

    def _start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None:
            try:
                if self._decided:
                    # Too late to change the response: PEP 3333 says re-raise the app's error.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self._started:
            raise RuntimeError("start_response called a second time without exc_info")
        self._status = _parse_status(status)
        self._headers = strip_hop_by_hop(_parse_headers(headers))
        self._started = True
        return self._write

    def _write(self, data: bytes) -> None:
        """The legacy ``write`` callable ``start_response`` returns."""
        if not isinstance(data, bytes):
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        if data and not self._emit(data) and self._client_gone:
            raise _ClientGone("the client disconnected")

    def _emit(self, chunk: bytes) -> bool:
        """Hand one non-empty chunk on; ``False`` once nothing more should be produced."""
        if not self._decided:
            self._decide()
        if self._mode != "send":
            return False
        return self._write_blocking(chunk)

    def _decide(self) -> None:
        """Send the reply to the reactor and wait for the router's verdict."""
        if not self._started:
            if self._variables:
                # The seed's clock.py sets X-SSE-OFFLOAD and returns [] without start_response:
                # uWSGI lets the routing take it from there, and so do we.
                self._status, self._headers = (200, b"OK"), []
            else:
                raise RuntimeError("the app returned a body or ended without calling start_response")
        self._decided = True
        uwsgi_compat.close_scope()
        self.reactor.callFromThread(self._replied, self._status, self._headers, dict(self._variables))
        if not self._decision.wait(DECISION_WAIT):
            with self._mode_lock:
                if self._mode == "pending":
                    self._mode = "abandon"
        self._verdict = self._mode

    def _write_blocking(self, chunk: bytes) -> bool:
        done = threading.Event()
        self.reactor.callFromThread(self._write_in_reactor, chunk, done)
        while not done.wait(POLL_INTERVAL):
            if self._mode != "send":
                return False
        return self._mode == "send" and not self._client_gone


# --- the upstream ------------------------------------------------------------------------------------


class WSGIUpstream:
    """A WSGI app as the upstream, run on ``threadpool`` (started here, stopped by ``stop()``).

    Give it a pool of its own (not the reactor's): ``stop()`` stops it. Its size bounds how many
    requests the app handles at once; a request whose app call has not answered within ``timeout``
    seconds gets a 504, but its thread runs on until the app returns (Python cannot stop a thread).

    ``collect_headers`` and ``pull_headers`` are ``(HeaderName, VARIABLE)`` pairs (``collect-header``,
    ``pull-header``). ``forwarded`` trusts ``X-Forwarded-For/Proto/Host`` (a proxy in front).
    """

    def __init__(
        self,
        app: WSGIApplication,
        reactor: Any,
        threadpool: ThreadPool,
        *,
        collect_headers: Sequence[tuple[str, str]] = (),
        pull_headers: Sequence[tuple[str, str]] = (),
        timeout: float = 30.0,
        forwarded: bool = False,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        uwsgi_compat.install()
        self.app = app
        self.reactor: ThreadedTimers = reactor
        self.threadpool = threadpool
        self.rules = HeaderRules(collect_headers, pull_headers)
        self.timeout = timeout
        self.forwarded = forwarded
        self._calls: set[_WSGICall] = set()
        self._draining = False
        self._stopped: Deferred[None] | None = None
        if not threadpool.started:
            threadpool.start()

    @property
    def active(self) -> int:
        """Requests whose app call (body included) has not ended yet."""
        return len(self._calls)

    def forward(self, request: Request, variables: dict[str, str]) -> Deferred[UpstreamReply]:
        """Run the app for ``request``; fire with its reply, or fail with ``UpstreamError``."""
        if self._draining or self._stopped is not None:
            return fail(UpstreamError(503, "Service Unavailable"))
        try:
            call = _WSGICall(self, request, variables)
        except Exception:
            log.failure("building the WSGI environ failed for {uri!r}", uri=request.uri)
            return fail(UpstreamError(500, "Internal Server Error"))
        self._calls.add(call)
        self.threadpool.callInThread(call.run)
        return call.reply

    def _call_done(self, call: _WSGICall) -> None:
        self._calls.discard(call)

    def drain(self, timeout: float) -> Deferred[bool]:
        """Refuse new requests and those still queued for a thread (503); let those the app is running
        finish and their answers reach their clients, for at most ``timeout`` seconds. Fires ``True``
        when all did. ``stop()`` then releases whatever is left."""
        self._draining = True
        refused = sum(call.refuse_if_queued() for call in list(self._calls))
        # What is left and not running is a call already answered (504) and waiting for a thread only
        # to be skipped: nobody waits for it. _running only ever turns true, and no longer can now.
        running = {call for call in self._calls if call._running}
        transports = [close_after_answer(call.request) for call in running]
        log.info(
            "draining the WSGI app: {running} requests running, {refused} queued ones refused (503)",
            running=len(running),
            refused=refused,
        )
        return until_drained(
            self.reactor,
            lambda: bool(running & self._calls),
            [t for t in transports if t is not None],
            timeout,
        )

    def stop(self, grace: float = 5.0) -> Deferred[None]:
        """Release every waiting pool thread, then stop the pool (off the reactor thread: joining
        waits for app code still running, such as one that timed out), waiting at most ``grace``
        seconds for app code that does not return."""
        waiter: Deferred[None] = Deferred()
        if self._stopped is not None:
            self._stopped.addBoth(lambda _: waiter.callback(None))
            return waiter
        done: Deferred[None] = Deferred()
        self._stopped = done
        done.addBoth(lambda _: waiter.callback(None))
        for call in list(self._calls):
            call.abandon()

        def finished() -> None:
            if not done.called:  # the grace period may have ended the wait already
                done.callback(None)

        def join() -> None:
            try:
                self.threadpool.stop()
            except Exception:
                failure = Failure()
                self.reactor.callFromThread(log.failure, "stopping the WSGI thread pool failed", failure)
            self.reactor.callFromThread(finished)

        threading.Thread(target=join, name="ssebridge-wsgi-stop", daemon=True).start()

        def give_up(result: object, timeout: float) -> None:
            log.warn("WSGI app code still running after {grace}s; not waiting for it", grace=timeout)

        done.addTimeout(grace, cast(Any, self.reactor), onTimeoutCancel=give_up)
        return waiter


# --- loading -----------------------------------------------------------------------------------------


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _app_of(module: ModuleType, attribute: str, what: str) -> WSGIApplication:
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{what}: no {attribute!r} in it (the WSGI callable)")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{what}: {attribute!r} is a {type(target).__name__}, not a WSGI callable")
    return cast(WSGIApplication, target)


def load_wsgi_file(path: str | Path, attribute: str = "application") -> WSGIApplication:
    """uWSGI's ``wsgi-file``: run a Python file and return its ``application``.

    The file's directory goes first on ``sys.path`` (so it can import its neighbours), and the
    ``uwsgi`` stand-in is installed first. Raises ``ValueError`` with one line on any problem: a
    missing file, an import that fails, no callable ``attribute``.
    """
    uwsgi_compat.install()
    file = Path(path)
    what = f"wsgi-file {file}"
    if not file.is_file():
        raise ValueError(f"{what}: no such file")
    resolved = file.resolve()
    name = "uwsgi_file_" + re.sub(r"\W", "_", str(resolved.with_suffix("")))
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ValueError(f"{what}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    directory = str(resolved.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        sys.modules.pop(name, None)
        raise ValueError(f"{what}: importing it failed: {_one_line(e)}") from e
    return _app_of(module, attribute, what)


def load_wsgi_module(target: str) -> WSGIApplication:
    """``pkg.mod:app`` (the attribute defaults to ``application``; dots reach into objects).

    Raises ``ValueError`` with one line on any problem.
    """
    uwsgi_compat.install()
    module_name, _, attribute = target.partition(":")
    module_name, attribute = module_name.strip(), attribute.strip() or "application"
    what = f"module {target}"
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise ValueError(f"{what}: not a module name (expected pkg.module:callable)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ValueError(f"{what}: no module named {e.name!r}") from e
        raise ValueError(f"{what}: importing it failed: {_one_line(e)}") from e
    except (Exception, SystemExit) as e:
        raise ValueError(f"{what}: importing it failed: {_one_line(e)}") from e
    return _app_of(module, attribute, what)


def _is_an_upstream(upstream: WSGIUpstream) -> Upstream:
    """Never called: mypy checks here that ``WSGIUpstream`` satisfies the ``Upstream`` protocol."""
    return upstream
