"""The demo publisher: the seed's ``clock.pl``, publishing the unix time to a Redis channel.

Run it as ``python -m ssebridge.clock [--server 127.0.0.1:6379] [--channel clock] [--interval 1.0]``
(the default config runs it as a mule). Every ``interval`` seconds it sends ``PUBLISH <channel>
<int(time.time())>`` and reads the integer reply (how many subscribers got it).

Standard library only (with ssebridge's own Twisted-free ``redis.resp`` encoder), on purpose: a mule
should start in a bare interpreter, and the protocol needed is two lines of RESP over a socket. If Redis
is away it reconnects with a capped, jittered backoff; SIGTERM and SIGINT make it close the connection
and exit 0.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from ssebridge.redis.resp import encode_command

__all__ = [
    "ClockAddress",
    "RedisReplyError",
    "encode_command",
    "main",
    "parse_address",
    "publish",
    "read_reply",
]

logger = logging.getLogger("ssebridge.clock")

#: How long a connect or a reply may take before the connection counts as broken.
IO_TIMEOUT = 5.0
#: Reconnect backoff: first wait, cap.
RECONNECT_INITIAL = 0.5
RECONNECT_MAX = 10.0
#: A reply line longer than this is not Redis talking.
MAX_REPLY_LINE = 64 * 1024


class RedisReplyError(Exception):
    """Redis answered with an error (``-ERR ...``), or with something that is not RESP."""


class _Stop(BaseException):
    """Raised from the signal handler to unwind whatever blocking call is in progress.

    A BaseException, so no ``except Exception`` on the way out can swallow it.
    """


@dataclass(frozen=True)
class ClockAddress:
    """Where to publish: a TCP host/port (optionally TLS) or a unix socket path, plus credentials."""

    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: str | None = None
    tls: bool = False
    username: str | None = None
    password: str | None = None

    def describe(self) -> str:
        """A log-safe name (never the password)."""
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}"


def _parse_simple(text: str) -> ClockAddress:
    """``host:port``, ``[v6]:port``, ``host`` or a unix socket path (anything with a ``/``)."""
    if "/" in text:
        return ClockAddress(unix_path=text)
    host, port = text, "6379"
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed [ in {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"junk after ] in {text!r}")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not host:port or a socket path: {text!r}")
    return ClockAddress(host=host, port=int(port))


def parse_address(text: str) -> ClockAddress:
    """Parse ``--server``.

    Uses ``ssebridge.address.parse_server`` when it is available (so the clock takes every form
    the service takes: ``redis://``, ``rediss://``, ``unix://``), else the seed's two forms
    (``host:port``, a socket path). Raises ``ValueError``.
    """
    try:
        from ssebridge.address import parse_server

        server = parse_server(text)
    except (ImportError, NotImplementedError):
        return _parse_simple(text)
    if server.kind == "unix":
        return ClockAddress(unix_path=server.path, username=server.username, password=server.password)
    return ClockAddress(
        host=server.host,
        port=server.port,
        tls=server.kind == "tls",
        username=server.username,
        password=server.password,
    )


def _read_line(sock: socket.socket, buffer: bytearray) -> bytes:
    while True:
        end = buffer.find(b"\r\n")
        if end >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 2]
            return line
        if len(buffer) > MAX_REPLY_LINE:
            raise RedisReplyError("reply line too long")
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        buffer += chunk


def read_reply(sock: socket.socket, buffer: bytearray) -> int | bytes:
    """Read one simple reply: ``:N`` (int) or ``+OK`` (bytes). ``-ERR`` raises ``RedisReplyError``.

    ``buffer`` carries bytes read past the reply over to the next call.
    """
    line = _read_line(sock, buffer)
    kind, body = line[:1], line[1:]
    if kind == b":":
        try:
            return int(body)
        except ValueError:
            raise RedisReplyError(f"bad integer reply {line!r}") from None
    if kind == b"+":
        return body
    if kind == b"-":
        raise RedisReplyError(body.decode("utf-8", "replace"))
    raise RedisReplyError(f"unexpected reply {line[:80]!r}")


def publish(sock: socket.socket, buffer: bytearray, channel: bytes, message: bytes) -> int:
    """``PUBLISH channel message``; returns how many subscribers received it."""
    sock.sendall(encode_command(b"PUBLISH", channel, message))
    reply = read_reply(sock, buffer)
    if not isinstance(reply, int):
        raise RedisReplyError(f"PUBLISH answered {reply!r}, not an integer")
    return reply


def _connect(address: ClockAddress) -> socket.socket:
    sock: socket.socket
    if address.unix_path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(IO_TIMEOUT)
            sock.connect(address.unix_path)
        except BaseException:
            sock.close()
            raise
    else:
        sock = socket.create_connection((address.host, address.port), timeout=IO_TIMEOUT)
        if address.tls:
            context = ssl.create_default_context()
            try:
                sock = context.wrap_socket(sock, server_hostname=address.host)
            except BaseException:
                sock.close()
                raise
    sock.settimeout(IO_TIMEOUT)
    if address.password is not None:
        auth = [b"AUTH"]
        if address.username is not None:
            auth.append(address.username.encode("utf-8"))
        auth.append(address.password.encode("utf-8"))
        buffer = bytearray()
        try:
            sock.sendall(encode_command(*auth))
            read_reply(sock, buffer)
        except BaseException:
            sock.close()
            raise
    return sock


def run(address: ClockAddress, channel: str, interval: float) -> None:
    """Publish forever (until ``_Stop``), reconnecting with backoff when Redis is away."""
    channel_bytes = channel.encode("utf-8")
    failures = 0

    def published() -> None:
        # Only a publish that worked proves the server healthy: a connection that is refused
        # at once (NOAUTH, a replica in trouble) must keep backing off.
        nonlocal failures
        failures = 0

    while True:
        try:
            sock = _connect(address)
        except (OSError, RedisReplyError) as exc:
            logger.warning("cannot reach Redis at %s (%s)", address.describe(), exc)
        else:
            logger.info(
                "connected to Redis at %s; publishing to %r every %ss", address.describe(), channel, interval
            )
            try:
                _publish_loop(sock, channel_bytes, interval, published)
            except (OSError, RedisReplyError) as exc:
                logger.warning("lost Redis at %s (%s)", address.describe(), exc)
            finally:
                sock.close()
        delay = min(RECONNECT_MAX, RECONNECT_INITIAL * 2 ** min(failures, 16)) * random.uniform(0.8, 1.2)
        failures += 1
        logger.info("reconnecting in %.1fs", delay)
        time.sleep(delay)


def _publish_loop(
    sock: socket.socket, channel: bytes, interval: float, published: Callable[[], None]
) -> None:
    buffer = bytearray()
    # Ticks are scheduled on the monotonic clock so the period does not drift, and a late tick
    # (a slow Redis, a suspended machine) is skipped rather than made up for with a burst.
    next_tick = time.monotonic()
    while True:
        receivers = publish(sock, buffer, channel, b"%d" % int(time.time()))
        published()
        logger.debug("published to %d subscriber(s)", receivers)
        next_tick += interval
        now = time.monotonic()
        if next_tick < now:
            next_tick = now + interval - (now - next_tick) % interval
        time.sleep(next_tick - now)


def _install_signal_handlers() -> None:
    stopping = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        # Only the first signal unwinds; a second one during cleanup must not interrupt it.
        if stopping:
            return
        stopping = True
        raise _Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, publish until SIGTERM/SIGINT, return the exit status (0 on a signal)."""
    parser = argparse.ArgumentParser(
        prog="python -m ssebridge.clock",
        description="Publish the unix time to a Redis channel every interval (the seed's clock.pl).",
    )
    parser.add_argument(
        "--server",
        default="127.0.0.1:6379",
        help="Redis: host:port or a unix socket path (default: %(default)s)",
    )
    parser.add_argument("--channel", default="clock", help="channel to publish to (default: %(default)s)")
    parser.add_argument(
        "--interval",
        type=_positive_float,
        default=1.0,
        help="seconds between messages (default: %(default)s)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every publish")
    args = parser.parse_args(argv)
    try:
        address = parse_address(args.server)
    except ValueError as exc:
        parser.error(f"--server: {exc}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    _install_signal_handlers()
    try:
        run(address, args.channel, args.interval)
    except _Stop as stop:
        logger.info("%s received; exiting", stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
