"""Static files under URL prefixes: the seed's ``static-map = /prefix=path``.

A map whose path is a file answers exactly its prefix (the seed maps ``/clock=clock.html``); a map
whose path is a directory answers ``prefix/sub/path`` with the file inside it. Nothing outside a
mapped path is ever served, and directories are never listed.

Two ways to mount it:

- ``static_resource_for(maps, request)`` is for a router (the Klein app): it returns a resource
  that answers the request, or ``None`` when no map serves the path, so the router can fall
  through to its other routes as uWSGI falls through to the app.
- ``StaticFiles(maps)`` is a leaf ``Resource`` to mount anywhere (or as a ``Site`` root): it does
  the same and answers 404 itself when no map serves the path.

Both look at ``request.path`` (the full, still percent-encoded URL path), never at
``prepath``/``postpath``, so where the resource is mounted does not change what it serves.

Path safety is decided here, before any file is opened: the URL rest is
split on ``/`` *before* percent-decoding, each segment is decoded once, and a segment that decodes
to a separator, a NUL, a ``%`` (double encoding), ``.`` or ``..`` is refused; invalid UTF-8 and
broken escapes are malformed (400). The joined path is then resolved with symlinks and must still
lie inside the resolved root. Only a regular file that passed these checks is opened (and checked
again on its descriptor); ``Range`` requests are answered by ``ssebridge.http.ranges``.

Somewhat over 400 lines: path safety (every encoding of traversal) is most of it, and is
reviewed best in one place.
"""

from __future__ import annotations

import mimetypes
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO
from urllib.parse import quote

from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ssebridge.config.model import StaticMap
from ssebridge.http.ranges import FileRangeProducer, select_range

__all__ = [
    "CONTENT_TYPES",
    "DEFAULT_CONTENT_TYPE",
    "ForbiddenPath",
    "MalformedPath",
    "PathRefused",
    "StaticFiles",
    "content_type_for",
    "safe_join",
    "split_url_path",
    "static_resource_for",
]

log = Logger()

#: The types browsers care most about, pinned so they do not depend on the host's mime.types.
CONTENT_TYPES: Mapping[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "application/javascript; charset=utf-8",
    ".mjs": "application/javascript; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain; charset=utf-8",
    ".xml": "application/xml",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".wasm": "application/wasm",
    ".pdf": "application/pdf",
}

#: What an unknown extension is served as: browsers will not sniff it into HTML or script.
DEFAULT_CONTENT_TYPE = "application/octet-stream"

# The stdlib's built-in table only (filenames=()): the same answer on every host.
_BUILTIN_TYPES = mimetypes.MimeTypes(filenames=())
_COMPRESSED_TYPES: Mapping[str, str] = {
    ".gz": "application/gzip",
    ".tgz": "application/gzip",
    ".bz2": "application/x-bzip2",
    ".xz": "application/x-xz",
    ".zst": "application/zstd",
    ".br": "application/x-brotli",
    ".zip": "application/zip",
}

# Characters a URL path carries unescaped (RFC 3986 sub-delims, ":", "@", "/"), so a prefix
# such as "/a:b" compares equal to the form the client sends; quote() keeps letters, digits, "-._~".
_PREFIX_SAFE = "/!$&'()*+,;=:@~"

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_ALLOWED_METHODS = (b"GET", b"HEAD")


class PathRefused(ValueError):
    """A URL path that must not be mapped to a file; ``status`` is the HTTP answer for it."""

    status = http.NOT_FOUND


class MalformedPath(PathRefused):
    """A URL path that is not a valid encoding of any path: bad escape, NUL, invalid UTF-8."""

    status = http.BAD_REQUEST


class ForbiddenPath(PathRefused):
    """A well-formed URL path that tries to leave its root: ``..``, encoded separators and so on.

    Answered 404 like a missing file, so probing learns nothing about what exists.
    """

    status = http.NOT_FOUND


def _percent_decode(segment: bytes) -> bytes:
    """Decode ``%XX`` escapes once; a ``%`` not followed by two hex digits is malformed."""
    if b"%" not in segment:
        return segment
    # Every "%" must start a valid escape: count them against the escapes the regex finds.
    if segment.count(b"%") != len(_ESCAPE.findall(segment)):
        raise MalformedPath("broken percent-escape")
    return _ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), segment)


