"""The HTTP side: the Klein router, one client's stream, the guarded Site, static files, metrics.

Owns: ``router`` (requests to streams, static files, the upstream or refusals), ``stream`` (one SSE
client), ``site`` (the connection's guards), ``body`` (a request body streamed to the upstream),
``admission`` (which bodies are read at all), ``static``, ``metrics``. May import: ``ssebridge.hub``,
``ssebridge.routing``, ``ssebridge.redis.address``, ``ssebridge.upstream.base``, ``ssebridge.frames``,
``ssebridge.interfaces``, ``ssebridge.config`` (models only). Never the runtime.
"""
