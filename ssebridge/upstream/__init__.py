"""The app behind the routes: in-process WSGI, a remote HTTP app, and the seed's ``uwsgi`` module.

Owns: ``base`` (what every upstream answers, the hop-by-hop rules), ``proxy``, ``wsgi``,
``uwsgi_compat``, ``factory`` (the upstream a config names). May import: ``ssebridge.config`` (models),
``ssebridge.publish`` (header names), ``ssebridge.interfaces``. Never the hub, Redis or the runtime.
"""
