"""The dev and test environments as `dashtam-env` sees them: their env files and the plugin's configuration.

The test environment's configuration is the one a pytest run in this project resolves; dev's reads the same
sources, with its own env file (copied from its example on first use).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pytest_dashtam.backends import BackendChoice, EnvName
from pytest_dashtam.config import PluginConfig
from pytest_dashtam.config.env_files import env_value, read_env_file
from pytest_dashtam.errors import ConfigError

# The dev environment is the CLI's own (the plugin knows only the test one): its files are fixed.
DEV_COMPOSE_FILE = "docker/docker-compose.dev.yml"
DEV_ENV_FILE = "env/.env.dev"
DEV_ENV_EXAMPLE = "env/.env.dev.example"


@dataclass(frozen=True)
class Env:
    """One environment as the CLI sees it: its name, env file and values, and the plugin's configuration.

    The test environment's `config` is exactly what a pytest run in this project resolves (pyproject's
    [tool.pytest.ini_options] / pytest.ini, DASHTAM_* variables, the CLI's own flags on top), so a stack
    brought up here is the one pytest attaches to. The dev environment reads the same sources for the
    backend, servers, binaries and timeout, with its own env file.
    """

    name: EnvName
    root: Path
    env_file: Path
    values: Mapping[str, str]
    config: PluginConfig

    def value(self, key: str, default: str = "") -> str:
        """The env file's `key` in any case, as the plugin and pydantic-settings read it (lower-case fields)."""
        return env_value(self.values, key) or default


def say(message: str) -> None:
    print(f"dashtam-env: {message}", flush=True)


def plugin_config(
    root: Path, *, env_file: Path | None = None, backend: BackendChoice | None = None, timeout: float | None = None
) -> PluginConfig:
    """The plugin's own configuration of this project (pyproject's [tool.pytest.ini_options], pytest.ini,
    DASHTAM_* variables), the CLI's flags in the place of pytest's: one configuration for both."""
    from pytest_dashtam.config import OPTIONS, build_config

    ini = _ini_values(root)
    by_key = {o.ini: o.name for o in OPTIONS}
    values = {by_key[k]: v for k, v in ini.items() if k in by_key}
    cli: dict[str, object | None] = {"backend": backend, "timeout": timeout}
    if env_file is not None:
        cli["env_file"] = str(env_file)
    return build_config(cli, os.environ, values, root)


def _ini_values(root: Path) -> dict[str, object]:
    """pytest's ini keys for the plugin, from pytest.ini (which wins, as in pytest) or pyproject.toml."""
    import configparser
    import tomllib

    pytest_ini = root / "pytest.ini"
    if pytest_ini.is_file():
        parser = configparser.ConfigParser()
        parser.read(pytest_ini)
        if parser.has_section("pytest"):
            return {k: v for k, v in parser.items("pytest") if k.startswith("dashtam_")}
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {pyproject}: {exc}") from None
        section = data.get("tool", {}).get("pytest", {}).get("ini_options", {})
        return {k: v for k, v in section.items() if k.startswith("dashtam_")}
    return {}


def load_env(name: EnvName, root: Path, *, backend: BackendChoice | None = None, timeout: float | None = None) -> Env:
    """The environment's files and configuration; the dev env file is copied from its example on first use."""
    if name == "test":
        config = plugin_config(root, backend=backend, timeout=timeout)
        return Env(name=name, root=root, env_file=config.env_file, values=config.env_values, config=config)
    path = root / DEV_ENV_FILE
    if not path.exists():
        example = root / DEV_ENV_EXAMPLE
        if not example.exists():
            raise ConfigError(f"{path} is missing and so is {example}; run dashtam-env from the project root")
        shutil.copyfile(example, path)
        say(f"created {path.relative_to(root)} from {example.name}; edit it to set your own secrets")
    config = plugin_config(root, env_file=path, backend=backend, timeout=timeout)
    values = read_env_file(path)
    return Env(name=name, root=root, env_file=path, values=values, config=config)
