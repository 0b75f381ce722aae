"""The seed's routing language, pure: templates, conditions, actions, rules and their resolution.

Owns, in import order: ``errors`` (``RuleError``, ``RefusedChannel``), ``limits`` (``MAX_CHANNELS``,
``MAX_CHANNEL_LENGTH``), ``wire`` (the one decoding of wire bytes into rule text), ``templates``
(``$1``, ``${VAR}``, ``glob_escape``), ``actions`` (``sse:``/``sseraw:``, several channels and
patterns, the app's offload list), ``channels`` (``Resolved``, the checks of channel and pattern
names), ``conditions`` (``route-if``), ``rules`` (rule kinds, parsing, resolution; every public name
of the language is importable from here). May import: ``ssebridge.address``. No Twisted, no I/O.
"""
