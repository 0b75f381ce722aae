"""Byte ranges for static files: what a ``Range`` header selects, and a producer that sends it.

twisted.web's ``File`` answered a multi-range request with a producer that could hang (206 headers,
no body, the connection left open) and that sent every range asked for: 200 ranges ``0-`` of a
1 MiB file were 209.7 MB. Here a ``Range`` header selects at most ONE span of the file:

- the satisfiable ranges are merged where they overlap or touch; if they merge into one span, that
  span is answered 206 with a ``Content-Range``;
- if they stay several disjoint spans, the header is ignored and the whole file is answered 200
  (RFC 9110 14.2: a server MAY ignore ``Range``). ``multipart/byteranges`` is not produced: browsers
  (media, PDF viewers) ask for one range at a time, and one span bounds every answer by the file's
  size, however many ranges a request names;
- no satisfiable range at all is 416 with ``Content-Range: bytes */SIZE``;
- a header that is not valid ``bytes=`` syntax, a unit other than bytes, more than one ``Range``
  field, an empty file, or an ``If-Range`` that does not match: the whole file, 200.

The producer reads with ``os.pread`` (no shared file offset) and, should the file shrink or fail to
read half-way, aborts the connection rather than leave a client waiting for bytes that never come.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger
from twisted.web.http import stringToDatetime
from zope.interface import implementer

__all__ = ["CHUNK", "FileRangeProducer", "RangeSelection", "select_range"]

log = Logger()

#: Bytes read from the file per write to the client.
CHUNK = 64 * 1024
# Positions longer than this are past the end of any file: no need to parse them as integers
# (Python refuses to parse more than 4,300 digits at all).
_MAX_DIGITS = 18
_HUGE = 10**_MAX_DIGITS
_SPEC = re.compile(rb"(\d*)-(\d*)")


@dataclass(frozen=True)
class RangeSelection:
    """What to answer: ``status`` 200 (whole file), 206 (``offset``, ``length``) or 416 (nothing)."""

    status: int
    offset: int
    length: int

    def content_range(self, size: int) -> bytes | None:
        """The ``Content-Range`` value for this answer, or ``None`` for a 200."""
        if self.status == 206:
            return b"bytes %d-%d/%d" % (self.offset, self.offset + self.length - 1, size)
        if self.status == 416:
            return b"bytes */%d" % size
        return None


def _position(digits: bytes) -> int:
    return int(digits) if len(digits) <= _MAX_DIGITS else _HUGE


def _parse(header: bytes) -> list[tuple[int | None, int | None]] | None:
    """The range specs of a ``bytes=`` header as (first, last) or (None, suffix); ``None`` if invalid."""
    unit, sep, rest = header.partition(b"=")
    if not sep or unit.strip().lower() != b"bytes":
        return None
    specs: list[tuple[int | None, int | None]] = []
    for item in rest.split(b","):
        item = item.strip(b" \t")
        if not item:
            continue  # the #list rule allows empty elements
        m = _SPEC.fullmatch(item)
        if m is None:
            return None
        first, last = m.group(1), m.group(2)
        if first:
            start = _position(first)
            end = _position(last) if last else None
            if end is not None and end < start:
                return None
            specs.append((start, end))
        elif last:
            specs.append((None, _position(last)))
        else:
            return None
    return specs or None


def _if_range_holds(if_range: bytes | None, last_modified: int) -> bool:
    """RFC 9110 13.1.5: the range applies only if the validator matches exactly.

    Static files carry no entity tag, so an entity-tag validator never matches; a date matches
    only the ``Last-Modified`` sent (whole seconds, as twisted.web rounds it).
    """
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith((b'"', b"W/")):
        return False
    try:
        return int(stringToDatetime(value)) == last_modified
    except (ValueError, IndexError, KeyError, OverflowError):
        return False


def select_range(
    ranges: Sequence[bytes] | None, size: int, if_range: bytes | None = None, mtime: float = 0.0
) -> RangeSelection:
    """The part of a file of ``size`` bytes that the request's ``Range`` field(s) select (see above).

    ``ranges`` is every ``Range`` field of the request; ``if_range`` its ``If-Range`` field and
    ``mtime`` the file's modification time (for ``If-Range`` dates).
    """
    whole = RangeSelection(200, 0, size)
    if not ranges or len(ranges) != 1 or size == 0:
        return whole
    if not _if_range_holds(if_range, int(math.ceil(mtime))):
        return whole
    specs = _parse(ranges[0])
    if specs is None:
        return whole
    spans: list[tuple[int, int]] = []  # inclusive (start, end) of each satisfiable spec
    for first, last in specs:
        if first is None:
            assert last is not None
            if last == 0:
                continue  # a zero-length suffix selects nothing
            spans.append((max(0, size - last), size - 1))
        elif first < size:
            spans.append((first, size - 1 if last is None else min(last, size - 1)))
    if not spans:
        return RangeSelection(416, 0, 0)
    spans.sort()
    start, end = spans[0]
    for s, e in spans[1:]:
        if s > end + 1:
            return whole  # disjoint spans: one answer for all of them is the file itself
        end = max(end, e)
    return RangeSelection(206, start, end - start + 1)


@implementer(IPullProducer)
class FileRangeProducer:
    """Writes ``length`` bytes of ``file`` from ``offset`` to ``request``, then finishes it.

    Owns ``file`` and closes it in every outcome: done, client gone, read error. A read error or
    a file that got shorter aborts the client connection: its ``Content-Length`` promised more.
    """

    def __init__(self, request: Any, file: IO[bytes], offset: int, length: int, what: str) -> None:
        self._request = request
        self._file: IO[bytes] | None = file
        self._position = offset
        self._left = length
        self._what = what

    def start(self) -> None:
        """Register with the request and start sending."""
        self._request.notifyFinish().addBoth(lambda _: self._close())
        if self._left == 0:
            self._close()
            self._request.finish()
            return
        self._request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        file = self._file
        if file is None:
            return
        try:
            data = os.pread(file.fileno(), min(CHUNK, self._left), self._position)
        except OSError as e:
            self._fail(f"read failed: {e}")
            return
        if not data:
            self._fail(f"the file ended {self._left} bytes early")
            return
        self._position += len(data)
        self._left -= len(data)
        self._request.write(data)
        if self._left == 0 and self._file is not None:
            self._close()
            self._request.unregisterProducer()
            self._request.finish()

    def stopProducing(self) -> None:
        self._close()

    def _close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def _fail(self, why: str) -> None:
        log.warn("static: {what}: {why}; closing the connection", what=self._what, why=why)
        self._close()
        self._request.unregisterProducer()
        channel = getattr(self._request, "channel", None)
        transport = getattr(channel, "transport", None)
        if transport is not None:
            transport.abortConnection()
