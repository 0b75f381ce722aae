"""The access log: one line for every request the bridge answers, under the ``ssebridge.access`` logger.

A request answered by the bridge (a static file, the metrics, a 404) or by the upstream app (WSGI or
proxied) gets its line when its answer is complete, or when the client leaves before that. A request
that becomes a stream gets none here: its ``stream closed`` line (``ssebridge.http.stream``, with
``stream = true``) is its access line, written when the stream ends, with its duration and bytes; one
written at its start would say nothing of either. So no request is logged twice. (Its ``stream
opened`` line carries the method, path and status as fields, for shippers that join the two.)

The path is logged without the values of its query string (tokens and signatures travel there): only
the names of its parameters are kept, ``/events?token&since``.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.logger import Logger

from ssebridge.logs import printable

__all__ = ["STREAM_MARK", "log_access", "logged_path", "mark_stream", "started"]

log = Logger(namespace="ssebridge.access")

#: The attribute set on a request that became a stream: its stream writes its own line.
STREAM_MARK = "ssebridge_stream"
#: The attribute holding when a request began (``time.monotonic()``), set by the site's request.
_STARTED = "ssebridge_started"
#: Set once a request's line is written: whichever of its ends comes first writes it.
_LOGGED = "ssebridge_logged"


def mark_stream(request: Any) -> None:
    """Note that ``request`` is a stream's: the stream's close line is its access line."""
    setattr(request, STREAM_MARK, True)


def started(request: Any) -> None:
    """Note when ``request`` began, for the duration of its line."""
    setattr(request, _STARTED, time.monotonic())


def logged_path(uri: bytes) -> str:
    """The request target as logged: the path, and of the query string the parameter names alone."""
    path, question, query = uri.partition(b"?")
    if question:
        names = [part.partition(b"=")[0] for part in query.split(b"&") if part]
        path += b"?" + b"&".join(names)
    return printable(path)


def _client(request: Any) -> str:
    try:
        address = request.getClientAddress()
    except Exception:
        return "-"
    return str(getattr(address, "host", None) or address)


def log_access(request: Any, gone: bool = False, status: int | None = None, sent: int | None = None) -> None:
    """Write ``request``'s access line, once (nothing for a stream's request: its stream writes one).

    ``gone``: the client left before the answer was complete; the status is what had been decided.
    ``status`` and ``sent``: an answer written past twisted.web (a body refused before it is read).
    """
    if getattr(request, STREAM_MARK, False) or getattr(request, _LOGGED, False):
        return
    setattr(request, _LOGGED, True)
    began = getattr(request, _STARTED, None)
    duration = time.monotonic() - began if began is not None else 0.0
    log.info(
        '{client} "{method} {path}" {status} {bytes} {duration:.3f}s' + (" (client gone)" if gone else ""),
        client=_client(request),
        method=printable(request.method or b"-"),
        path=logged_path(request.uri or b""),
        status=int(request.code if status is None else status),
        bytes=int(request.sentLength if sent is None else sent),
        duration=duration,
        stream=False,
        gone=gone,
    )
