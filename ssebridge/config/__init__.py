"""The configuration: its model and settings table, value parsing, the two syntaxes, the loader.

Owns, in import order (each module imports only those before it): ``defaults`` (every default value),
``endpoint`` (endpoint strings), ``schema`` (``Config``, its parts, ``ConfigError``), ``checks``
(a scalar value's check and its words), ``settings`` (the scalar keys' table and value parsing),
``reference`` (the docs' key table, rendered from it), ``builder`` (a parser's output becoming a ``Config``),
``ini`` and ``toml`` (the two syntaxes), ``loader`` (``load_config``, ``check_config``,
``default_config``) and ``model``, the facade other code imports from. May import:
``ssebridge.routing``, ``ssebridge.address``, ``ssebridge.publish`` (Twisted-free names).
Pure: no Twisted, no I/O beyond reading the file.
"""
