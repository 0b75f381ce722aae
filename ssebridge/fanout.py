"""The fan-out loop: one shared frame to many subscribers, at the cost of the kernel's ``send`` per client.

``deliver(data, count, targets)`` is what the hub calls instead of ``subscriber.send`` in a loop. A target
that can take a direct send right now (a taken-over stream with nothing queued: its ``direct`` is its
socket) gets ``data`` (or ``data`` as one HTTP/1.1 chunk, framed once per call, when it is ``chunked``)
in one non-blocking ``send``, counted in its ``frames`` and ``bytes``. What the kernel does not take all
of goes to the target's ``send_short(payload, sent)`` (it queues the rest); a send that fails is left to
the reactor, which reports the connection lost. Every other target (no ``direct`` attribute, or ``None``)
gets ``send(data, count)``, exactly as before. So the loop adds nothing a subscriber must know: it is
``Subscriber.send`` with the common case done without a Python call per client.

Two implementations with one behaviour: ``ssebridge._fanout`` (C, built by ``setup.py`` when a compiler
is there: ``Extension(optional=True)``) and ``deliver_python`` here, the fallback and the reference. The
C loop reads a ``Stream``'s slots at their offsets and a socket's fd from the socket object (no lookup,
no call, no allocation per client: ~70 ns a client for the whole call, sends aside); the Python one
costs ~1.5 µs more (see ``bench/RESULTS.md``).
The C loop reads every target before its first send, sends in the order of the fds (about the order
the connections were accepted in, which the kernel's per-socket state follows) and counts after the
last send; what a target ends up with is the same.
``IMPLEMENTATION`` says which is in use; ``SSEBRIDGE_FANOUT=python`` in the environment picks the Python
loop even when the C one is built (to compare them).

May import: the standard library and ``ssebridge.interfaces``; the hub imports it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from ssebridge.interfaces import Subscriber

__all__ = ["IMPLEMENTATION", "deliver", "deliver_python", "native"]


def deliver_python(data: bytes, count: int, targets: Sequence[Subscriber]) -> None:
    """The loop in Python (what ``ssebridge._fanout.deliver`` does in C): see the module's docstring."""
    chunk: bytes | None = None
    size = len(data)
    # A target whose call fails does not stop the others; the first error is raised at the end.
    error: Exception | None = None
    for target in tuple(targets):
        sock: Any = getattr(target, "direct", None)
        if sock is None:
            try:
                target.send(data, count)
            except Exception as e:
                error = error or e
            continue
        t: Any = target
        if t.chunked:
            if chunk is None:
                chunk = b"%x\r\n%s\r\n" % (size, data)
            payload = chunk
        else:
            payload = data
        t.frames += count
        t.bytes += size
        try:
            sent = sock.send(payload)
        except BlockingIOError:
            sent = 0
        except OSError:
            continue  # the peer is gone: the reactor reports it (connectionLost) next turn
        if sent != len(payload):
            try:
                t.send_short(payload, sent)
            except Exception as e:
                error = error or e
    if error is not None:
        raise error


def native() -> Callable[[bytes, int, Sequence[Subscriber]], None] | None:
    """The C loop, or ``None`` when the extension was not built (no compiler at install time)."""
    try:
        from ssebridge._fanout import deliver as c_deliver  # type: ignore[import-not-found]
    except ImportError:
        return None
    found: Callable[[bytes, int, Sequence[Subscriber]], None] = c_deliver
    return found


_native = native() if os.environ.get("SSEBRIDGE_FANOUT", "") != "python" else None

#: ``"c"`` or ``"python"``: which loop ``deliver`` is.
IMPLEMENTATION = "c" if _native is not None else "python"

#: Send ``data`` (``count`` events, shared) to every target (see the module's docstring).
deliver: Callable[[bytes, int, Sequence[Subscriber]], None] = _native or deliver_python
