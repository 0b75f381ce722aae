"""Everything that speaks to Redis: server addresses, the RESP encoding, the pub/sub transport.

Owns: ``address`` (the one address parser), ``pubsub`` (one txredisapi subscriber connection per server,
reporting to the hub through its sink) with its reply loop (``replies``), the retries of refused
subscriptions (``retries``) and the explanation of server-side closes (``closes``). May import:
``ssebridge.hub`` (the sink and the channel group), ``ssebridge.interfaces``. Never HTTP, never the
runtime. History, Sentinel and Cluster land here next.
"""
