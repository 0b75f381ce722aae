"""Channels and fan-out: who listens to what, and one shared frame written to every listener.

Owns: ``channels`` (``Hub``: channels by (server, name); ``ChannelGroup``: the channels and patterns one
transport carries, its sink), ``channel`` (one channel: subscribers, frames, ids, holding while a
replay or catch-up is read), ``patterns`` (``PSUBSCRIBE`` subscriptions), ``replay`` (reads of the
server's history for resuming clients and catch-ups), ``stats`` (the counters). May import:
``ssebridge.frames``, ``ssebridge.fanout`` (the loop that sends a shared frame to many streams),
``ssebridge.interfaces``, ``ssebridge.logs``, ``ssebridge.publish.envelope``, ``ssebridge.config.defaults``.
Never HTTP, never Redis: a transport feeds the hub through the sink
interface, history comes through ``interfaces.History``, and streams subscribe to it.
"""
