"""ssebridge.logs.printable: client-supplied text made safe for one log line."""

from __future__ import annotations

from ssebridge.logs import printable


def test_printable_text_is_unchanged() -> None:
    assert printable("news") == "news"
    assert printable(b"caf\xc3\xa9/\xe6\x96\xb0") == "café/新"


def test_controls_and_invisible_characters_are_escaped() -> None:
    assert printable(b"a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("line\r\nforged") == "line\\x0d\\x0aforged"
    assert printable("nul\x00 del\x7f c1\x85") == "nul\\x00 del\\x7f c1\\x85"
    assert printable("bidi\u202eevil") == "bidi\\u202eevil"
    assert printable(b"not utf-8: \xff\xfe") == "not utf-8: \\xff\\xfe"
    # A backslash is doubled: an escape in the log is never the client's own text.
    assert printable("\\x1b") == "\\\\x1b"


def test_long_text_is_cut() -> None:
    assert printable("x" * 1000) == "x" * 300 + "..."
    assert printable(b"\x1b" * 10, limit=2) == "\\x1b\\x1b..."
