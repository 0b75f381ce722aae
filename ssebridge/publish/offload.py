"""Handing a request over to the bridge from an app: the header and variable names, and helpers.

Twisted-free, so a Django or Flask app imports it at no cost. An app answers a request with
``offload_header(channel)`` among its response headers (``X-SSE-Offload: CHANNEL``, no rules needed);
an in-process WSGI app may call ``offload(channel)`` instead, which sets the seed's ``X-SSE-OFFLOAD``
variable as ``uwsgi.add_var`` does.
"""

from __future__ import annotations

__all__ = ["OFFLOAD_HEADER", "OFFLOAD_VARIABLE", "offload", "offload_header"]

#: The response header the router honours with no rules configured.
OFFLOAD_HEADER = "X-SSE-Offload"
#: The variable the seed's apps set with ``uwsgi.add_var``; honoured with no rule configured, too.
OFFLOAD_VARIABLE = "X-SSE-OFFLOAD"


def offload(channel: str) -> None:
    """Ask for this request to become a stream on ``channel`` (sets ``X-SSE-OFFLOAD``).

    Works with no rule configured (the bridge reads the variable after the app answers), as well as
    with the seed's ``final-route-if-not = empty:${X-SSE-OFFLOAD} sse:${X-SSE-OFFLOAD}``. Over a
    remote ``proxy`` there is no such variable: return ``offload_header(channel)`` instead.
    """
    from ssebridge.upstream import uwsgi_compat

    uwsgi_compat.add_var(OFFLOAD_VARIABLE, channel)


def offload_header(channel: str) -> tuple[str, str]:
    """The response header that hands a request over to a stream on ``channel``, with no rules needed.

    The channel is encoded as UTF-8 and carried PEP 3333 style (bytes as latin-1 characters).
    """
    return (OFFLOAD_HEADER, channel.encode("utf-8").decode("latin-1"))
