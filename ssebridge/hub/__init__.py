"""Channels and fan-out: who listens to what, and one shared frame written to every listener.

Owns: ``Hub`` (channels by (server, name)), ``ChannelGroup`` (the channels one transport carries), the
counters in ``stats``. May import: ``ssebridge.frames``, ``ssebridge.interfaces``. Never HTTP, never Redis:
a transport feeds the hub through the sink interface, and streams subscribe to it.
"""
