"""RESP, the Redis wire format: the one encoder of commands every part of ssebridge sends.

Arguments travel as length-prefixed bulk strings, never spliced into a command line, so a channel
name or message with spaces, CR, LF or NUL in it is just bytes to Redis. Pure and Twisted-free: the
clock, the publisher library and the tests use it as the transport does.
"""

from __future__ import annotations

#: What a command argument may be: bytes as they are, ``str`` as UTF-8, ``int`` in decimal.
Arg = bytes | str | int


def encode_arg(arg: Arg) -> bytes:
    """One argument's bytes (``str`` as UTF-8, ``int`` in decimal)."""
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, bool):  # a bool is an int to Python, never a Redis argument
        raise TypeError("a Redis argument cannot be a bool")
    if isinstance(arg, int):
        return b"%d" % arg
    return arg.encode("utf-8")


def encode_command(*args: Arg) -> bytes:
    """A RESP array of bulk strings: ``*3\\r\\n$7\\r\\nPUBLISH\\r\\n...``."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = encode_arg(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)
