"""The plugin's configuration: one table of knobs, read CLI > environment > ini > default.

`options` declares every knob once and resolves the raw values by precedence; `env_files` reads the test
env file (and the dev one beside it, whose database and index the tests must avoid); `build` checks the
resolved values and completes them into the frozen `PluginConfig`. No pytest import here: plugin.py hands
the raw values in as plain mappings, so the precedence rules can be tested without running pytest.
"""

from __future__ import annotations

from pytest_dashtam.config.build import NO_REDIS, PluginConfig, build_config
from pytest_dashtam.config.env_files import env_value
from pytest_dashtam.config.options import OPTIONS, OPTIONS_BY_NAME, BackendChoice, Option, resolve

__all__ = [
    "NO_REDIS",
    "OPTIONS",
    "OPTIONS_BY_NAME",
    "BackendChoice",
    "Option",
    "PluginConfig",
    "build_config",
    "env_value",
    "resolve",
]
