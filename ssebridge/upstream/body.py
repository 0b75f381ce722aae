"""A request body on its way to the upstream app: held in memory, a bounded amount at a time.

twisted.web reads a whole request body before it renders anything, into a temporary file past
100 kB: a client that sends all but the last byte of many large bodies fills the disk with files
nobody will read. Here the body of a request that goes to the upstream is kept in a small in-memory
buffer instead. Past ``BUFFER_HIGH`` bytes the client's connection is paused (TCP pushes back on the
client) until the consumer has taken the buffer down to ``BUFFER_LOW``; the request is handed to the
router as soon as the buffer fills (or the body ends), so the upstream reads the body as it arrives.

One ``RequestBody`` per request, fed on the reactor thread by ``BridgeRequest``. It has exactly one
consumer, either of:

- a WSGI app, through ``reader()``: a file-like ``wsgi.input`` whose reads block the app's pool
  thread until data, the end of the body, or a failure (the client left, the body deadline passed);
- an HTTP upstream, through ``producer()``: an ``IBodyProducer`` for ``twisted.web.client.Agent``,
  which pauses it while the upstream connection's buffer is full.

A consumer that stops before the end (the app did not read it all) leaves the rest to be read and
dropped, so the connection can carry the next request.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

__all__ = ["BUFFER_HIGH", "BUFFER_LOW", "BodyBroken", "BodyReader", "RequestBody"]

#: Buffered bytes past which the client is paused, and below which it is resumed.
BUFFER_HIGH = 256 * 1024
BUFFER_LOW = 64 * 1024
#: How often a WSGI thread blocked on a read wakes up to look again (a bound on a missed wake-up).
_WAIT_SLICE = 1.0


class BodyBroken(ConnectionAbortedError):
    """The body will not arrive whole: the client left, sent too much, or was too slow."""


class RequestBody:
    """The body of one request, between the client's connection and one consumer.

    ``pause`` and ``resume`` stop and restart reading from the client (the reactor thread only);
    ``call_from_thread`` brings a consumer thread's wake-up back to the reactor.
    """

    def __init__(
        self,
        declared: int | None,
        pause: Callable[[], None],
        resume: Callable[[], None],
        call_from_thread: Callable[..., Any],
    ) -> None:
        #: The length the client declared (``Content-Length``); ``None`` for a chunked body.
        self.declared = declared
        self.received = 0
        self.complete = False
        self.error: BaseException | None = None
        self._pause = pause
        self._resume = resume
        self._call_from_thread = call_from_thread
        self._lock = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._discarding = False
        self._taken = False
        self._producer: _Producer | None = None

    @property
    def buffered(self) -> int:
        return self._buffered

    @property
    def length(self) -> int | None:
        """The body's length when known: the whole of it once complete, else the declared length."""
        return self.received if self.complete else self.declared

    # -- the reactor side: fed by the request ---------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes of the body, as the client sent them (de-chunked)."""
        if not data or self.error is not None:
            return
        self.received += len(data)
        if self._discarding:
            return
        producer = self._producer
        if producer is not None and producer.writing and not self._chunks:
            producer.consumer_write(data)
            return
        with self._lock:
            self._chunks.append(data)
            self._buffered += len(data)
            # Set under the lock: a reader that drains the buffer then sees it, and wakes us.
            pause = self._buffered > BUFFER_HIGH and not self._paused
            if pause:
                self._paused = True
            self._lock.notify_all()
        if pause:
            self._pause()

    def finish(self) -> None:
        """The whole body has arrived."""
        if self.complete or self.error is not None:
            return
        with self._lock:
            self.complete = True
            self._lock.notify_all()
        if self._producer is not None:
            self._producer.flush()

    def fail(self, error: BaseException) -> None:
        """The body will not arrive whole: a consumer still reading is told so."""
        if self.complete or self.error is not None:
            return
        with self._lock:
            self.error = error
            self._chunks.clear()
            self._buffered = 0
            self._lock.notify_all()
        if self._producer is not None:
            self._producer.broken(error)

    @property
    def paused(self) -> bool:
        """Whether the client is held back because the consumer is behind (not the client's fault)."""
        return self._paused

    def _maybe_resume(self) -> None:
        if self._paused and self._buffered < BUFFER_LOW and self.error is None:
            self._paused = False
            self._resume()

    def discard(self) -> None:
        """The consumer wants no more: drop what is buffered, read and drop the rest."""
        with self._lock:
            self._discarding = True
            self._chunks.clear()
            self._buffered = 0
            self._lock.notify_all()
        self._maybe_resume()

    # -- consumers --------------------------------------------------------------------------------

    def _take(self) -> None:
        if self._taken:
            raise RuntimeError("a request body has one consumer")
        self._taken = True

    def reader(self) -> BodyReader:
        """The body as a blocking file (``wsgi.input``), to be read from another thread."""
        self._take()
        return BodyReader(self)

    def producer(self) -> IBodyProducer:
        """The body as an ``IBodyProducer`` for ``Agent`` (the reactor thread only)."""
        self._take()
        self._producer = _Producer(self)
        return self._producer

    def _pop(self, size: int) -> bytes:
        """Up to ``size`` bytes (all, if negative) of what is buffered; the lock is held."""
        if size < 0 or size >= self._buffered:
            data = b"".join(self._chunks)
            self._chunks.clear()
        else:
            parts: list[bytes] = []
            want = size
            while want > 0:
                chunk = self._chunks.popleft()
                if len(chunk) > want:
                    self._chunks.appendleft(chunk[want:])
                    chunk = chunk[:want]
                parts.append(chunk)
                want -= len(chunk)
            data = b"".join(parts)
        self._buffered -= len(data)
        return data