def split_url_path(url_rest: bytes) -> tuple[str, ...]:
    """Split a raw (percent-encoded) URL path rest into decoded, individually safe segments.

    ``b""`` is the root itself (no segments). Otherwise the rest must start with ``/``. Splitting
    happens before decoding, so ``%2f`` can never create a separator; each segment is decoded
    exactly once and then checked, so ``%2e%2e`` is caught like ``..`` and ``%252e`` (which
    decodes to ``%2e``) is refused as double encoding instead of being trusted.

    Raises ``MalformedPath`` (400) or ``ForbiddenPath`` (404).
    """
    if b"\x00" in url_rest:
        raise MalformedPath("NUL byte in path")
    if not url_rest:
        return ()
    if not url_rest.startswith(b"/"):
        raise ForbiddenPath("path does not start with /")
    segments: list[str] = []
    for raw in url_rest[1:].split(b"/"):
        # Empty segments ("//", a trailing "/") name directories or absolute paths: never a file.
        if not raw:
            raise ForbiddenPath("empty path segment")
        if b"\\" in raw:
            raise ForbiddenPath("backslash in path segment")
        decoded = _percent_decode(raw)
        if b"\x00" in decoded:
            raise MalformedPath("encoded NUL in path segment")
        if b"/" in decoded or b"\\" in decoded:
            raise ForbiddenPath("encoded separator in path segment")
        if b"%" in decoded:
            raise ForbiddenPath("double percent-encoding in path segment")
        try:
            text = decoded.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPath("path segment is not valid UTF-8") from None
        if text in (".", ".."):
            raise ForbiddenPath("dot segment in path")
        segments.append(text)
    return tuple(segments)


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _join_checked(root: Path, segments: Sequence[str]) -> Path | None:
    """Join already-checked segments under ``root``; resolve symlinks; refuse what lands outside."""
    try:
        real_root = Path(os.path.realpath(root))
        real = Path(os.path.realpath(real_root.joinpath(*segments)))
    except (OSError, ValueError):
        return None
    return real if _inside(real, real_root) else None


def safe_join(root: Path, url_rest: bytes) -> Path | None:
    """Map a raw URL path rest (``b"/css/site.css"``, still percent-encoded) to a path under ``root``.

    Returns the symlink-resolved path, guaranteed to be ``root`` (resolved) or inside it, or
    ``None`` when the rest is refused (see ``split_url_path``) or resolves outside ``root``. It
    does not check that the path exists or is a file. It touches the filesystem only to resolve
    symlinks.
    """
    try:
        segments = split_url_path(url_rest)
    except PathRefused:
        return None
    return _join_checked(root, segments)


def content_type_for(path: Path) -> str:
    """The ``Content-Type`` to serve ``path`` with, by extension; never guessed from the content."""
    suffix = path.suffix.lower()
    pinned = CONTENT_TYPES.get(suffix)
    if pinned is not None:
        return pinned
    # A compressed file (".tar.gz") is served as itself, not as a Content-Encoding of its
    # inner type: browsers would otherwise silently unpack the download.
    compressed = _COMPRESSED_TYPES.get(suffix)
    if compressed is not None:
        return compressed
    guessed, encoding = _BUILTIN_TYPES.guess_type(path.name, strict=True)
    if guessed is None or encoding is not None:
        return DEFAULT_CONTENT_TYPE
    return guessed


def _prefix_match(prefix: str, url_path: bytes) -> bytes | None:
    """The rest of ``url_path`` after ``prefix`` on a segment boundary, or ``None``.

    ``/static`` takes ``/static`` and ``/static/x`` but not ``/staticx`` (uWSGI would take it;
    a boundary is what people mean). The prefix is compared in its percent-encoded form, the
    form the URL arrives in.
    """
    stripped = prefix.rstrip("/")
    encoded = quote(stripped, safe=_PREFIX_SAFE).encode("ascii")
    if url_path == encoded:
        return b""
    if url_path.startswith(encoded + b"/"):
        return url_path[len(encoded) :]
    return None


def _set_headers(request: Request, headers: Mapping[bytes, bytes]) -> None:
    """``Request.setHeader`` for each header; twisted.web.http leaves setHeader untyped."""
    for name, value in headers.items():
        request.setHeader(name, value)


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


