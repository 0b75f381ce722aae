"""The configuration's public face: every name other code imports from ``ssebridge.config.model``.

The package is split by responsibility, arrows running one way (each imports only those before it):
``defaults`` (every default value) and ``endpoint`` (endpoint strings); ``schema`` (``Config``, its
parts, ``ConfigError``); ``settings`` (the scalar keys' table and value parsing); ``builder`` (a
parser's output becoming a ``Config``); ``ini`` and ``toml`` (the two syntaxes); ``loader``
(``load_config``, ``check_config``, ``default_config``). This module re-exports them and is imported
by nothing inside the package, so ``from ssebridge.config.model import Config, load_config`` keeps
working without any circle.
"""

from __future__ import annotations

from ssebridge.config.builder import (
    INTERPRETERS,
    ConfigBuilder,
    mule_from_command,
    mule_from_script,
    static_map,
)
from ssebridge.config.defaults import LISTEN as DEFAULT_LISTEN
from ssebridge.config.endpoint import ENDPOINT_TYPES, listen_endpoint
from ssebridge.config.loader import check_config, default_config, first_section, load_config
from ssebridge.config.schema import Config, ConfigError, MuleSpec, StaticMap
from ssebridge.config.settings import (
    SETTINGS,
    SETTINGS_BY_INI,
    SETTINGS_BY_TOML,
    Setting,
    header_mapping,
    setting_from_text,
    setting_from_value,
    type_name,
)

__all__ = [
    "DEFAULT_LISTEN",
    "ENDPOINT_TYPES",
    "INTERPRETERS",
    "SETTINGS",
    "SETTINGS_BY_INI",
    "SETTINGS_BY_TOML",
    "Config",
    "ConfigBuilder",
    "ConfigError",
    "MuleSpec",
    "Setting",
    "StaticMap",
    "check_config",
    "default_config",
    "first_section",
    "header_mapping",
    "listen_endpoint",
    "load_config",
    "mule_from_command",
    "mule_from_script",
    "setting_from_text",
    "setting_from_value",
    "static_map",
    "type_name",
]
