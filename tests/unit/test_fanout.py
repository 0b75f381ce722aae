"""The fan-out loop (``ssebridge.fanout``), both implementations, over real socket pairs; and the hub's
shared positions, which let streams of several channels share one frame.

Every loop test runs against the pure-Python loop and the C one (``ssebridge._fanout``; skipped, saying
so, when the extension is not built: ``python3 setup.py build_ext --inplace`` builds it in the checkout).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from ssebridge import fanout
from ssebridge.hub.channels import ChannelGroup
from ssebridge.interfaces import Subscriber
from ssebridge.publish.envelope import EventId, encode_envelope, envelope_channel
from ssebridge.testing import EventStreamParser
from tests.unit.test_hub import FakeSubscriber, confirm
from tests.unit.test_hub_resume import history
from tests.unit.test_hub_resume import make as resume_hub

Loop = Callable[[bytes, int, Sequence[Subscriber]], None]


@pytest.fixture(autouse=True)
def no_leaked_delayed_calls() -> Iterator[None]:
    """No reactor here: conftest's per-test reactor settle is not needed."""
    yield


@pytest.fixture(params=["python", "c"])
def loop(request: pytest.FixtureRequest) -> Loop:
    if request.param == "python":
        return fanout.deliver_python
    native = fanout.native()
    if native is None:
        pytest.skip("ssebridge._fanout is not built (python3 setup.py build_ext --inplace)")
    return native


class Shape:
    """What a taken-over stream offers the loop: a socket while it can take a direct send."""

    __slots__ = ()

    def __init__(self, sock: socket.socket | None, chunked: bool = False) -> None:
        self.direct = sock
        self.chunked = chunked
        self.frames = 0
        self.bytes = 0
        self.sent: list[tuple[bytes, int]] = []
        self.short: list[tuple[bytes, int]] = []
        self.positions: dict[bytes, EventId | None] | None = None
        self.mode = "sse"
        self.name_events = False

    def send(self, data: bytes, count: int = 1) -> None:
        self.sent.append((data, count))

    def send_short(self, payload: bytes, sent: int) -> None:
        self.short.append((payload, sent))


class Target(Shape):
    """Its attributes in a ``__dict__``: the loop reads and writes them by name."""


class SlotTarget(Shape):
    """Its attributes in ``__slots__``, as ``Stream``'s are: the C loop reads and writes them at their
    offsets in the object (see ``_fanout.c``), not by name."""

    __slots__ = ("direct", "chunked", "frames", "bytes", "sent", "short", "positions", "mode", "name_events")


@pytest.fixture(params=[SlotTarget, Target], ids=["slots", "dict"])
def make(request: pytest.FixtureRequest) -> type[Shape]:
    """Targets of either kind: every loop test holds for both."""
    kind: type[Shape] = request.param
    return kind


@pytest.fixture
def pairs() -> Iterator[Callable[[], tuple[socket.socket, socket.socket]]]:
    made: list[socket.socket] = []

    def pair() -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        a.setblocking(False)  # as Twisted's sockets are
        b.settimeout(5)
        made.extend((a, b))
        return a, b

    yield pair
    for s in made:
        s.close()


def _read(sock: socket.socket, size: int) -> bytes:
    out = b""
    while len(out) < size:
        out += sock.recv(size - len(out))
    return out


def _fill(sock: socket.socket) -> None:
    """Fill the kernel's buffers between ``sock`` and its peer (which does not read)."""
    while True:
        try:
            sock.send(b"f" * 65536)
        except BlockingIOError:
            return


def test_direct_targets_get_the_frame_in_one_send_each_and_are_counted(
    loop: Loop, pairs: Any, make: type[Shape]
) -> None:
    ends = [pairs() for _ in range(3)]
    plain = [make(a) for a, _ in ends[:2]]
    chunked = make(ends[2][0], chunked=True)
    data = b"data: hello\n\n"
    loop(data, 2, [*plain, chunked])
    for _, b in ends[:2]:
        assert _read(b, len(data)) == data
    chunk = b"d\r\n" + data + b"\r\n"
    assert _read(ends[2][1], len(chunk)) == chunk
    for t in (*plain, chunked):
        assert (t.frames, t.bytes, t.sent, t.short) == (2, len(data), [], [])


def test_targets_without_a_direct_socket_get_their_own_send(
    loop: Loop, pairs: Any, make: type[Shape]
) -> None:
    a, b = pairs()
    queued = make(None)  # paused, or something queued: its send queues behind
    plain = FakeSubscriber()  # no direct attribute at all
    direct = make(a)
    loop(b"data: x\n\n", 1, [queued, plain, direct])
    assert queued.sent == [(b"data: x\n\n", 1)] and queued.frames == 0  # counted by its own send
    assert plain.received == [(b"data: x\n\n", 1)]
    assert _read(b, 9) == b"data: x\n\n" and direct.sent == []


