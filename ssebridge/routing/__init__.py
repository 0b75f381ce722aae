"""The seed's routing language, pure: templates, conditions, rules and their resolution.

Owns: ``rules``. May import: ``ssebridge.redis.address``. No Twisted, no I/O.
"""
