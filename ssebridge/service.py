"""The service that wires it all together: hub, Redis transports, the HTTP router, listeners, mules.

``BridgeService`` is a Twisted ``MultiService``: ``twistd ssebridge`` runs one, and any Twisted program
can run one too (``BridgeService(load_config(path)).setServiceParent(app)``).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.server import Site

from ssebridge.config import Config
from ssebridge.hub import Hub
from ssebridge.transport import redis_transport_factory
from ssebridge.web import Bridge

log = Logger()

#: Pending connections the kernel queues per listener: browsers reconnect in crowds.
DEFAULT_BACKLOG = 4096


def with_backlog(description: str) -> str:
    """Add a deep listen backlog to a ``tcp:``/``unix:`` endpoint string that does not name one."""
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "unix", "ssl") and "backlog=" not in description:
        return description + ":backlog=%d" % DEFAULT_BACKLOG
    return description


class QuietSite(Site):
    """A ``Site`` that never shows a traceback to a client and keeps streaming requests off its log."""

    displayTracebacks = False

    def log(self, request: Any) -> None:
        # One access-log line per finished request is written by the stream itself; the default
        # combined-log line would be noise for thousands of long-lived streams.
        return None


class BridgeService(MultiService):
    """One bridge process: listens, routes, streams; started and stopped as one Twisted service."""

    def __init__(self, config: Config, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.hub = Hub(redis_transport_factory(reactor))
        self.bridge = Bridge(
            self.hub,
            rules=config.rules,
            static_maps=config.static_maps,
            default_server=config.redis,
            reactor=reactor,
        )
        self.site = QuietSite(self.bridge.resource())
        self.ports: list[IListeningPort] = []
        from ssebridge.mule import MuleService

        for spec in config.mules:
            MuleService(spec).setServiceParent(self)

    @inlineCallbacks
    def startService(self) -> Any:
        for warning in self.config.warnings:
            log.warn("config: {warning}", warning=warning)
        for description in self.config.listen:
            endpoint = serverFromString(self.reactor, with_backlog(description))
            port = yield endpoint.listen(self.site)
            self.ports.append(port)
            log.info("listening on {address}", address=str(port.getHost()))
        super().startService()

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        try:
            ports, self.ports = self.ports, []
            await DeferredList([maybeDeferred(p.stopListening) for p in ports], consumeErrors=True)
            await maybeDeferred(super().stopService)
            await self.hub.stop()
        except Exception:
            # twistd drops exceptions raised while stopping: say it here.
            log.failure("error while stopping the bridge")
