"""ssebridge: hold thousands of Server-Sent Events clients for Python web apps, fed by Redis pub/sub.

The public API is what you need to run the bridge or mount it in your own Twisted program:

- ``load_config(path)`` / ``default_config()`` / ``Config`` / ``ConfigError``: the configuration.
- ``BridgeService(config)``: the whole bridge as a Twisted service (what ``twistd ssebridge`` runs).
- ``Hub``: channels and fan-out; one Redis subscription per channel, shared by its clients.
  ``redis_hub()`` makes one fed by Redis pub/sub.
- ``ChannelResource(hub, server, channel)``: a twisted.web resource streaming one channel; mount it
  in any ``Site`` or return it from a Klein route.
- ``Bridge(hub, rules=...)``: the router (routing rules, static maps, upstream); ``.resource()`` is the
  twisted.web resource of the whole router.
- ``RedisServer`` / ``parse_server``: where Redis is.

Names are imported lazily, so ``python -m ssebridge.clock`` does not load Twisted.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Bridge",
    "BridgeService",
    "ChannelResource",
    "Config",
    "ConfigError",
    "Hub",
    "RedisServer",
    "default_config",
    "load_config",
    "parse_server",
    "redis_hub",
]

_WHERE = {
    "Bridge": "ssebridge.http.router",
    "BridgeService": "ssebridge.runtime.service",
    "ChannelResource": "ssebridge.http.resource",
    "Config": "ssebridge.config.model",
    "ConfigError": "ssebridge.config.model",
    "Hub": "ssebridge.hub.channels",
    "RedisServer": "ssebridge.address",
    "default_config": "ssebridge.config.model",
    "load_config": "ssebridge.config.model",
    "parse_server": "ssebridge.address",
    "redis_hub": "ssebridge.redis.connect",
}

if TYPE_CHECKING:
    from ssebridge.address import RedisServer, parse_server
    from ssebridge.config.model import Config, ConfigError, default_config, load_config
    from ssebridge.http.resource import ChannelResource
    from ssebridge.http.router import Bridge
    from ssebridge.hub.channels import Hub
    from ssebridge.redis.connect import redis_hub
    from ssebridge.runtime.service import BridgeService


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'ssebridge' has no attribute {name!r}")
