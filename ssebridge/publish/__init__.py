"""What an app imports to talk to the bridge: Twisted-free, cheap to import from a web worker.

- ``offload_header(channel)`` / ``offload(channel)``: hand the current request over to a stream.
- ``Publisher(redis_client)``: publish events with ids and history (needs redis-py:
  ``pip install 'ssebridge[publish]'``); ``publish.lua`` is the same for other languages.
- ``publisher_for(address)``: the same from an address in any form the bridge takes (a server, a
  ``sentinel://`` master, a ``cluster://``).
- ``envelope``: ids, history keys and the live envelope format.

May import: the standard library, redis-py (in ``publisher``, given by the caller; in ``connect``),
``ssebridge.address`` (Twisted-free), and ``ssebridge.upstream.uwsgi_compat`` (Twisted-free) for
``offload``. Nothing else of ssebridge.
"""

from __future__ import annotations

from ssebridge.publish.connect import publisher_for
from ssebridge.publish.offload import OFFLOAD_HEADER, OFFLOAD_VARIABLE, offload, offload_header
from ssebridge.publish.publisher import Publisher

__all__ = ["OFFLOAD_HEADER", "OFFLOAD_VARIABLE", "Publisher", "offload", "offload_header", "publisher_for"]