class _Refusal(Resource):
    """A short plain-text error answer (400, 404) with no detail about the filesystem."""

    isLeaf = True

    def __init__(self, status: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.status = status

    def render(self, request: Request) -> bytes:
        request.setResponseCode(self.status)
        _set_headers(
            request, {b"content-type": b"text/plain; charset=utf-8", b"x-content-type-options": b"nosniff"}
        )
        return http.RESPONSES.get(self.status, b"Error") + b"\n"


class _StaticFile(Resource):
    """One validated regular file: GET and HEAD, else 405.

    Last-Modified and If-Modified-Since (304) come from twisted.web's ``Request``; ``Range`` and
    ``If-Range`` are decided by ``ssebridge.http.ranges`` (at most one span of the file, never more
    bytes than the file has). twisted.web's ``File`` is not used: its multi-range producer hung and
    amplified.
    """

    isLeaf = True

    def __init__(self, path: Path) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.path = path

    def _open(self) -> tuple[IO[bytes], os.stat_result] | int:
        """The file, opened and checked on its descriptor (no race with the path), or a status."""
        try:
            # O_NONBLOCK: a FIFO swapped in after the check must not block the reactor in open().
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except PermissionError:
            return http.FORBIDDEN
        except OSError:
            return http.NOT_FOUND
        try:
            info = os.fstat(fd)
        except OSError:
            os.close(fd)
            return http.NOT_FOUND
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            return http.NOT_FOUND
        return os.fdopen(fd, "rb", buffering=0), info

    def render(self, request: Request) -> bytes | int:
        if request.method not in _ALLOWED_METHODS:
            request.setResponseCode(http.NOT_ALLOWED)
            _set_headers(
                request,
                {b"allow": b", ".join(_ALLOWED_METHODS), b"content-type": b"text/plain; charset=utf-8"},
            )
            return b"Method Not Allowed\n"
        opened = self._open()
        if isinstance(opened, int):
            # Answers the race where the file vanished or changed after our check.
            return _Refusal(opened).render(request)
        file, info = opened
        _set_headers(
            request,
            {
                b"x-content-type-options": b"nosniff",
                b"accept-ranges": b"bytes",
                b"content-type": content_type_for(self.path).encode("ascii"),
            },
        )
        if request.setLastModified(info.st_mtime) is http.CACHED:
            file.close()
            return b""
        size = info.st_size
        if request.method == b"HEAD":
            # RFC 9110 14.2: Range is defined for GET only.
            file.close()
            request.setHeader(b"content-length", b"%d" % size)
            return b""
        selection = select_range(
            request.requestHeaders.getRawHeaders(b"range"),
            size,
            request.getHeader(b"if-range"),
            info.st_mtime,
        )
        request.setResponseCode(selection.status)
        content_range = selection.content_range(size)
        if content_range is not None:
            request.setHeader(b"content-range", content_range)
        request.setHeader(b"content-length", b"%d" % selection.length)
        if selection.status == http.REQUESTED_RANGE_NOT_SATISFIABLE:
            file.close()
            return b""
        what = request.path.decode("ascii", "backslashreplace")
        FileRangeProducer(request, file, selection.offset, selection.length, what).start()
        return NOT_DONE_YET


def static_resource_for(maps: Sequence[StaticMap], request: Request) -> Resource | None:
    """The resource that answers ``request`` from ``maps``, or ``None`` when no map serves it.

    Maps are tried in order; a map whose prefix matches but has no such file lets the next map
    try, as uWSGI does, and ``None`` at the end lets the caller fall through to its other routes.
    A path refused by a matching directory map is answered at once (404, or 400 if malformed)
    rather than passed on: a traversal attempt is not a route miss.
    """
    url_path: bytes = request.path
    for static_map in maps:
        rest = _prefix_match(static_map.prefix, url_path)
        if rest is None:
            continue
        if _is_regular_file(static_map.path):
            # A file map answers its prefix exactly: "/clock" but not "/clock/x".
            if rest == b"":
                return _StaticFile(Path(os.path.realpath(static_map.path)))
            continue
        try:
            segments = split_url_path(rest)
        except PathRefused as refused:
            log.info(
                "static: refused {path!r} under {prefix}: {reason}",
                path=url_path,
                prefix=static_map.prefix,
                reason=str(refused),
                status=refused.status,
            )
            return _Refusal(refused.status)
        target = _join_checked(static_map.path, segments)
        if target is None:
            log.info(
                "static: refused {path!r} under {prefix}: resolves outside the mapped directory",
                path=url_path,
                prefix=static_map.prefix,
                reason="outside root",
                status=http.NOT_FOUND,
            )
            return _Refusal(http.NOT_FOUND)
        if _is_regular_file(target):
            return _StaticFile(target)
    return None


class StaticFiles(Resource):
    """A leaf resource serving ``maps``; 404 for any path no map serves.

    Mount it anywhere (it reads ``request.path``, the full URL path) or use it as a ``Site``
    root for a static-only server.
    """

    isLeaf = True

    def __init__(self, maps: Sequence[StaticMap]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.maps: tuple[StaticMap, ...] = tuple(maps)

    def render(self, request: Request) -> bytes | int:
        found = static_resource_for(self.maps, request)
        if found is None:
            return _Refusal(http.NOT_FOUND).render(request)
        result: bytes | int = found.render(request)
        return result
