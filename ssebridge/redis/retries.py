"""Refused subscriptions of one Redis server: counted, logged once, retried with a bounded backoff.

A SUBSCRIBE (or a PSUBSCRIBE) can be refused while the connection itself is fine: ``NOAUTH`` (Redis
restarted with a password the bridge does not have), ``NOPERM`` (an ACL that no longer grants the
channel). The connection stays; each refused channel is asked for again after 0.5 s, doubling up to
5 s, each delay jittered down by up to half so that channels refused together do not retry in step.
The log says so once per channel and error in a row, and once more when the server accepts it.

``Subscriptions`` is the bookkeeping of one kind of subscription (channels with SUBSCRIBE, patterns
with PSUBSCRIBE) that the transport keeps twice, once per kind: what is wanted, what is in flight,
what is answered, and the retries.

May import: nothing of ssebridge.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = [
    "SUBSCRIBE_RETRY_INITIAL",
    "SUBSCRIBE_RETRY_MAX",
    "SubscribeRetries",
    "Subscriptions",
    "retry_delay",
]

log = Logger()

SUBSCRIBE_RETRY_INITIAL = 0.5
SUBSCRIBE_RETRY_MAX = 5.0


def retry_delay(refusals: int) -> float:
    """Seconds before retrying a subscription refused ``refusals`` times in a row (bounded, jittered)."""
    base = min(SUBSCRIBE_RETRY_MAX, SUBSCRIBE_RETRY_INITIAL * 2.0 ** min(refusals - 1, 16))
    return base * random.uniform(0.5, 1.0)


class SubscribeRetries:
    """The refused channels of one server, and the retries scheduled for them."""

    def __init__(
        self,
        reactor: IReactorTime,
        server: str,
        resubscribe: Callable[[bytes], None],
        command: str = "SUBSCRIBE",
    ) -> None:
        self.reactor = reactor
        self.server = server
        self.resubscribe = resubscribe
        #: What the log lines name (``PSUBSCRIBE`` for the patterns' retries).
        self.command = command
        #: Refusals in a row, per channel (what the backoff grows with).
        self.refusals: dict[bytes, int] = {}
        self._calls: dict[bytes, IDelayedCall] = {}
        self._logged: dict[bytes, str] = {}

    def refused(self, channel: bytes, error: str) -> None:
        """The server refused ``channel``: log it (once per error in a row) and schedule a retry."""
        refusals = self.refusals[channel] = self.refusals.get(channel, 0) + 1
        if self._logged.get(channel) != error:
            # A refusal lasting hours must not flood the log.
            self._logged[channel] = error
            log.error(
                "redis {server}: {command} {channel!r} refused ({error}); retrying with backoff",
                server=self.server,
                command=self.command,
                channel=channel,
                error=error,
            )
        self.cancel(channel)
        self._calls[channel] = self.reactor.callLater(retry_delay(refusals), self._fire, channel)

    def accepted(self, channel: bytes) -> None:
        """The server confirmed ``channel``: the backoff starts over."""
        self.cancel(channel)
        refusals = self.refusals.pop(channel, 0)
        if refusals:
            self._logged.pop(channel, None)
            log.info(
                "redis {server}: {command} {channel!r} accepted after {refusals} refusals",
                server=self.server,
                command=self.command,
                channel=channel,
                refusals=refusals,
            )

    def forget(self, channel: bytes) -> None:
        """Nobody wants ``channel`` any longer."""
        self.cancel(channel)
        self.refusals.pop(channel, None)
        self._logged.pop(channel, None)

    def cancel(self, channel: bytes) -> None:
        call = self._calls.pop(channel, None)
        if call is not None and call.active():
            call.cancel()

    def cancel_all(self) -> None:
        """Drop every scheduled retry (a reconnect subscribes every channel anyway); counts stay."""
        for channel in list(self._calls):
            self.cancel(channel)

    def _fire(self, channel: bytes) -> None:
        self._calls.pop(channel, None)
        self.resubscribe(channel)


class Subscriptions:
    """One kind of subscription on one server: the names wanted, the commands in flight, the retries.

    ``send(command, name)`` writes one command if the connection is up and says whether it did;
    ``confirmed`` and ``failed`` are the sink's reports. One name per command: a multi-name SUBSCRIBE
    would make one reply per name and desynchronise the reply loop's FIFO.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        server: str,
        command: bytes,
        undo: bytes,
        send: Callable[[bytes, bytes], bool],
        confirmed: Callable[[bytes], None],
        failed: Callable[[bytes, str], None],
    ) -> None:
        self.command = command
        self.undo = undo
        self._write = send
        self._confirmed = confirmed
        self._failed = failed
        self.wanted: set[bytes] = set()
        # Commands sent and not yet answered, per name: a name is confirmed (or refused) to the sink
        # only by the answer to its last one, so an answer that belongs to an older command (one
        # followed by an undo and a new command) never starts a stream early.
        self.inflight: dict[bytes, int] = {}
        self.retries = SubscribeRetries(reactor, server, self._retry, command.decode())

    def add(self, name: bytes) -> None:
        self.wanted.add(name)
        self.retries.cancel(name)
        if self._write(self.command, name):
            self.inflight[name] = self.inflight.get(name, 0) + 1

    def remove(self, name: bytes) -> None:
        self.wanted.discard(name)
        self.retries.forget(name)
        self._write(self.undo, name)

    def resend(self) -> Iterable[tuple[bytes, bytes]]:
        """A new connection: every wanted name is asked for again (the caller writes them at once)."""
        self.inflight = dict.fromkeys(self.wanted, 1)
        return [(self.command, name) for name in self.wanted]

    def answered(self, name: bytes, error: str | None) -> None:
        """The server answered a command of this kind for ``name`` (``error``: it refused)."""
        left = self.inflight.get(name, 0) - 1
        if left > 0:
            self.inflight[name] = left
            return
        self.inflight.pop(name, None)
        # An answer for a name nobody wants any longer is followed by the undo command.
        if name not in self.wanted:
            return
        if error is None:
            self.retries.accepted(name)
            self._confirmed(name)
        else:
            self.retries.refused(name, error)
            self._failed(name, error)

    def _retry(self, name: bytes) -> None:
        if name in self.wanted and name not in self.inflight and self._write(self.command, name):
            self.inflight[name] = 1
