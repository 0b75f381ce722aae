"""What a subscribed channel and a subscribed pattern share: the transport names it is subscribed
under, and whether the server has confirmed every one of them (or refuses one)."""

from __future__ import annotations

from ssebridge.hub.stats import Stats

__all__ = ["Subscription"]


class Subscription:
    """One subscription of the hub, under one or more transport names (a channel, or a pattern, and
    its envelope form): confirmed once every name is, unconfirmed when the connection is lost."""

    __slots__ = ("name", "stats", "confirmed", "refused", "_names", "_unconfirmed")

    def __init__(self, name: bytes, names: tuple[bytes, ...], stats: Stats) -> None:
        self.name = name
        self.stats = stats
        self.confirmed = False
        #: The server's error while it refuses the subscription, else ``None``.
        self.refused: str | None = None
        self._names = names
        self._unconfirmed = set(names)

    @property
    def names(self) -> tuple[bytes, ...]:
        """The transport names it is subscribed under."""
        return self._names

    def confirm_name(self, name: bytes) -> bool:
        """The server confirmed ``name``; whether that completes the subscription (the caller then
        releases its waiting subscribers)."""
        self._unconfirmed.discard(name)
        if self._unconfirmed or self.confirmed:
            return False
        self.confirmed = True
        self.refused = None
        return True

    def unconfirm(self) -> None:
        """The connection was lost: every name must be confirmed again."""
        self.confirmed = False
        self._unconfirmed = set(self._names)

    def unconfirm_name(self, name: bytes) -> None:
        """The server dropped ``name`` alone (a Redis Cluster slot moved): it must be confirmed again."""
        if name in self._names:
            self.confirmed = False
            self._unconfirmed.add(name)
