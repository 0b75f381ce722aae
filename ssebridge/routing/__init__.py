"""The seed's routing language, pure: templates, conditions, actions, rules and their resolution.

Owns, in import order: ``errors`` (``RuleError``, ``RefusedChannel``), ``wire`` (the one decoding of
wire bytes into rule text), ``templates`` (``$1``, ``${VAR}``), ``actions`` (``sse:``/``sseraw:``),
``conditions`` (``route-if``), ``rules`` (rule kinds, parsing, resolution; every public name of the
language is importable from here). May import: ``ssebridge.redis.address``. No Twisted, no I/O.
"""
