"""Starting and stopping a bridge process: the exit statuses, the open-files limit, and leaving.

Shared by the single-process service, the worker pool's parent and its workers, and imported by none
of them in a circle: it imports nothing of ssebridge.
"""

from __future__ import annotations

import atexit
import os
import resource
import sys
from typing import Any

from twisted.logger import Logger

log = Logger()


class StartError(Exception):
    """What only the runtime can find wrong with a config (a systemd socket that was not passed):
    one line naming the setting, logged as ``could not start: ...`` and exit status 1."""


#: A worker's exit status when it can never start (its config or app): the pool stops, not retries.
EXIT_CANNOT_START = 2
#: File descriptors kept back from the stream limit for Redis, listeners, static files and upstreams.
FD_HEADROOM = 64


def stop_and_exit(reactor: Any, status: int) -> None:
    """Stop the reactor (once it runs: twistd starts services before it) and exit with ``status``.

    twistd always exits 0 after its reactor stops; a service that could not start must say otherwise
    (``Restart=on-failure``, scripts). Registered late, the exit runs first at interpreter exit, after
    twistd has cleaned up.
    """

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    atexit.register(leave)
    reactor.callWhenRunning(reactor.stop)


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard limit; return the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warn("could not raise the open-files limit to {hard}: {error}", hard=hard, error=str(e))
    return soft


def default_max_streams(fd_limit: int) -> int:
    """Streams allowed for an fd limit: every stream holds one descriptor; keep a tenth in reserve."""
    return max(1, fd_limit - max(FD_HEADROOM, fd_limit // 10))
