"""Turning twistd's command line into a service, with one clear line (never a traceback) on bad config."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from twisted.application.service import Service

from ssebridge.config.model import Config, ConfigError, default_config, load_config
from ssebridge.runtime.control import Control
from ssebridge.runtime.handoff import Sockets, inherited_sockets
from ssebridge.runtime.pool import WorkerPool
from ssebridge.runtime.service import BridgeService


def make_service(options: Mapping[str, Any]) -> Service:
    """Build the service for ``twistd ssebridge``; exit with status 2 and one line on a config error.

    With ``workers`` above 1 the service is the parent of a worker pool; otherwise the bridge itself.
    Either way SIGHUP reloads and SIGUSR2 upgrades (``ssebridge.runtime.control``).
    """
    path = options.get("config")
    if options.get("check"):
        raise SystemExit(check(path, bool(options.get("strict"))))
    try:
        config = load_config(path, strict=bool(options.get("strict"))) if path else default_config()
    except ConfigError as e:
        sys.stderr.write(f"ssebridge: {e}\n")
        raise SystemExit(2) from None
    try:
        inherited = inherited_sockets()
    except (ValueError, OSError) as e:
        sys.stderr.write(f"ssebridge: the sockets passed by the previous process: {e}\n")
        raise SystemExit(2) from None
    service = _build(config, path, inherited)
    # Now, not once the reactor runs: systemd may send a reload as soon as it sees READY=1, which the
    # service sends while the reactor starts. A signal that early waits for the reactor.
    Control(service, path, strict=bool(options.get("strict"))).install()
    return service


def _build(config: Config, path: str | None, inherited: Sockets | None) -> Service:
    """A pool for ``workers`` above 1 and for any process an upgrade started (it keeps the sockets
    it was given for the next reload); else the bridge itself, in this process."""
    if config.workers > 1 or inherited is not None:
        from ssebridge.upstream.factory import load_app

        try:
            # Each worker loads the app itself; loading it here first refuses a broken one with one
            # line, instead of workers failing and being restarted forever.
            load_app(config)
            return WorkerPool(config, path, config.workers, inherited=inherited)
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
