"""Turning twistd's command line into a service, with one clear line (never a traceback) on bad config."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from twisted.application.service import Service

from ssebridge.config import ConfigError, default_config, load_config
from ssebridge.service import BridgeService


def make_service(options: Mapping[str, Any]) -> Service:
    """Build the service for ``twistd ssebridge``; exit with status 2 and one line on a config error.

    With ``workers`` above 1 the service is the parent of a worker pool; otherwise the bridge itself.
    """
    path = options.get("config")
    try:
        config = load_config(path) if path else default_config()
    except ConfigError as e:
        sys.stderr.write(f"ssebridge: {e}\n")
        raise SystemExit(2) from None
    if config.workers > 1:
        from ssebridge.workers import WorkerPool

        try:
            return WorkerPool(config, path, config.workers)
        except ValueError as e:
            sys.stderr.write(f"ssebridge: {config.source}: {e}\n")
            raise SystemExit(2) from None
    return BridgeService(config)
