"""Why Redis closed a subscriber connection: asked of the server on the next connection, and logged.

A server that closes a subscriber without restarting has most likely hit its ``client-output-buffer-
limit pubsub`` (one message larger than the hard limit, or a backlog over the soft one for its
seconds): every channel on the connection loses what is published until the bridge has resubscribed.
The bridge cannot see that from the socket (Redis sends nothing of a message it will not deliver, and
just closes), so the next connection asks ``INFO server`` (a new ``run_id`` means a restart) and
``CONFIG GET client-output-buffer-limit`` (the figures), and one log line says what is likely.

A ``run_id`` is compared only with the previous one of the same address: after a failover (a
``sentinel://`` address) the next connection is to another server, whose ``run_id`` differs without
any restart, and the close is the failover's, not a buffer limit's.

Pure apart from logging. May import: nothing of ssebridge.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

__all__ = ["CloseDiagnosis", "pubsub_limit"]

log = Logger()


def pubsub_limit(reply: Any) -> str | None:
    """The ``pubsub`` class of a ``CONFIG GET client-output-buffer-limit`` reply, as a short text."""
    if not isinstance(reply, list) or len(reply) != 2 or not isinstance(reply[1], bytes):
        return None
    words = reply[1].split()
    for i in range(len(words) - 3):
        if words[i] == b"pubsub":
            try:
                hard, soft, seconds = (int(w) for w in words[i + 1 : i + 4])
            except ValueError:
                return None
            return f"pubsub hard {hard} bytes, soft {soft} bytes for {seconds} s; 0 is no limit"
    return None


def run_id_of(reply: Any) -> bytes | None:
    """The ``run_id`` of an ``INFO server`` reply."""
    if isinstance(reply, bytes):
        for line in reply.splitlines():
            if line.startswith(b"run_id:"):
                return line[len(b"run_id:") :].strip()
    return None


class CloseDiagnosis:
    """One server's connections in a row: whether the last one was closed by the server, and why."""

    __slots__ = ("server", "closed_by_server", "clean", "_run_id", "_restarted", "_address", "_moved")

    def __init__(self, server: str) -> None:
        self.server = server
        #: The last connection ended neither by our health check nor by a stop.
        self.closed_by_server = False
        #: And it ended cleanly (the server closed it), not broken (a reset, a network error).
        self.clean = False
        self._run_id: bytes | None = None
        self._restarted: bool | None = None
        #: The address of the server the last ``run_id`` is from (``None``: not known).
        self._address: str | None = None
        #: The previous connection's address, when the current one is to another server.
        self._moved: str | None = None

    def info(self, reply: Any, address: str | None = None) -> None:
        """An ``INFO server`` reply on a new connection (``None``: refused) to the server at ``address``
        (its peer address: a restart is only diagnosed when it is the same as the previous one's)."""
        run_id = run_id_of(reply)
        previous, self._run_id = self._run_id, run_id
        before, self._address = self._address, address
        self._moved = before if before is not None and address is not None and before != address else None
        if self._moved is not None:
            self._restarted = None
        else:
            self._restarted = None if previous is None or run_id is None else previous != run_id

    def explain(self, limit: str | None) -> None:
        """Log the likely cause of the last close, given the pub/sub limit (``None``: unreadable)."""
        if not self.closed_by_server:
            return
        self.closed_by_server = False
        if self._moved is not None:
            # A failover: the old server died or was demoted, and closed the connection doing so.
            log.info(
                "redis {server}: the new connection is to another server ({address}, the previous one was "
                "to {previous}): a failover, which is what ended the previous connection",
                server=self.server,
                address=self._address,
                previous=self._moved,
            )
            return
        if self._restarted:
            log.info("redis {server}: the server had restarted (new run_id)", server=self.server)
            return
        if not self.clean:
            # A reset or a network error: not what Redis does when it drops a client on purpose.
            return
        log.warn(
            "redis {server}: the server closed the subscriber connection {restart}; the likely cause is "
            "its client-output-buffer-limit for pub/sub clients ({limit}): a message larger than the "
            "hard limit, or a backlog over the soft one, disconnects the subscriber, and its channels "
            "lose what was published meanwhile. Keep max_message_size below it (README, Failure "
            "behaviour). A CLIENT KILL, or an ACL change revoking a channel, closes it the same way",
            server=self.server,
            restart="without restarting" if self._restarted is False else "(a restart is not known)",
            limit=limit or "not readable: CONFIG GET refused",
            cause="output-buffer-limit",
        )
