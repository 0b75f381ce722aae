"""Counters the bridge keeps about itself: plain integers, cheap to bump on the hot path.

The metrics endpoint and the logs read them; nothing here renders anything.
"""

from __future__ import annotations


class Stats:
    """Process-wide counters. Attributes only grow, except the gauges noted."""

    __slots__ = (
        "streams_opened",
        "streams_closed",
        "streams_refused",
        "slow_clients_disconnected",
        "messages_received",
        "messages_oversize",
        "frames_delivered",
        "bytes_delivered",
        "redis_connects",
        "redis_disconnects",
        "subscribe_refusals",
        "messages_malformed",
        "catch_ups",
        "upstream_errors",
    )

    def __init__(self) -> None:
        self.streams_opened = 0
        self.streams_closed = 0
        self.streams_refused = 0
        self.slow_clients_disconnected = 0
        self.messages_received = 0
        self.messages_oversize = 0
        self.frames_delivered = 0
        self.bytes_delivered = 0
        self.redis_connects = 0
        self.redis_disconnects = 0
        #: Error replies to SUBSCRIBE (NOAUTH, NOPERM...): each refusal, retries included.
        self.subscribe_refusals = 0
        #: Messages on an envelope channel that are not envelopes (never delivered).
        self.messages_malformed = 0
        #: Reads of history to fill what a channel missed (a reconnect, or a hole in the ids).
        self.catch_ups = 0
        self.upstream_errors = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}
