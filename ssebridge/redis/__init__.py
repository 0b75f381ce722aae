"""Everything that speaks to Redis: the RESP encoding, the pub/sub transports, history reads.

Owns: ``pubsub`` (one txredisapi subscriber connection per server, reporting to the hub through its
sink) with its reply loop (``replies``), the retries of refused subscriptions (``retries``) and the
explanation of server-side closes (``closes``); ``history`` and ``streams`` (reads of Redis Streams);
``connect`` (the hub's factories, one branch per kind of address: a server, a Sentinel-managed
master, a cluster); ``publisher`` (the Twisted publisher). May import: ``ssebridge.address``,
``ssebridge.hub`` (the sink and the channel group), ``ssebridge.interfaces``, ``ssebridge.publish``.
Never HTTP, never the runtime.
"""
