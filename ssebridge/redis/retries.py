"""Refused subscriptions of one Redis server: counted, logged once, retried with a bounded backoff.

A SUBSCRIBE can be refused while the connection itself is fine: ``NOAUTH`` (Redis restarted with a
password the bridge does not have), ``NOPERM`` (an ACL that no longer grants the channel). The
connection stays; each refused channel is asked for again after 0.5 s, doubling up to 5 s, each delay
jittered down by up to half so that channels refused together do not retry in step. The log says so
once per channel and error in a row, and once more when the server accepts it.

May import: nothing of ssebridge.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["SUBSCRIBE_RETRY_INITIAL", "SUBSCRIBE_RETRY_MAX", "SubscribeRetries", "retry_delay"]

log = Logger()

SUBSCRIBE_RETRY_INITIAL = 0.5
SUBSCRIBE_RETRY_MAX = 5.0


def retry_delay(refusals: int) -> float:
    """Seconds before retrying a subscription refused ``refusals`` times in a row (bounded, jittered)."""
    base = min(SUBSCRIBE_RETRY_MAX, SUBSCRIBE_RETRY_INITIAL * 2.0 ** min(refusals - 1, 16))
    return base * random.uniform(0.5, 1.0)


class SubscribeRetries:
    """The refused channels of one server, and the retries scheduled for them."""

    def __init__(self, reactor: IReactorTime, server: str, resubscribe: Callable[[bytes], None]) -> None:
        self.reactor = reactor
        self.server = server
        self.resubscribe = resubscribe
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
                "redis {server}: SUBSCRIBE {channel!r} refused ({error}); retrying with backoff",
                server=self.server,
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
                "redis {server}: SUBSCRIBE {channel!r} accepted after {refusals} refusals",
                server=self.server,
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