def test_what_the_kernel_does_not_take_goes_to_send_short_unframed_again(
    loop: Loop, pairs: Any, make: type[Shape]
) -> None:
    full_a, _ = pairs()
    _fill(full_a)
    part_a, part_b = pairs()
    part_a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    _fill(part_a)
    part_b.recv(8192)  # some room again, less than the frame
    full, part = make(full_a, chunked=True), make(part_a, chunked=True)
    data = b"z" * 200_000
    loop(data, 1, [full, part])
    ((payload_full, sent_full),) = full.short
    ((payload_part, sent_part),) = part.short
    assert sent_full == 0
    assert 0 < sent_part < len(payload_part)
    # One chunk for the call, shared by both: never a copy per client.
    assert payload_full is payload_part
    assert payload_full == b"30d40\r\n" + data + b"\r\n"
    assert (full.frames, full.bytes) == (1, len(data))


def test_sends_in_another_order_than_the_targets_still_report_each_target_its_own_rest(
    loop: Loop, pairs: Any, make: type[Shape]
) -> None:
    """The C loop sends in the order of the fds, not of the targets (see ``_fanout.c``): what it hands
    back (``send_short``, counters) must still reach the target it belongs to, with that target's
    framing. The targets here come in the reverse order of their fds, and differ in all three."""
    ends = [pairs() for _ in range(4)]
    for a, _ in ends[:2]:
        _fill(a)
    full_chunked = make(ends[0][0], chunked=True)
    full_plain = make(ends[1][0])
    fine_chunked = make(ends[2][0], chunked=True)
    fine_plain = make(ends[3][0])
    data = b"data: ordered\n\n"
    chunk = b"%x\r\n" % len(data) + data + b"\r\n"
    loop(data, 3, [fine_plain, fine_chunked, full_plain, full_chunked])
    assert full_chunked.short == [(chunk, 0)]
    assert full_plain.short == [(data, 0)]
    assert fine_chunked.short == fine_plain.short == []
    assert _read(ends[2][1], len(chunk)) == chunk
    assert _read(ends[3][1], len(data)) == data
    for t in (full_chunked, full_plain, fine_chunked, fine_plain):
        assert (t.frames, t.bytes, t.sent) == (3, len(data), [])


def test_a_gone_peer_or_a_closed_socket_is_left_to_the_reactor(
    loop: Loop, pairs: Any, make: type[Shape]
) -> None:
    a, b = pairs()
    b.close()
    c, _ = pairs()
    c.close()  # fileno() is -1 now
    d, e = pairs()
    gone, closed, alive = make(a), make(c), make(d)
    loop(b"data: y\n\n", 1, [gone, closed, alive])
    assert gone.short == closed.short == gone.sent == closed.sent == []
    assert _read(e, 9) == b"data: y\n\n"


def test_a_target_that_detaches_others_does_not_disturb_the_loop(
    loop: Loop, pairs: Any, make: type[Shape]
) -> None:
    """The loop works on its own snapshot: a send may close streams, which leave the caller's set."""
    a, b = pairs()
    members: set[Any] = set()

    class Closer(Target):
        def send(self, data: bytes, count: int = 1) -> None:
            super().send(data, count)
            members.clear()

    closer, direct = Closer(None), make(a)
    members.update((closer, direct))
    loop(b"data: z\n\n", 1, members)  # type: ignore[arg-type]
    assert closer.sent and _read(b, 9) == b"data: z\n\n"


def test_an_unset_direct_slot_is_no_direct_socket(loop: Loop, pairs: Any) -> None:
    """The C loop reads slots without a lookup (see ``_fanout.c``), but gives what the lookup would: an
    unset ``direct`` slot is no direct socket, so the target gets its own send."""
    unset = SlotTarget(None)
    del unset.direct
    a, b = pairs()
    loop(b"data: s\n\n", 1, [unset, SlotTarget(a)])
    assert unset.sent == [(b"data: s\n\n", 1)]
    assert _read(b, 9) == b"data: s\n\n"


def test_an_exception_from_a_target_propagates(loop: Loop) -> None:
    class Broken(Target):
        def send(self, data: bytes, count: int = 1) -> None:
            raise RuntimeError("broken")

    with pytest.raises(RuntimeError, match="broken"):
        loop(b"data\n\n", 1, [Broken(None)])


def test_implementation_is_named() -> None:
    assert fanout.IMPLEMENTATION in ("c", "python")
    assert (fanout.IMPLEMENTATION == "c") == (fanout.deliver is not fanout.deliver_python)


# Shared positions: streams of several channels at the same positions get one frame.


def _multi() -> FakeSubscriber:
    s = FakeSubscriber()
    s.positions = {b"a": None, b"b": None}
    return s


def _live(group: ChannelGroup, channel: bytes, i: int) -> None:
    group.deliver({envelope_channel(channel): [encode_envelope((i, 0), (i - 1, 0), b"%s%d" % (channel, i))]})


