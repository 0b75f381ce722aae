"""``ssebridge.redis.streams``: the read's arguments, and how its reply becomes events and a gap.

Pure; the same cases against Redis are in tests/integration/test_history.py."""

from __future__ import annotations

from typing import Any

import pytest

from ssebridge.interfaces import HistoryEvent, Replay
from ssebridge.redis.streams import read_arguments, replay_from

MAX = 2**64 - 1


def entry(ms: int, seq: int = 0, *fields: bytes) -> list[Any]:
    return [f"{ms}-{seq}".encode(), list(fields or (b"d", b"x"))]


def reply(
    entries: list[Any],
    *,
    last: str,
    first: str = "",
    deleted: str = "0-0",
    added: int | None = None,
    length: int | None = None,
) -> list[Any]:
    """What READ_SCRIPT returns for a stream (``added`` defaults to ``length``: nothing ever removed)."""
    n = len(entries) if length is None else length
    return [last.encode(), deleted.encode(), n if added is None else added, n, first.encode(), entries]


def test_no_key() -> None:
    assert replay_from(None, 10, []) == Replay(())
    assert replay_from((0, 0), 10, []) == Replay(()), "0-0 is the start of every history, not a gap"
    assert replay_from((5, 1), 10, []) == Replay((), "unknown")


def test_fields_and_order() -> None:
    got = replay_from(
        (1, 0),
        10,
        reply(
            [entry(2, 0, b"d", b"a\nb", b"e", b"tick", b"r", b"250"), entry(3, 0, b"e", b"only")],
            last="3-0",
            first="1-0",
            length=3,
        ),
    )
    assert got == Replay(
        (HistoryEvent((2, 0), b"a\nb", b"tick", b"250"), HistoryEvent((3, 0), b"", b"only")), None, (3, 0)
    )


def test_position_none_gives_only_the_newest_id() -> None:
    assert replay_from(None, 0, reply([], last="7-3", first="1-0", length=4)) == Replay((), None, (7, 3))


def test_ids_compare_as_numbers() -> None:
    # "999-0" > "1000-0" as strings: a string comparison would call this position the future.
    got = replay_from((999, 0), 10, reply([entry(1000)], last="1000-0", first="999-0", length=2))
    assert got.gap is None and [e.id for e in got.events] == [(1000, 0)]
    assert replay_from((1000, 1), 10, reply([], last="1000-0", first="999-0", length=2)).gap == "future"
    assert replay_from((10**30, 0), 10, reply([], last="1000-0", first="999-0", length=2)).gap == "future"


def test_future_has_no_events_and_says_where_history_is() -> None:
    assert replay_from((9, 0), 10, reply([], last="8-0", first="1-0", length=3)) == Replay(
        (), "future", (8, 0)
    )


def test_at_the_newest_id_nothing_is_missing_whatever_was_removed() -> None:
    # Everything trimmed or deleted, the client saw the last event: nothing after it ever existed.
    assert replay_from((8, 0), 10, reply([], last="8-0", added=50, length=0)) == Replay((), None, (8, 0))
    assert replay_from((7, 0), 10, reply([], last="8-0", added=50, length=0)).gap == "evicted"


def test_trimmed_past_the_position_is_evicted() -> None:
    # 10 events, MAXLEN trimmed to 3 (8, 9, 10); the client saw 2.
    got = replay_from((2, 0), 10, reply([entry(8), entry(9), entry(10)], last="10-0", first="8-0", added=10))
    assert got.gap == "evicted" and [e.id for e in got.events] == [(8, 0), (9, 0), (10, 0)]


def test_position_still_held_is_not_evicted_by_trims() -> None:
    got = replay_from((8, 0), 10, reply([entry(9), entry(10)], last="10-0", first="8-0", added=10, length=3))
    assert got.gap is None


def test_deleted_after_the_position_is_evicted_before_it_is_not() -> None:
    # XDEL records max-deleted-entry-id; at or after the oldest entry held, only XDEL loses events.
    base: dict[str, Any] = {"last": "10-0", "first": "1-0", "added": 10, "length": 9}
    assert replay_from((4, 0), 10, reply([entry(6)], deleted="5-0", **base)).gap == "evicted"
    assert replay_from((5, 0), 10, reply([entry(6)], deleted="5-0", **base)).gap is None
    assert replay_from((6, 0), 10, reply([entry(7)], deleted="5-0", **base)).gap is None


def test_before_a_history_that_never_lost_an_entry() -> None:
    # The stream began after the position (re-created after FLUSHALL or expiry): never one of its ids.
    got = replay_from((3, 0), 10, reply([entry(20), entry(21)], last="21-0", first="20-0"))
    assert got.gap == "unknown" and len(got.events) == 2
    # 0-0, from current_id while the channel had no history: everything is after it.
    assert replay_from((0, 0), 10, reply([entry(20)], last="20-0", first="20-0")).gap is None


def test_redis_before_7_counts_as_having_lost_entries() -> None:
    assert replay_from((3, 0), 10, reply([entry(20)], last="20-0", first="20-0", added=-1)).gap == "evicted"


@pytest.mark.parametrize("limit", [0, 1, 2])
def test_truncated_keeps_the_oldest_and_says_more(limit: int) -> None:
    entries = [entry(2), entry(3), entry(4)][: limit + 1]
    got = replay_from((1, 0), limit, reply(entries, last="4-0", first="1-0", length=4))
    assert got.gap == "truncated" and got.more
    assert [e.id for e in got.events] == [(2, 0), (3, 0)][:limit]


def test_exactly_limit_events_is_complete() -> None:
    got = replay_from((1, 0), 2, reply([entry(2), entry(3)], last="3-0", first="1-0", length=3))
    assert got.gap is None and not got.more


def test_a_worse_gap_wins_over_truncated_but_more_still_says_so() -> None:
    got = replay_from((1, 0), 1, reply([entry(8), entry(9)], last="10-0", first="8-0", added=10, length=3))
    assert (got.gap, got.more, [e.id for e in got.events]) == ("evicted", True, [(8, 0)])


def test_largest_ids() -> None:
    top = f"{MAX}-{MAX}"
    assert replay_from((MAX, MAX), 5, reply([], last=top, first="1-0", length=2)) == Replay(
        (), None, (MAX, MAX)
    )
    assert replay_from((MAX, 0), 5, reply([entry(MAX, MAX)], last=top, first="1-0", length=2)).events == (
        HistoryEvent((MAX, MAX), b"x"),
    )


def test_a_reply_that_is_not_a_stream_id_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a stream id"):
        replay_from((1, 0), 5, reply([], last="garbage", length=0))


def test_read_arguments() -> None:
    assert read_arguments(None, 0) == (b"", 1)
    assert read_arguments((999, 0), 10) == (b"(999-0", 11)
    # A client's 20-digit sequence past 64 bits: the same ids come after (5, 2**64 - 1).
    assert read_arguments((5, 10**19 * 9), 3) == (b"(5-18446744073709551615", 4)
    assert read_arguments((MAX, MAX), 3) == (b"", 4)
    assert read_arguments((MAX + 1, 0), 3) == (b"", 4)
