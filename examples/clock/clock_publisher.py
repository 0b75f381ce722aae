#!/usr/bin/env python3
"""The seed's ``clock.pl`` in Python, standard library only: publish the unix time to Redis every second.

    python3 clock_publisher.py [HOST:PORT] [CHANNEL]      (defaults: 127.0.0.1:6379 clock)

Run as the example's mule (``mule = clock_publisher.py``) or by hand. It speaks the two lines of RESP
that PUBLISH needs, so a bare interpreter can run it; if Redis is away it retries every second.
``python -m ssebridge.clock`` is the full-featured version (TLS, AUTH, unix sockets, backoff).
"""

from __future__ import annotations

import socket
import sys
import time


def publish_command(channel: bytes, message: bytes) -> bytes:
    """``PUBLISH channel message`` as a RESP array of bulk strings."""
    parts = (b"PUBLISH", channel, message)
    return b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def main(argv: list[str]) -> int:
    address = argv[1] if len(argv) > 1 else "127.0.0.1:6379"
    channel = (argv[2] if len(argv) > 2 else "clock").encode()
    host, _, port = address.rpartition(":")
    while True:
        try:
            with socket.create_connection((host or "127.0.0.1", int(port or 6379)), timeout=5) as sock:
                replies = sock.makefile("rb")
                while True:
                    time.sleep(1)
                    sock.sendall(publish_command(channel, str(int(time.time())).encode()))
                    reply = replies.readline()
                    if not reply:
                        raise ConnectionError("Redis closed the connection")
                    if reply.startswith(b"-"):
                        print(f"clock: Redis said {reply.decode(errors='replace').strip()}", file=sys.stderr)
        except OSError as e:
            print(f"clock: {address}: {e}; retrying in 1s", file=sys.stderr, flush=True)
            time.sleep(1)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except KeyboardInterrupt:
        sys.exit(0)
