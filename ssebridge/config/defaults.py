"""Every setting's default value, once: ``Config`` takes its defaults from here, and so may any other
module that needs one (the runtime's backlog, say).

Nearly a leaf: it imports only the app-facing header name of ``ssebridge.publish`` and the routing
language's limits (``ssebridge.routing.limits``, a leaf), both Twisted-free, so anything may import it
without creating an import circle, and a tool that only wants a default loads no Twisted.
"""

from __future__ import annotations

from ssebridge.publish.offload import OFFLOAD_HEADER
from ssebridge.routing.limits import MAX_CHANNELS

__all__ = [
    "ACCESS_LOG",
    "BACKLOG",
    "BODY_MIN_RATE",
    "BODY_TIMEOUT",
    "CLIENT_BUFFER",
    "CONFIRM_TIMEOUT",
    "DRAIN_TIMEOUT",
    "FORWARDED",
    "HEADER_TIMEOUT",
    "HEARTBEAT",
    "IDLE_TIMEOUT",
    "LISTEN",
    "MAX_BODY",
    "MAX_CHANNELS",
    "MAX_CONNECTIONS",
    "MAX_MESSAGE_SIZE",
    "MAX_STREAMS",
    "OFFLOAD_HEADER",
    "OFFLOAD_THREADS",
    "REPLAY_LIMIT",
    "RETRY_MS",
    "SHUTDOWN_WINDOW",
    "STRICT",
    "THREADS",
    "UPSTREAM_TIMEOUT",
    "WORKERS",
]

#: Where the bridge listens when the config names no listener: loopback only, so a bare start exposes
#: nothing.
LISTEN = "tcp:9090:interface=127.0.0.1"
#: Pending connections the kernel queues per listener when its endpoint names no ``backlog``:
#: browsers reconnect in crowds (Twisted's own default is 50).
BACKLOG = 4096
#: uWSGI's ``offload-threads``: accepted for compatibility, not needed by the reactor.
OFFLOAD_THREADS = 1
#: Seconds between heartbeat comments on each SSE stream; 0 turns them off.
HEARTBEAT = 15.0
#: Most streams open at once; 0 derives it from the open-files limit.
MAX_STREAMS = 0
#: Bytes queued for one slow client before it is dropped.
CLIENT_BUFFER = 1024 * 1024
#: Largest Redis message delivered, in bytes; 0 means no limit.
MAX_MESSAGE_SIZE = 1024 * 1024
#: Events read from a channel's history per read when a client resumes or a channel catches up.
REPLAY_LIMIT = 1000
#: Seconds a new stream waits for Redis to confirm its subscription before starting anyway.
CONFIRM_TIMEOUT = 3.0
#: Seconds a client has to send its request headers; 0 turns the deadline off.
HEADER_TIMEOUT = 10.0
#: Seconds over which open streams are closed on shutdown, so clients do not reconnect at once.
SHUTDOWN_WINDOW = 5.0
#: Seconds the requests the upstream app is already running get to finish on shutdown (they run
#: beside the streams' closing window, not after it); new ones get 503 meanwhile.
DRAIN_TIMEOUT = 10.0
#: The SSE ``retry:`` hint, in milliseconds, sent to streams closed on shutdown.
RETRY_MS = 3000
#: Bridge processes sharing the listeners; 1 runs in-process.
WORKERS = 1
#: Seconds an idle keep-alive connection is kept (streams are never idle-timed out).
IDLE_TIMEOUT = 75.0
#: Largest request body accepted (for the upstream app), in bytes.
MAX_BODY = 10 * 1024 * 1024
#: Seconds a request body may pause, and after which it must average ``BODY_MIN_RATE``; 0: off.
BODY_TIMEOUT = 30.0
#: Bytes a second a request body must average after its first ``BODY_TIMEOUT`` seconds; 0: any.
BODY_MIN_RATE = 1024.0
#: Most open connections that are not streams; 0 derives it from the open-files limit.
MAX_CONNECTIONS = 0
#: Threads running the in-process WSGI app.
THREADS = 10
#: Seconds to wait for the upstream's response headers before answering 504.
UPSTREAM_TIMEOUT = 30.0
#: Whether X-Forwarded-For/-Proto/-Host are trusted (in-process) or sent (proxy).
FORWARDED = False
#: Whether every request gets an access line in the log (a stream's is its close line).
ACCESS_LOG = True
#: Whether an unknown key is an error (else a warning with a suggestion).
STRICT = False
# MAX_CHANNELS (imported above, 16): most channels plus patterns one stream may hold; past it, 400.
# OFFLOAD_HEADER (imported above): the response header by which an upstream hands a connection over
# with no rule configured; apps import the same name from ssebridge.publish.
