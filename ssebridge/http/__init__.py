"""The HTTP side: the Klein router, one client's stream, the guarded Site, static files, metrics.

Owns: ``router`` (requests to streams, static files, the upstream or refusals), ``resource``
(``ChannelResource`` and ``attach_stream``: a request waiting for its subscription), ``stream`` (one SSE
client and its write path), ``site`` (the connection's guards: header and body deadlines, the cap on
connections that are not streams), ``admission`` (which request bodies are read at all), ``static`` and
``ranges`` (files, one byte range at most), ``metrics`` (Prometheus text, ``/livez``, ``/readyz``).
May import: ``ssebridge.hub``, ``ssebridge.routing``, ``ssebridge.address``, ``ssebridge.upstream``,
``ssebridge.takeover``, ``ssebridge.frames``, ``ssebridge.interfaces``, ``ssebridge.logs``,
``ssebridge.config`` (models and defaults). Never the runtime.
"""
