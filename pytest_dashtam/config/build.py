"""`PluginConfig`: the options resolved, checked and completed from the env files, in one frozen object.

Each value remembers where it came from, so the report header can say "backend=local (from --dashtam-backend)".
Every problem is one `ConfigError` saying what to do.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from pytest_dashtam.config.env_files import (
    DEFAULT_ENV_FILES,
    dev_env_values,
    env_value,
    read_env_file,
    url_database,
    url_redis_index,
)
from pytest_dashtam.config.options import BACKENDS, BackendChoice, parse_bool, resolve
from pytest_dashtam.errors import ConfigError

_IMPORT_STRING = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


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
    # Whether the project uses Redis (the `redis` option, `auto` resolved): without, no Redis is started,
    # leased, exported or guarded for, and the Redis fixtures fail with the reason.
    redis: bool
    compose_files: tuple[str, ...]
    compose_project: str | None
    postgres_url: str | None
    redis_url: str | None
    keep: bool
    keep_failed: bool
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
    "redis",
    "compose_project",
    "keep",
    "keep_failed",
    "rebuild",
    "timeout",
)


_IMPORT_EXAMPLES = {
    "settings": "myapp.core.config:Settings",
    "app": "myapp.main:app",
    "metadata": "myapp.models:Base.metadata",
    "session_dependency": "myapp.core.database:get_session",
    "redis_dependency": "myapp.core.redis:get_redis",
}


def _check_import_string(name: str, value: str, source: str) -> None:
    if not _IMPORT_STRING.match(value):
        raise ConfigError(
            f"dashtam_{name}={value!r} (from {source}) is not an import string; write it as module:attr, "
            f"e.g. {_IMPORT_EXAMPLES[name]}"
        )


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
    env_values = read_env_file(env_file)
    # A Redis URL names the external backend's server: with the local or compose backend it is not used.
    redis_choice = str(values["redis"]).strip().lower()
    redis = _uses_redis(redis_choice, values, src, env_values, redis_url if backend in ("auto", "external") else None)
    if redis_choice == "auto":
        why = "something names a Redis" if redis else "nothing names a Redis"
        sources = {**sources, "redis": f"{src('redis')}: auto, {why}"}
    # Without Redis an external PostgreSQL alone is a whole stack.
    if redis and backend in ("auto", "external") and (postgres_url is None) != (redis_url is None):
        missing = (
            "--dashtam-redis-url (DASHTAM_REDIS_URL)"
            if redis_url is None
            else ("--dashtam-postgres-url (DASHTAM_POSTGRES_URL)")
        )
        raise ConfigError(
            f"an external server needs both URLs but {missing} is not set; give both, or neither to let the "
            "plugin run its own servers"
        )
    if backend == "external" and postgres_url is None and not redis:
        raise ConfigError(
            "dashtam_backend=external needs --dashtam-postgres-url (or DASHTAM_POSTGRES_URL); give it, "
            "or choose another backend"
        )
    if backend == "external" and postgres_url is None:
        raise ConfigError(
            "dashtam_backend=external needs --dashtam-postgres-url and --dashtam-redis-url "
            "(or DASHTAM_POSTGRES_URL / DASHTAM_REDIS_URL); give both, or choose another backend"
        )

    test_database = url_database(env_value(env_values, "DATABASE_URL"))
    if not test_database:
        raise ConfigError(
            f"the test env file {env_file} sets no DATABASE_URL with a database name; add one such as "
            "DATABASE_URL=postgresql+asyncpg://localhost/myapp_test (the plugin keeps the name and driver, and "
            "points host, port and credentials at the test stack)"
        )
    dev_values = dev_env_values(env_file)
    dev_database = _optional_str(values["dev_database"])
    if dev_database is None:
        dev_database = url_database(env_value(dev_values, "DATABASE_URL")) or "dashtam"
    dev_redis_index = cast("int | None", values["dev_redis_index"])
    if dev_redis_index is None:
        dev_redis_index = url_redis_index(env_value(dev_values, "REDIS_URL"))
        dev_redis_index = 0 if dev_redis_index is None else dev_redis_index
    redis_index = cast("int | None", values["redis_index"])
    if redis_index is None:
        redis_index = url_redis_index(env_value(env_values, "REDIS_URL"))
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
        redis=redis,
        compose_files=tuple(cast("tuple[str, ...]", values["compose_files"])),
        compose_project=_optional_str(values["compose_project"]),
        postgres_url=postgres_url,
        redis_url=redis_url,
        keep=bool(values["keep"]),
        keep_failed=bool(values["keep_failed"]),
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


# Why a run of a project without Redis has none: the Redis fixtures fail with it, the guard refuses with it.
NO_REDIS = (
    "this run has no Redis server: the project names none (no REDIS_URL in the test env file, no "
    "dashtam_redis_url or dashtam_redis_dependency, or dashtam_redis = false); set REDIS_URL in the test env "
    "file or dashtam_redis = true to have one"
)


def _uses_redis(
    choice: str,
    values: Mapping[str, object],
    src: Callable[[str], str],
    env_values: Mapping[str, str],
    redis_url: str | None,
) -> bool:
    """The `redis` option (`choice`, lower-cased): true or false as given; auto is true when anything names a
    Redis (the test env file's REDIS_URL, a Redis URL for the external backend, the app's Redis dependency).
    A project that names none has no use for a Redis server, and its code finds none to reach."""
    if choice == "auto":
        return (
            env_value(env_values, "REDIS_URL") is not None
            or redis_url is not None
            or _optional_str(values["redis_dependency"]) is not None
        )
    refused = ConfigError(f"dashtam_redis={values['redis']!r} (from {src('redis')}) is not auto, true or false")
    if not choice:  # parse_bool reads an empty value as false; here it is no choice at all
        raise refused
    try:  # true and false spelled as every boolean option spells them
        wanted = parse_bool(choice, "dashtam_redis")
    except ConfigError:
        raise refused from None
    if not wanted:
        if redis_url is not None or _optional_str(values["redis_dependency"]) is not None:
            given = "dashtam_redis_url" if redis_url is not None else "dashtam_redis_dependency"
            raise ConfigError(
                f"dashtam_redis=false (from {src('redis')}) but {given} (from {src(given.removeprefix('dashtam_'))}) "
                "names a Redis; drop one of them"
            )
        return False
    return True


def _optional_str(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _resolve_path(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path
