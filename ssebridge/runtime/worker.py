"""A worker process of a ``workers = N`` pool: ``python -m ssebridge.runtime.worker`` (run by the parent)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import TYPE_CHECKING

from twisted.logger import Logger, globalLogBeginner

from ssebridge.config.model import ConfigError, default_config, load_config
from ssebridge.logs import inherited_observer
from ssebridge.runtime.deathsig import die_with_parent
from ssebridge.runtime.lifecycle import EXIT_CANNOT_START

if TYPE_CHECKING:
    from ssebridge.runtime.service import BridgeService

log = Logger()


def _ignored(signum: int, frame: object) -> None:
    log.info("{signal} ignored: the parent owns reload and upgrade", signal=signal.Signals(signum).name)


#: Seconds a worker waits for Redis before it reports ready anyway (streams then wait for it).
REDIS_WAIT = 5.0


def _report_ready(service: BridgeService, fd: int, waited: float = 0.0) -> None:
    """Tell the parent this worker serves (it adopted its sockets and Redis answers, or ``REDIS_WAIT``
    passed) by writing to ``fd``."""
    if service.start_failed:
        return
    if waited < REDIS_WAIT and service.hub.not_ready() is not None:
        service.reactor.callLater(0.05, _report_ready, service, fd, waited + 0.05)
        return
    try:
        os.write(fd, b"ready\n")
        os.close(fd)
    except OSError as e:
        log.warn("could not tell the parent this worker is ready: {error}", error=str(e))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ssebridge.runtime.worker")
    parser.add_argument("--config")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--families", default="")
    parser.add_argument("--parent", type=int, default=0)
    # Where to write one line once this worker serves: the parent waits for it before a reload
    # stops the worker this one replaces.
    parser.add_argument("--ready-fd", type=int, default=0)
    # Started by a reload or an upgrade: the worker it replaces may still hold the metrics port.
    parser.add_argument("--replacing", action="store_true")
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
    signal.signal(signal.SIGHUP, _ignored)
    # Likewise SIGUSR2 (upgrade), whose default would kill the worker: `systemctl kill -s USR2`
    # without --kill-whom=main reaches every process of the service.
    signal.signal(signal.SIGUSR2, _ignored)

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
    service.metrics_wait = args.replacing

    def start() -> None:
        started = service.startService()
        if args.ready_fd:
            started.addCallback(lambda _: _report_ready(service, args.ready_fd))

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 1 if service.start_failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
