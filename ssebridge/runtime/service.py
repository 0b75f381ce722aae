"""The service that wires it all together: hub, Redis transports, the HTTP router, listeners, mules.

``BridgeService`` is a Twisted ``MultiService``: ``twistd ssebridge`` runs one, and any Twisted program
can run one too (``BridgeService(load_config(path)).setServiceParent(application)``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from ssebridge.config.model import Config
from ssebridge.http.admission import bridge_body_policy, no_bodies
from ssebridge.http.router import Bridge
from ssebridge.http.site import BridgeSite, default_max_connections
from ssebridge.hub.channels import Hub
from ssebridge.redis.connect import redis_history_factory, redis_transport_factory
from ssebridge.runtime.lifecycle import StartError, default_max_streams, raise_fd_limit, stop_and_exit
from ssebridge.runtime.listeners import adopt_listeners, listen, per_worker_endpoint
from ssebridge.runtime.sdnotify import notify
from ssebridge.upstream.base import Upstream
from ssebridge.upstream.factory import build_upstream

log = Logger()

#: A replacing worker retries its metrics port every METRICS_RETRY seconds, METRICS_TRIES times.
METRICS_RETRY = 0.25
METRICS_TRIES = 400


class BridgeService(MultiService):
    """One bridge process: listens, routes, streams; started and stopped as one Twisted service."""

    def __init__(
        self,
        config: Config,
        reactor: Any = None,
        inherited: Sequence[int] = (),
        run_mules: bool = True,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.hub = Hub(
            redis_transport_factory(reactor),
            max_message_size=config.max_message_size,
            make_history=redis_history_factory(reactor),
        )
        # Loading a WSGI app runs its code: a broken one fails here, before anything listens.
        self.upstream = build_upstream(config, reactor)
        self.bridge = Bridge(
            self.hub,
            rules=config.rules,
            static_maps=config.static_maps,
            default_server=config.redis,
            client_buffer=config.client_buffer,
            confirm_timeout=config.confirm_timeout,
            max_streams=config.max_streams,
            upstream=self.upstream,
            offload_header=config.offload_header,
            reactor=reactor,
            max_channels=config.max_channels,
        )
        self.site = BridgeSite(
            self.bridge.resource(),
            header_timeout=config.header_timeout,
            idle_timeout=config.idle_timeout,
            max_body=config.max_body,
            body_policy=bridge_body_policy(self.bridge),
            body_timeout=config.body_timeout,
            body_min_rate=config.body_min_rate,
            max_connections=config.max_connections,
            streams=self.open_streams,
            access_log=config.access_log,
        )
        self.metrics_site: BridgeSite | None = None
        if config.metrics_path:
            from ssebridge.http.metrics import HealthResource, MetricsResource

            base = config.metrics_path.rsplit("/", 1)[0]
            self.bridge.fixed[config.metrics_path] = MetricsResource(self.hub, self.open_streams)
            self.bridge.fixed[base + "/livez"] = HealthResource(self.hub, readiness=False)
            self.bridge.fixed[base + "/readyz"] = HealthResource(self.hub, readiness=True)
        if config.metrics_listen:
            from ssebridge.http.metrics import operations_resource

            self.metrics_site = BridgeSite(
                operations_resource(self.hub, self.open_streams),
                body_policy=no_bodies,
                access_log=config.access_log,
            )
        self.ports: list[IListeningPort] = []
        #: The ``listen`` ports (not metrics), in order: what a hand-over passes to a new process.
        self.listener_ports: list[Any] = []
        #: Address families of listening sockets inherited at fds 3, 4... (a worker of a pool).
        self.inherited = tuple(inherited)
        self.worker_index: int | None = None
        #: A worker replacing another (reload, upgrade): the metrics port may still be the other's for
        #: a few seconds, so it is retried in the background instead of failing the start.
        self.metrics_wait = False
        #: Set when starting failed (the process then exits with status 1).
        self.start_failed = False
        if run_mules:
            from ssebridge.runtime.mules import MuleService

            for spec in config.mules:
                MuleService(spec).setServiceParent(self)  # type: ignore[no-untyped-call]

    @property
    def stats(self) -> Any:
        return self.hub.stats

    def open_streams(self) -> int:
        return len(self.bridge.streams)

    def startService(self) -> Deferred[None]:
        started = Deferred.fromCoroutine(self._start())
        started.addErrback(self._start_failed)
        return started

    def _start_failed(self, failure: Failure) -> None:
        # twistd ignores a Deferred from startService: without this a port in use or a missing
        # systemd socket would leave a process that never listens and says nothing.
        self.start_failed = True
        log.critical("could not start: {error}", error=failure.getErrorMessage() or repr(failure.value))
        if not isinstance(failure.value, (CannotListenError, OSError, ValueError, StartError)):
            log.failure("start failed", failure)
        stop_and_exit(self.reactor, 1)

    async def _start(self) -> None:
        for warning in self.config.warnings:
            log.warn("config: {warning}", warning=warning)
        fd_limit = raise_fd_limit()
        if not self.bridge.max_streams:
            self.bridge.max_streams = default_max_streams(fd_limit)
        if not self.site.max_connections:
            self.site.max_connections = default_max_connections(fd_limit)
        log.info(
            "open-files limit {fds}; at most {streams} streams",
            fds=fd_limit,
            streams=self.bridge.max_streams,
        )
        # Connect to the default Redis server now, not on the first client: readiness means Redis is up.
        self.hub.connect(self.config.redis)
        if self.inherited:
            self.ports.extend(adopt_listeners(self.reactor, self.inherited, self.site))
        else:
            for description in self.config.listen:
                self.ports.append(await listen(self.reactor, description, self.site, "listen"))
        self.listener_ports = list(self.ports)
        if self.metrics_site is not None:
            description = self.config.metrics_listen
            if self.worker_index is not None:
                description = per_worker_endpoint(description, self.worker_index)
            if self.metrics_wait:
                # Tried once running (so a stop meanwhile is seen), then retried until it is free.
                self.reactor.callLater(0, self._listen_metrics_when_free, description)
            else:
                port = await listen(self.reactor, description, self.metrics_site, "metrics_listen")
                self.ports.append(port)
        for port in self.ports:
            log.info("listening on {address}", address=str(port.getHost()))
        self.bridge.start_heartbeat(self.config.heartbeat)
        super().startService()  # type: ignore[no-untyped-call]
        if self.worker_index is None:
            notify(f"READY=1\nSTATUS=listening on {len(self.ports)} sockets\nMAINPID={os.getpid()}")

    def _listen_metrics_when_free(self, description: str, tries: int = 0) -> None:
        assert self.metrics_site is not None

        def listening(port: IListeningPort) -> None:
            if not self.running:
                port.stopListening()
                return
            self.ports.append(port)
            log.info("listening on {address}", address=str(port.getHost()))

        def busy(failure: Failure) -> None:
            if not failure.check(CannotListenError) or tries >= METRICS_TRIES or not self.running:
                log.error("metrics_listen: {error}", error=failure.getErrorMessage())
                return
            self.reactor.callLater(METRICS_RETRY, self._listen_metrics_when_free, description, tries + 1)

        d = Deferred.fromCoroutine(listen(self.reactor, description, self.metrics_site, "metrics_listen"))
        d.addCallbacks(listening, busy)

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        try:
            if self.worker_index is None:
                notify("STOPPING=1")
            # From this instant the app gets no new request (503, Retry-After): one let in while the
            # listeners close could still be running when the drain's bound cuts it.
            closing: list[Deferred[Any]] = []
            if self.upstream is not None:
                closing.append(self._drain_upstream(self.upstream))
            ports, self.ports = self.ports, []
            await DeferredList([maybeDeferred(p.stopListening) for p in ports], consumeErrors=True)
            log.info("stopping: closing {count} streams", count=len(self.bridge.streams))
            # Streams close and the app's requests drain side by side: neither waits for the other.
            closing.append(self.bridge.close_all(self.config.shutdown_window, self.config.retry_ms))
            await DeferredList(closing, consumeErrors=True)
            await maybeDeferred(super().stopService)
            if self.upstream is not None:
                await self.upstream.stop()
            await self.hub.stop()
        except Exception:
            # twistd drops exceptions raised while stopping: say it here.
            log.failure("error while stopping the bridge")

    def _drain_upstream(self, upstream: Upstream) -> Deferred[None]:
        """Let the requests the app already has finish (within ``drain_timeout``) before ``stop()``
        cuts what is left: answering one 503 while the app still runs it invites a second run."""
        timeout = self.config.drain_timeout

        def drained(complete: bool) -> None:
            if not complete:
                log.warn("app requests still running after drain_timeout = {timeout}s: cut", timeout=timeout)

        return upstream.drain(timeout).addCallback(drained)
