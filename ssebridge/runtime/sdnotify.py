"""systemd readiness and stopping notices (``Type=notify``), without a dependency.

When systemd starts a service with ``Type=notify`` it sets ``NOTIFY_SOCKET`` to a datagram socket
(a path, or an abstract name starting with ``@``); the service sends ``READY=1`` once it serves and
``STOPPING=1`` when it begins to stop. Without ``NOTIFY_SOCKET`` every call here does nothing.
"""

from __future__ import annotations

import os
import socket
import time


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; return whether a notice was sent."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True


def reloading_notice() -> str:
    """``RELOADING=1`` with the clock reading systemd wants with it (``Type=notify-reload``); the
    service reports ``READY=1`` when the reload is over, applied or not."""
    return f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
