"""A stand-in for the ``uwsgi`` module that the seed's apps import.

Apps written for uwsgi-sse-offload do ``import uwsgi`` and call ``uwsgi.add_var('X-SSE-OFFLOAD',
'clock')`` to hand the connection to the stream engine. Outside uWSGI there is no such module, so
``install()`` registers this one as ``uwsgi`` (``ssebridge.upstream.wsgi.load_wsgi_file`` and
``load_wsgi_module`` do it before they import an app). Only what such apps need is here:
``add_var``, ``opt``, ``version``, ``version_info``, ``numproc``, ``worker_id()``, ``mule_id()``.

``add_var`` is request-scoped: ``WSGIUpstream`` opens a scope (a thread-local) around the app call,
and the variables set in it come back with the reply. Outside a request it raises ``RuntimeError``,
since a variable set there would silently land nowhere.

New code does not need this module: answer with a ``X-SSE-Offload: CHANNEL`` response header, or call
``ssebridge.upstream.wsgi.offload(channel)``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from ssebridge.routing.wire import wire_text

__all__ = [
    "add_var",
    "close_scope",
    "in_request",
    "install",
    "mule_id",
    "numproc",
    "opt",
    "request_scope",
    "version",
    "version_info",
    "worker_id",
]

#: What ``uwsgi.version`` says (bytes, as in uWSGI); the suffix tells anyone who looks where they are.
version: bytes = b"2.0.99-ssebridge"
version_info: tuple[int, int, int, int, str] = (2, 0, 99, 0, "ssebridge")
#: uWSGI's parsed options; ssebridge does not fill it (apps read it with ``.get``).
opt: dict[str, Any] = {}
#: One process serves every request here.
numproc: int = 1


class _Scope(threading.local):
    variables: dict[str, str] | None = None
    #: Set once the reply has been handed over: a later ``add_var`` cannot change anything.
    closed: bool = False


_scope = _Scope()


def _text(value: str | bytes, what: str) -> str:
    if isinstance(value, bytes):
        # One decoding for every byte string that may become a channel (ssebridge.routing.wire).
        return wire_text(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"uwsgi.add_var: {what} must be str or bytes, not {type(value).__name__}")


def add_var(name: str | bytes, value: str | bytes) -> bool:
    """Set a request variable, as uWSGI's ``uwsgi.add_var`` does; returns ``True`` like uWSGI.

    Raises ``RuntimeError`` when called outside a request handled by ``WSGIUpstream``. Called after
    the reply was handed over (from a late body chunk), it is ignored: the routing decision is made.
    """
    variables = _scope.variables
    if variables is None:
        raise RuntimeError(
            "uwsgi.add_var() called outside a request: only the WSGI app served by ssebridge's "
            "WSGIUpstream, while it answers a request, may set request variables"
        )
    key, text = _text(name, "name"), _text(value, "value")
    if not key:
        raise ValueError("uwsgi.add_var: empty variable name")
    if not _scope.closed:
        variables[key] = text
    return True


@contextmanager
def request_scope(variables: dict[str, str]) -> Iterator[dict[str, str]]:
    """Make ``add_var`` on this thread write into ``variables`` until the block ends."""
    previous, previous_closed = _scope.variables, _scope.closed
    _scope.variables, _scope.closed = variables, False
    try:
        yield variables
    finally:
        _scope.variables, _scope.closed = previous, previous_closed


def close_scope() -> None:
    """The reply has left: later ``add_var`` calls in this scope are accepted and ignored."""
    _scope.closed = True


def in_request() -> bool:
    """Whether this thread is inside a request scope."""
    return _scope.variables is not None


def worker_id() -> int:
    """Always 1: one worker, the service process."""
    return 1


def mule_id() -> int:
    """Always 0: an app served here never runs in a mule."""
    return 0


def install() -> ModuleType:
    """Register this module as ``uwsgi`` unless a ``uwsgi`` module is already loaded; return it."""
    return sys.modules.setdefault("uwsgi", sys.modules[__name__])
