"""A worker process of a ``workers = N`` pool: ``python -m ssebridge.worker`` (started by the parent)."""

from __future__ import annotations

import argparse
import sys

from twisted.logger import Logger, globalLogBeginner

from ssebridge.config import ConfigError, default_config, load_config
from ssebridge.logs import inherited_observer

log = Logger()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ssebridge.worker")
    parser.add_argument("--config")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--families", default="")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config) if args.config else default_config()
    except ConfigError as e:
        sys.stderr.write(f"ssebridge worker: {e}\n")
        return 2
    families = [int(f) for f in args.families.split(",") if f]

    from twisted.internet import reactor

    from ssebridge.service import BridgeService

    globalLogBeginner.beginLoggingTo([inherited_observer()], redirectStandardIO=False)
    service = BridgeService(config, reactor=reactor, inherited=families, run_mules=False)
    service.worker_index = args.index
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 1 if service.start_failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
