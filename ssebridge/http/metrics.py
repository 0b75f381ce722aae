"""Prometheus metrics and health checks, rendered in the reactor thread.

prometheus_client's own Twisted helper is a ``WSGIResource``: its collectors would run in a pool thread
while the reactor mutates the counters. Here a custom collector reads ``Stats`` and the hub at scrape
time, in the reactor thread, so what is scraped is one consistent moment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.web.resource import Resource
from twisted.web.server import Request

from ssebridge.hub.channels import Hub

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

_COUNTERS = (
    ("streams_opened", "Streams opened."),
    ("streams_closed", "Streams closed, for any reason."),
    ("streams_refused", "Stream requests refused with 503 (stream limit or shutting down)."),
    ("slow_clients_disconnected", "Clients cut off for not reading fast enough."),
    ("messages_received", "Messages received from Redis."),
    ("messages_oversize", "Messages not delivered for being over the size limit."),
    ("frames_delivered", "Events written to clients."),
    ("bytes_delivered", "Bytes of events written to clients."),
    ("redis_connects", "Redis connections established (the first, and every reconnect)."),
    ("redis_disconnects", "Redis connections lost."),
    ("subscribe_refusals", "Error replies to SUBSCRIBE (NOAUTH, NOPERM...), retries included."),
    ("messages_malformed", "Messages on an event channel that are not ssebridge1 envelopes."),
    ("catch_ups", "History reads filling what a channel missed (a reconnect, or a hole in the ids)."),
    ("upstream_errors", "Upstream failures answered with 5xx."),
)


class BridgeCollector(Collector):
    """Reads the hub's counters and gauges at each scrape."""

    def __init__(self, hub: Hub, open_streams: Callable[[], int]) -> None:
        self.hub = hub
        self.open_streams = open_streams

    def collect(self) -> Iterator[Any]:
        stats = self.hub.stats
        for name, text in _COUNTERS:
            counter = CounterMetricFamily(f"ssebridge_{name}", text)
            counter.add_metric([], getattr(stats, name))
            yield counter
        yield GaugeMetricFamily("ssebridge_streams_open", "Streams open now.", value=self.open_streams())
        yield GaugeMetricFamily(
            "ssebridge_channels_subscribed", "Channels subscribed now.", value=self.hub.channel_count()
        )
        yield GaugeMetricFamily(
            "ssebridge_subscriptions_refused",
            "Channels whose subscription the server refuses now (readiness is false meanwhile).",
            value=self.hub.refused_count(),
        )
        redis_up = GaugeMetricFamily(
            "ssebridge_redis_connected", "1 when the connection to a Redis server is up.", labels=["server"]
        )
        for key, group in self.hub.groups.items():
            describe = getattr(key, "describe", None)
            label = describe() if callable(describe) else str(key)
            # The same ``Transport.connected`` readiness reads (``Hub.not_ready``).
            redis_up.add_metric([label], 1.0 if group.transport.connected else 0.0)
        yield redis_up


class MetricsResource(Resource):
    """``GET`` → the Prometheus text exposition of the bridge's metrics."""

    isLeaf = True

    def __init__(self, hub: Hub, open_streams: Callable[[], int]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BridgeCollector(hub, open_streams))

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE)
        request.setHeader(b"Cache-Control", b"no-cache")
        return generate_latest(self.registry)


class HealthResource(Resource):
    """``/livez``: the process answers. ``/readyz``: and its configured Redis servers are connected,
    answering, and refusing none of its subscriptions (``Hub.not_ready``)."""

    isLeaf = True

    def __init__(self, hub: Hub, readiness: bool) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.hub = hub
        self.readiness = readiness

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        why = self.hub.not_ready() if self.readiness else None
        if why is not None:
            request.setResponseCode(503)
            return f"not ready: {why}\n".encode()
        return b"ok\n"


def operations_resource(hub: Hub, open_streams: Callable[[], int]) -> Resource:
    """A resource tree with ``/metrics``, ``/livez`` and ``/readyz``, for a separate listener."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(hub, open_streams))
    root.putChild(b"livez", HealthResource(hub, readiness=False))
    root.putChild(b"readyz", HealthResource(hub, readiness=True))
    return root
