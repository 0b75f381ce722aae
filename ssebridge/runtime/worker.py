"""A worker process of a ``workers = N`` pool: ``python -m ssebridge.runtime.worker`` (run by the parent)."""

from __future__ import annotations

import argparse
import signal
import sys

from twisted.logger import Logger, globalLogBeginner

from ssebridge.config.model import ConfigError, default_config, load_config
from ssebridge.logs import inherited_observer
from ssebridge.runtime.deathsig import die_with_parent
from ssebridge.runtime.lifecycle import EXIT_CANNOT_START

log = Logger()


def _sighup(signum: int, frame: object) -> None:
    log.info("SIGHUP ignored: the parent owns reload")


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
        # SIGTERM when the pool's parent dies, even by SIGKILL: no orphan keeps serving the port.
        die_with_parent(args.parent)
    # The parent owns reload (SIGHUP); a stray one (a closed terminal, a careless kill -HUP) must not
    # cut this worker's streams without a retry hint. A handler rather than SIG_IGN, which anything
    # the worker runs (a WSGI app's subprocess) would inherit.
    signal.signal(signal.SIGHUP, _sighup)

    from twisted.internet import reactor

    from ssebridge.runtime.service import BridgeService

    globalLogBeginner.beginLoggingTo([inherited_observer(worker=args.index)], redirectStandardIO=False)
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
