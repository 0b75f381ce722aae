"""The configuration: its model and settings table, value parsing, the two syntaxes, the loader.

Owns: ``model`` (``Config`` and its parts, the settings table, the loader), ``ini`` (the seed's uWSGI
syntax), ``toml`` (the native one). May import: ``ssebridge.routing``, ``ssebridge.redis.address``.
Pure: no Twisted, no I/O beyond reading the file.
"""
