"""select_range: what a Range header selects of a file (pure code)."""

from __future__ import annotations

from ssebridge.http.ranges import RangeSelection, select_range


def test_one_span_at_most() -> None:
    assert select_range([b"bytes=0-0"], 6) == RangeSelection(206, 0, 1)
    assert select_range([b"bytes=" + b",".join([b"0-"] * 200)], 1 << 20) == RangeSelection(206, 0, 1 << 20)
    assert select_range([b"bytes=0-65399,0-0"], 65400) == RangeSelection(206, 0, 65400)
    assert select_range([b"bytes=0-1,2-3,1-2"], 6) == RangeSelection(206, 0, 4)  # touching spans merge
    assert select_range([b"bytes=0-0,2-2"], 6) == RangeSelection(200, 0, 6)  # disjoint: the whole file


def test_suffix_unsatisfiable_and_invalid() -> None:
    assert select_range([b"bytes=-100"], 6) == RangeSelection(206, 0, 6)
    assert select_range([b"bytes=-1"], 6) == RangeSelection(206, 5, 1)
    assert select_range([b"bytes=6-"], 6).status == 416
    assert select_range([b"bytes=6-"], 6).content_range(6) == b"bytes */6"
    assert select_range([b"bytes=1-2"], 6).content_range(6) == b"bytes 1-2/6"
    assert select_range([b"bytes=" + b"9" * 5000 + b"-"], 6).status == 416  # no 4,300-digit int parse
    for invalid in (b"bytes=2-1", b"bytes=-", b"bytes=1-2-3", b"lines=0-1", b"bytes 0-1", b"bytes=,"):
        assert select_range([invalid], 6) == RangeSelection(200, 0, 6), invalid
    assert select_range([b"bytes=0-1", b"bytes=2-3"], 6).status == 200  # two Range fields
    assert select_range([b"bytes=-3"], 0) == RangeSelection(200, 0, 0)
    assert select_range(None, 6) == RangeSelection(200, 0, 6)


def test_if_range() -> None:
    date = b"Thu, 01 Jan 1970 00:00:10 GMT"
    assert select_range([b"bytes=1-2"], 6, date, 9.5).status == 206  # Last-Modified rounds up
    assert select_range([b"bytes=1-2"], 6, date, 11.0).status == 200
    assert select_range([b"bytes=1-2"], 6, b'"etag"', 10.0).status == 200
    assert select_range([b"bytes=1-2"], 6, b"not a date", 10.0).status == 200
