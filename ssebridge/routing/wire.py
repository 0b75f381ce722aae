"""How bytes from the wire become the text the routing rules see: the one documented decoding.

Header values, query parameters and channel names travel as bytes; rules and templates work on
``str``. Every such conversion goes through ``wire_text``: UTF-8, with any byte that is not part of
valid UTF-8 kept as a lone surrogate (``surrogateescape``). Two consequences are the point:

- distinct byte strings stay distinct text, so ``user-Zo\\xe9`` and ``user-Zo\\xeb`` can never become
  the same channel (a ``"replace"`` decoding turned both into ``user-Zo\\ufffd``: one user read the
  other's events);
- such text cannot be encoded back to UTF-8, so a channel made from it is refused with 400 by
  ``check_channel`` instead of being subscribed under a mangled name.

A WSGI app hands over headers PEP 3333 style (``str`` of latin-1 code points, encoded to bytes as
latin-1 before they reach here): a non-ASCII channel in a header is its UTF-8 bytes carried that way,
which ``ssebridge.publish.offload_header`` builds. ``uwsgi.add_var`` takes real text.

Pure, standard library only: the Twisted-free ``uwsgi`` compatibility module imports it.
"""

from __future__ import annotations

__all__ = ["wire_text"]


def wire_text(value: bytes) -> str:
    """``value`` as text: UTF-8, invalid bytes kept distinct (and unencodable) as lone surrogates."""
    return value.decode("utf-8", "surrogateescape")
