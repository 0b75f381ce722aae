"""A worker process of a ``workers = N`` pool: ``python -m ssebridge.runtime.worker`` (run by the parent)."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys

from twisted.logger import Logger, globalLogBeginner

from ssebridge.config.model import ConfigError, default_config, load_config
from ssebridge.logs import inherited_observer
from ssebridge.runtime.lifecycle import EXIT_CANNOT_START

log = Logger()

#: prctl(2) option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Get SIGTERM when the pool's parent dies, even by SIGKILL: no orphan keeps serving the port."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            return
        # The parent may have died before prctl took effect.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ssebridge.runtime.worker")
    parser.add_argument("--config")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--families", default="")
    parser.add_argument("--parent", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config) if args.config else default_config()
    except ConfigError as e:
        sys.stderr.write(f"ssebridge worker: {e}\n")
        return EXIT_CANNOT_START
    families = [int(f) for f in args.families.split(",") if f]
    if args.parent:
        die_with_parent(args.parent)

    from twisted.internet import reactor

    from ssebridge.runtime.service import BridgeService

    globalLogBeginner.beginLoggingTo([inherited_observer()], redirectStandardIO=False)
    try:
        service = BridgeService(config, reactor=reactor, inherited=families, run_mules=False)
    except ValueError as e:
        # A WSGI app that does not load (here, though it did in the parent): one line, status 2.
        sys.stderr.write(f"ssebridge worker: {config.source}: {e}\n")
        return EXIT_CANNOT_START
    service.worker_index = args.index
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 1 if service.start_failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