class BodyReader:
    """``wsgi.input`` over a ``RequestBody``: reads block until the bytes asked for are there.

    A read raises ``BodyBroken`` when the body will not arrive whole. ``close()`` (the WSGI call
    ends) leaves the rest of the body to be dropped.
    """

    def __init__(self, body: RequestBody) -> None:
        self._body = body
        self._closed = False

    @property
    def length(self) -> int | None:
        return self._body.length

    def _wake_reactor(self) -> None:
        body = self._body
        if body._paused and body._buffered < BUFFER_LOW:
            body._call_from_thread(body._maybe_resume)

    def read(self, size: int | None = -1) -> bytes:
        return self._take(-1 if size is None else size, lines=False)

    def readline(self, size: int | None = -1) -> bytes:
        return self._take(-1 if size is None else size, lines=True)

    def _take(self, size: int, lines: bool) -> bytes:
        """Up to ``size`` bytes (to the end, if negative), or up to a newline with ``lines``.

        What is buffered is taken as it comes rather than waited for as a whole: the client is
        paused while the buffer is full, so waiting for the whole would wait for ever.
        """
        body = self._body
        parts: list[bytes] = []
        got = 0
        while True:
            with body._lock:
                if body.error is not None:
                    raise BodyBroken(str(body.error))
                if body._chunks:
                    want = -1 if size < 0 else size - got
                    if lines:
                        joined = b"".join(body._chunks)
                        body._chunks.clear()
                        body._chunks.append(joined)
                        end = joined.find(b"\n")
                        if end >= 0 and (want < 0 or end < want):
                            want = end + 1
                    data = body._pop(want)
                    parts.append(data)
                    got += len(data)
                ended = (body.complete or body._discarding or self._closed) and not body._chunks
                if 0 <= size <= got or ended or (lines and parts and parts[-1].endswith(b"\n")):
                    break
            self._wake_reactor()
            with body._lock:
                if not body._chunks and body.error is None and not (body.complete or body._discarding):
                    body._lock.wait(_WAIT_SLICE)
        self._wake_reactor()
        return b"".join(parts)

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def close(self) -> None:
        """The consumer is done: the rest of the body is read and dropped (on the reactor thread)."""
        if not self._closed:
            self._closed = True
            self._body._call_from_thread(self._body.discard)


@implementer(IBodyProducer)
class _Producer:
    """``IBodyProducer`` over a ``RequestBody``, for ``Agent``: writes as the body arrives."""

    def __init__(self, body: RequestBody) -> None:
        self._body = body
        self.length: int | object = body.length if body.length is not None else UNKNOWN_LENGTH
        self._consumer: Any = None
        self._consumer_paused = False
        self._stopped = False
        self._done: Deferred[None] | None = None

    @property
    def writing(self) -> bool:
        return self._consumer is not None and not self._consumer_paused and not self._stopped

    def consumer_write(self, data: bytes) -> None:
        self._consumer.write(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self._consumer = consumer
        self._done = Deferred()
        self.flush()
        return self._done

    def flush(self) -> None:
        """Write what is buffered while the consumer takes it; fire once the body has all gone."""
        body = self._body
        if self._consumer is None or self._stopped:
            return
        while body._chunks and not self._consumer_paused:
            with body._lock:
                data = body._pop(-1)
            self._consumer.write(data)
        body._maybe_resume()
        if body.complete and not body._chunks and self._done is not None and not self._done.called:
            self._done.callback(None)

    def broken(self, error: BaseException) -> None:
        if self._done is not None and not self._done.called and not self._stopped:
            self._done.errback(BodyBroken(str(error)))

    def pauseProducing(self) -> None:
        self._consumer_paused = True

    def resumeProducing(self) -> None:
        self._consumer_paused = False
        self.flush()

    def stopProducing(self) -> None:
        # The upstream request failed or was cancelled: the Deferred is never fired (as Agent
        # expects of a stopped producer), and the rest of the body is dropped.
        self._stopped = True
        self._body.discard()
