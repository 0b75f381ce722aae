"""Heartbeats: a ``:`` comment to every ``sse`` stream once per interval, sent a slice at a time.

Every stream still gets one comment per ``interval`` (proxies keep quiet streams open, and the write to a
dead peer finds it), but the streams are split into ``STEPS`` groups, one sent every ``interval /
STEPS``. Why: a beat to 10,000 streams is 10,000 sends (~60 ms here), and an event that arrives
meanwhile waits for all of them; a slice is a tenth of that wait.

Streams join the groups in turn, so the groups stay about equal however the streams arrive (10,000
clients that connect within a second still make ten slices of 1,000). A stream's first comment comes
within one interval after it opened, and then one every interval.

May import: twisted, ``ssebridge.fanout``, ``ssebridge.frames`` (and ``Stream``, for its type).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.task import LoopingCall

from ssebridge import frames
from ssebridge.fanout import deliver as fan_out

if TYPE_CHECKING:
    from ssebridge.http.stream import Stream

__all__ = ["STEPS", "Heartbeat"]

#: Groups per interval: a beat is sent to a group every ``interval / STEPS`` seconds.
STEPS = 10


class Heartbeat:
    """The heartbeat of a set of streams: ``add`` each when it opens, ``discard`` it when it closes."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._groups: list[set[Stream]] = [set() for _ in range(STEPS)]
        self._next = 0  # the group sent at the next step
        self._joining = 0  # the group the next stream joins
        self._call: LoopingCall | None = None

    @property
    def running(self) -> bool:
        return self._call is not None

    def add(self, stream: Stream) -> None:
        self._groups[self._joining].add(stream)
        self._joining = (self._joining + 1) % STEPS

    def discard(self, stream: Stream) -> None:
        for group in self._groups:
            group.discard(stream)

    def start(self, interval: float) -> None:
        """A comment to every ``sse`` stream once per ``interval`` seconds; ``0`` sends none."""
        if interval > 0 and self._call is None:
            self._call = LoopingCall.withCount(self._steps)
            self._call.clock = self.reactor
            self._call.start(interval / STEPS, now=False)

    def stop(self) -> None:
        if self._call is not None and self._call.running:
            self._call.stop()
        self._call = None

    def _steps(self, due: int) -> None:
        # More than one step is due when the reactor was held up longer than a step: the groups
        # skipped are sent now (all of them, at most), so that none goes an interval without.
        streams: list[Stream] = []
        for _ in range(min(due, STEPS)):
            streams.extend(s for s in self._groups[self._next] if s.mode == "sse" and s.started)
            self._next = (self._next + 1) % STEPS
        # One shared comment through the fan-out loop: a send per client, as for an event.
        fan_out(frames.comment(), 0, streams)
