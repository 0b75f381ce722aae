"""Turning twistd's command line into a service, with one clear line (never a traceback) on bad config."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from twisted.application.service import Service

from ssebridge.config.model import ConfigError, default_config, load_config
from ssebridge.runtime.service import BridgeService


def make_service(options: Mapping[str, Any]) -> Service:
    """Build the service for ``twistd ssebridge``; exit with status 2 and one line on a config error.

    With ``workers`` above 1 the service is the parent of a worker pool; otherwise the bridge itself.
    """
    path = options.get("config")
    if options.get("check"):
        raise SystemExit(check(path, bool(options.get("strict"))))
    try:
        config = load_config(path, strict=bool(options.get("strict"))) if path else default_config()
    except ConfigError as e:
        sys.stderr.write(f"ssebridge: {e}\n")
        raise SystemExit(2) from None
    if config.workers > 1:
        from ssebridge.runtime.pool import WorkerPool
        from ssebridge.upstream.factory import load_app

        try:
            # Each worker loads the app itself; loading it here first refuses a broken one with one
            # line, instead of workers failing and being restarted forever.
            load_app(config)
            return WorkerPool(config, path, config.workers)
        except ValueError as e:
            sys.stderr.write(f"ssebridge: {config.source}: {e}\n")
            raise SystemExit(2) from None
    try:
        return BridgeService(config)
    except ValueError as e:
        # A WSGI app that does not load: one line, no traceback.
        sys.stderr.write(f"ssebridge: {config.source}: {e}\n")
        raise SystemExit(2) from None


def check(path: str | None, strict: bool = False) -> int:
    """``--check``: every error and warning of the config, in file order; 0 if sound, else 1."""
    from ssebridge.runtime.command import check_command

    return check_command(path, strict)