def _ids(s: FakeSubscriber) -> list[str]:
    parser = EventStreamParser()
    for data, _ in s.received:
        parser.feed(data)
    return [e.id for e in parser.events]


def test_streams_at_the_same_positions_share_one_frame_and_split_when_one_falls_behind() -> None:
    hub, group, store = resume_hub()
    first, second, late = _multi(), _multi(), _multi()
    for s in (first, second):
        hub.attach("s", b"a", s)
        hub.attach("s", b"b", s)
    hub.attach("s", b"a", late)
    hub.attach("s", b"b", late, resume=True, position=(0, 0))  # replaying b: held there
    confirm(group, b"a")
    confirm(group, b"b")
    _live(group, b"a", 1)
    # Three streams connected apart, at the same positions: one frame for all of them.
    assert first.received[-1][0] is second.received[-1][0] is late.received[-1][0]
    assert first.positions is second.positions is late.positions
    _live(group, b"b", 1)  # held for `late`, which splits off: the others advance alone
    assert late.positions == {b"a": (1, 0), b"b": None}
    assert first.positions is second.positions and first.positions == {b"a": (1, 0), b"b": (1, 0)}
    _live(group, b"a", 2)
    assert first.received[-1][0] is second.received[-1][0]
    assert _ids(late) == ["a:1-0", "a:2-0"]
    store.reads[-1][2].callback(history(1))  # b's history: event 1
    assert _ids(late) == ["a:1-0", "a:2-0", "a:2-0,b:1-0"]
    _live(group, b"a", 3)  # at the same positions again: merged back
    assert first.received[-1][0] is late.received[-1][0]
    assert first.positions is late.positions
    for s in (first, second):
        assert _ids(s) == ["a:1-0", "a:1-0,b:1-0", "a:2-0,b:1-0", "a:3-0,b:1-0"]
    assert _ids(late)[-1] == "a:3-0,b:1-0"


def test_a_read_of_several_channels_is_one_send_per_stream_of_several_channels() -> None:
    hub, group, _ = resume_hub()
    every = [FakeSubscriber() for _ in range(2)]
    some, single = FakeSubscriber(), FakeSubscriber()
    for s in every:
        s.positions = {b"a": None, b"b": None, b"c": None}
    some.positions = {b"a": None, b"c": None}
    for s in every:
        for c in (b"a", b"b", b"c"):
            hub.attach("s", c, s)
    hub.attach("s", b"a", some)
    hub.attach("s", b"c", some)
    hub.attach("s", b"b", single)
    for c in (b"a", b"b", b"c"):
        confirm(group, c)
    group.deliver({b"a": [b"1", b"2"], b"b": [b"3"], b"c": [b"4"]})
    first, second = every
    assert len(first.received) == len(second.received) == 1
    assert first.received[0][0] is second.received[0][0]  # one frame for both
    assert first.received[0] == (b"data: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n", 4)
    assert some.received == [(b"data: 1\n\ndata: 2\n\ndata: 4\n\n", 3)]
    assert single.received == [(b"data: 3\n\n", 1)]
    assert group.stats.frames_delivered == 4 + 4 + 3 + 1


def test_events_of_several_channels_in_one_read_are_one_send_with_ids_in_order() -> None:
    hub, group, _ = resume_hub()
    first, second = _multi(), _multi()
    for s in (first, second):
        hub.attach("s", b"a", s)
        hub.attach("s", b"b", s)
    confirm(group, b"a")
    confirm(group, b"b")
    group.deliver(
        {
            envelope_channel(b"a"): [encode_envelope((1, 0), (0, 0), b"a1")],
            envelope_channel(b"b"): [encode_envelope((1, 0), (0, 0), b"b1")],
        }
    )
    assert len(first.received) == len(second.received) == 1
    assert first.received[0][0] is second.received[0][0] and first.received[0][1] == 2
    assert _ids(first) == ["a:1-0", "a:1-0,b:1-0"]


class Failing(Target):
    def send(self, data: bytes, count: int = 1) -> None:
        raise RuntimeError("a subscriber's send failed")


def test_a_target_whose_send_fails_does_not_cut_the_others_short(
    loop: Loop, pairs: Any, make: type[Shape]
) -> None:
    """The first error is raised after every other target was served: a direct send already on the wire
    still gets the rest of its frame queued, and later targets still get theirs."""
    full_a, full_b = pairs()
    _fill(full_a)  # the kernel takes none of the next frame: it must be queued by send_short
    ok_a, ok_b = pairs()
    short, failing, after_own, direct = make(full_a), Failing(None), make(None), make(ok_a)
    with pytest.raises(RuntimeError, match="send failed"):
        loop(b"data: x\n\n", 1, [short, failing, after_own, direct])
    assert short.short == [(b"data: x\n\n", 0)] and short.frames == 1
    assert after_own.sent == [(b"data: x\n\n", 1)]
    assert _read(ok_b, 9) == b"data: x\n\n" and direct.frames == 1
