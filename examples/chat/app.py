"""A tiny chat: POST a line, the app publishes it to Redis, the bridge streams it to every open page.

The seed's "almost full-duplex" tip: SSE only receives, so the page sends with an ordinary request
(``fetch``) that makes the app ``PUBLISH``, and receives every message, its own included, over the
stream the bridge holds. A plain WSGI app, standard library plus ``ssebridge.address``:

- ``GET /chat/``: the page (``chat.html``, beside this file); ``/chat`` redirects there.
- ``POST /chat/say``: the body is the message, as ``text/plain`` (what the page's ``fetch`` sends)
  or a form field ``text`` (the page without JavaScript); published as is, line breaks included,
  to the channel ``chat``. 204 for ``fetch``, 303 back to the page for a form; 400 for an empty
  message, invalid UTF-8 or control characters, 413 past ``MAX_MESSAGE`` bytes, 403 for a post
  from another site (``Origin`` differs from ``Host``), 503 when Redis is unreachable.

``GET /chat/stream`` never reaches the app: ``chat.ini`` routes it to the bridge (``sse:chat``).

Environment: ``SSEBRIDGE_REDIS`` (default ``127.0.0.1:6379``; any form the bridge accepts:
``host:port``, a socket path, ``redis://:password@host/``, ``rediss://``) must name the Redis the
bridge subscribes to, and ``SSEBRIDGE_CHAT_CHANNEL`` (default ``chat``) the channel its route streams.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ssebridge.address import RedisServer, parse_server

#: Largest message, in bytes of UTF-8. The bridge's ``max-body`` refuses far larger bodies earlier.
MAX_MESSAGE = 4096
#: Seconds a connect or a reply from Redis may take.
REDIS_TIMEOUT = 3.0
PAGE = Path(__file__).resolve().with_name("chat.html")
REDIS = parse_server(os.environ.get("SSEBRIDGE_REDIS", "127.0.0.1:6379"))
CHANNEL = os.environ.get("SSEBRIDGE_CHAT_CHANNEL", "chat").encode("utf-8")
#: Control characters refused in a message; tab, LF and CR (line breaks) are allowed.
_CONTROL = {c for c in range(32) if c not in (9, 10, 13)} | {127}


class ChatError(Exception):
    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


# --- Redis: one PUBLISH, in RESP, on a fresh connection ----------------------------------------------


def _command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _reply(stream: Any) -> int:
    line = stream.readline(1024)
    if line.startswith(b":"):
        return int(line[1:])
    if line.startswith(b"+"):
        return 0
    raise ConnectionError(f"Redis answered {line[:200]!r}")


def _connect(server: RedisServer) -> socket.socket:
    if server.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(REDIS_TIMEOUT)
        try:
            sock.connect(server.path)
        except BaseException:
            sock.close()
            raise
        return sock
    sock = socket.create_connection((server.host, server.port), timeout=REDIS_TIMEOUT)
    if server.kind == "tls":
        try:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=server.host)
        except BaseException:
            sock.close()
            raise
    return sock


def publish(message: bytes, server: RedisServer | None = None, channel: bytes | None = None) -> int:
    """``PUBLISH channel message``; returns how many subscribers (bridge connections) got it.

    ``server`` and ``channel`` default to ``REDIS`` and ``CHANNEL``, read when the call is made.
    """
    server = server or REDIS
    channel = channel or CHANNEL
    with _connect(server) as sock:
        stream = sock.makefile("rb")
        commands = b""
        if server.password is not None:
            auth = [b"AUTH"] + ([server.username.encode()] if server.username else [])
            commands += _command(*auth, server.password.encode())
        commands += _command(b"PUBLISH", channel, message)
        sock.sendall(commands)
        if server.password is not None:
            _reply(stream)
        return _reply(stream)


# --- the WSGI app ------------------------------------------------------------------------------------


def _read_body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ChatError("400 Bad Request", "bad Content-Length") from None
    limit = MAX_MESSAGE * 4 + 64  # room for percent-encoding in a form body
    if length > limit:
        raise ChatError("413 Content Too Large", f"a message is at most {MAX_MESSAGE} bytes")
    body: bytes = environ["wsgi.input"].read(length) if length > 0 else b""
    return body


def _message(environ: dict[str, Any]) -> tuple[bytes, bool]:
    """The posted message as UTF-8 bytes, and whether it came from a form (not ``fetch``)."""
    body = _read_body(environ)
    content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    form = content_type == "application/x-www-form-urlencoded"
    if form:
        try:
            fields = parse_qs(body.decode("ascii"), keep_blank_values=True, errors="strict", max_num_fields=4)
            text = fields.get("text", [""])[0]
        except (UnicodeDecodeError, ValueError):
            raise ChatError("400 Bad Request", "not a valid form, or not UTF-8") from None
    elif content_type in ("text/plain", ""):
        try:
            text = body.decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            raise ChatError("400 Bad Request", "the message is not UTF-8") from None
    else:
        raise ChatError("415 Unsupported Media Type", "send text/plain or a form")
    message = text.encode("utf-8")
    if not text.strip():
        raise ChatError("400 Bad Request", "empty message")
    if len(message) > MAX_MESSAGE:
        raise ChatError("413 Content Too Large", f"a message is at most {MAX_MESSAGE} bytes")
    if any(ord(c) in _CONTROL for c in text):
        raise ChatError("400 Bad Request", "control characters are not allowed")
    return message, form


def _same_origin(environ: dict[str, Any]) -> bool:
    """A browser names the page that posts in ``Origin``: refuse posts from other sites' pages."""
    origin = environ.get("HTTP_ORIGIN")
    if not origin:
        return True  # curl, or a browser too old to send it for same-origin requests
    host = str(environ.get("HTTP_HOST", ""))
    return urlsplit(str(origin)).netloc.lower() == host.lower()


def _text(start_response: Any, status: str, text: str, extra: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    body = (text + "\n").encode("utf-8")
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    start_response(status, [*headers, *extra])
    return [body]


def application(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "GET")
    if path == "/chat/say":
        if method != "POST":
            return _text(start_response, "405 Method Not Allowed", "POST a message", [("Allow", "POST")])
        if not _same_origin(environ):
            return _text(start_response, "403 Forbidden", "posts from other sites are refused")
        try:
            message, form = _message(environ)
        except ChatError as e:
            return _text(start_response, e.status, e.text)
        try:
            publish(message)
        except (OSError, ConnectionError, ValueError) as e:
            environ["wsgi.errors"].write(f"chat: cannot publish to Redis at {REDIS.describe()}: {e}\n")
            return _text(start_response, "503 Service Unavailable", "the chat server is unavailable")
        if form:
            return _text(start_response, "303 See Other", "sent", [("Location", "/chat/")])
        start_response("204 No Content", [])
        return []
    if path in ("/chat/", "/chat/index.html") and method in ("GET", "HEAD"):
        page = PAGE.read_bytes()
        headers = [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(page))),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
        ]
        start_response("200 OK", headers)
        return [b"" if method == "HEAD" else page]
    if path in ("", "/", "/chat"):
        return _text(start_response, "302 Found", "the chat is at /chat/", [("Location", "/chat/")])
    return _text(start_response, "404 Not Found", "not found")
