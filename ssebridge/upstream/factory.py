"""Choosing and building the upstream app a config names: in-process WSGI, or a remote HTTP app."""

from __future__ import annotations

import os
import sys
from typing import Any
from wsgiref.types import WSGIApplication

from twisted.python.threadpool import ThreadPool

from ssebridge.config.model import Config
from ssebridge.upstream.base import Upstream


def build_upstream(config: Config, reactor: Any) -> Upstream | None:
    """The upstream ``config`` names, or ``None``; raise ``ValueError`` (one line) if it cannot load."""
    common: dict[str, Any] = {
        "collect_headers": config.collect_headers,
        "pull_headers": config.pull_headers,
        "timeout": config.upstream_timeout,
        "forwarded": config.forwarded,
    }
    if config.proxy:
        from ssebridge.upstream.proxy import HTTPUpstream

        return HTTPUpstream(config.proxy, reactor, **common)
    app = load_app(config)
    if app is None:
        return None
    from ssebridge.upstream.wsgi import WSGIUpstream

    pool = ThreadPool(minthreads=1, maxthreads=config.threads, name="ssebridge-wsgi")
    return WSGIUpstream(app, reactor, pool, **common)


def load_app(config: Config) -> WSGIApplication | None:
    """Import the in-process WSGI app ``config`` names, or ``None``; ``ValueError`` (one line) if it
    cannot load. A worker pool's parent calls it too, to refuse a broken app before any worker starts."""
    if config.wsgi_file is None and not config.wsgi_module:
        return None
    from ssebridge.upstream.wsgi import load_wsgi_file, load_wsgi_module

    if config.wsgi_file is not None:
        return load_wsgi_file(config.wsgi_file)
    # As uWSGI does for `module`: the working directory is importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return load_wsgi_module(config.wsgi_module)
