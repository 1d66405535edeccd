"""The project's own objects, found by configuration: its settings class, app, metadata, dependencies.

The plugin never imports the application by name; these are the only places it imports what the user
named (`module:attr`), each failure a one-line ConfigError naming the option.
"""

from __future__ import annotations

import os
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pytest_dashtam.errors import ConfigError
from pytest_dashtam.urls import mask_url, mask_urls_in

if TYPE_CHECKING:
    from pytest_dashtam.config import PluginConfig
    from pytest_dashtam.isolation.shapes import Shape


def import_object(spec: str, what: str) -> Any:
    """`module:attr.attr` imported (pkgutil's own resolution); a one-line ConfigError naming the option."""
    module_name, _, attr_path = spec.partition(":")
    try:
        return pkgutil.resolve_name(spec)
    except ModuleNotFoundError as exc:
        if (exc.name and module_name.startswith(exc.name)) or exc.name == module_name:
            raise ConfigError(
                f"dashtam_{what}={spec!r}: cannot import {module_name!r} ({exc}); "
                f"check the module path (the project must be importable, e.g. pip install -e .)"
            ) from exc
        raise ConfigError(f"dashtam_{what}={spec!r}: importing {module_name!r} failed: {exc}") from exc
    except ImportError as exc:
        raise ConfigError(f"dashtam_{what}={spec!r}: cannot import {module_name!r} ({exc})") from exc
    except AttributeError:
        raise ConfigError(
            f"dashtam_{what}={spec!r}: {module_name!r} has no attribute {attr_path!r}; check the name"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"dashtam_{what}={spec!r}: {exc}; write it as module:attr") from None


def load_settings(spec: str, env_file: Path) -> Any:
    """The app's settings class instantiated as the app would: from the environment the plugin exported
    (this worker's DATABASE_URL and REDIS_URL, which pydantic-settings prefers to the env file) and the
    env file."""
    cls = import_object(spec, "settings")
    kwargs: dict[str, Any] = {}
    try:
        from pydantic_settings import BaseSettings

        if isinstance(cls, type) and issubclass(cls, BaseSettings):
            kwargs["_env_file"] = env_files_with(cls.model_config.get("env_file"), env_file)
            cls = masked_settings_class(cls)
    except ImportError:  # pragma: no cover - pydantic-settings is a dependency
        pass
    try:
        return cls(**kwargs)
    except Exception as exc:
        first = str(exc).strip().splitlines()
        detail = mask_urls_in(" ".join(line.strip() for line in first[:3]))
        raise ConfigError(
            f"the settings class {spec} refused the test env file {env_file}: {detail}; fix the env file"
        ) from exc


def env_files_with(own: object, env_file: Path) -> tuple[str, ...]:
    """The settings class's own env files (`model_config["env_file"]`: none, one, or a sequence), then the
    test env file, which pydantic-settings lets win as the last one.

    The test env file is added, not swapped in: a project's fields that only its own `.env` sets (an API
    key, a feature flag) stay set, and the test values still win over them (so does the environment the
    plugin exported, over both).
    """
    if own is None:
        files: list[str] = []
    elif isinstance(own, str | Path):
        files = [str(own)]
    else:
        files = [str(f) for f in own] if isinstance(own, list | tuple) else []
    test = str(env_file)
    return (*[f for f in files if os.path.abspath(f) != os.path.abspath(test)], test)


def masked_settings_class(cls: type[Any]) -> type[Any]:
    """A subclass of the project's settings class whose repr and str mask the password of every URL.

    The instance the `dashtam_settings` fixture hands out is shown by pytest wherever a test that uses it
    fails (assertion rewriting, --showlocals, JUnit XML, xdist reports), and the stack's URLs carry their
    passwords; pydantic builds both texts from `__repr_args__`, so masking there covers them all. The
    values themselves stay real (the tests connect with them) and `isinstance(settings, cls)` still holds.
    """

    def __repr_args__(self: Any) -> Any:
        for name, value in super(masked, self).__repr_args__():
            yield name, mask_urls_in(value) if isinstance(value, str) else value

    masked: type[Any] = type(
        cls.__name__,
        (cls,),
        {"__repr_args__": __repr_args__, "__module__": cls.__module__, "__qualname__": cls.__qualname__},
    )
    return masked


def check_settings_point_at(settings: Any, spec: str, database_url: str, redis_url: str | None) -> None:
    """The settings must carry the URLs the plugin exported (a validator or an env_prefix may not); no Redis
    URL is exported for a project without Redis (its settings' own value, if any, reaches nothing: the guard
    refuses every Redis connection of such a run)."""
    from sqlalchemy.engine import make_url

    from pytest_dashtam.safety import plain_value, settings_value

    def same_database(value: object) -> bool:
        try:
            got, want = make_url(plain_value(value) or ""), make_url(database_url)
        except Exception:
            return False
        return (got.host, got.port, got.database) == (want.host, want.port, want.database)

    db_value = settings_value(settings, "DATABASE_URL")
    redis_value = settings_value(settings, "REDIS_URL")
    if db_value is not None and not same_database(db_value):
        raise ConfigError(
            f"the settings class {spec} does not read DATABASE_URL from the environment as the plugin exported it "
            f"(it has {mask_url(plain_value(db_value) or '')}, the test database is {mask_url(database_url)}): "
            "an env_prefix, an alias or a validator? the settings must take the test stack's URL"
        )
    redis_value_text = (plain_value(redis_value) or "").rstrip("/") if redis_value is not None else None
    if redis_url is not None and redis_value_text is not None and redis_value_text != redis_url.rstrip("/"):
        raise ConfigError(
            f"the settings class {spec} does not read REDIS_URL from the environment as the plugin exported it "
            f"(it has {mask_url(plain_value(redis_value) or '')}, the test index is {mask_url(redis_url)}); "
            "the settings must take the test stack's URL"
        )


def load_app(config: PluginConfig) -> Any:
    """The project's FastAPI app: the object dashtam_app names, or what the factory it names returns."""
    if config.app is None:
        raise ConfigError(
            "the client fixture needs the project's ASGI app: set dashtam_app = 'myapp.main:app' in "
            "[tool.pytest.ini_options] (or --dashtam-app / DASHTAM_APP)"
        )
    target = import_object(config.app, "app")
    if not hasattr(target, "dependency_overrides"):
        if not callable(target):
            raise ConfigError(f"dashtam_app={config.app!r} is neither an ASGI app nor an app factory")
        target = target()  # a factory: build the app once for the session
    if not hasattr(target, "dependency_overrides"):
        raise ConfigError(
            f"dashtam_app={config.app!r} did not give a FastAPI app (no dependency_overrides); "
            "point it at the app or at a function returning it"
        )
    return target


class Dependencies(NamedTuple):
    """The app dependencies the project named for `client` to override (None where unnamed), and what the
    session dependency gives (isolation.shapes: its stand-in has the same shape)."""

    session: Any
    session_shape: Shape
    redis: Any


def load_dependencies(config: PluginConfig) -> Dependencies:
    """The session and Redis dependencies the project named; an unknown session shape is a ConfigError."""
    from pytest_dashtam.isolation.shapes import dependency_shape

    session_dep = import_object(config.session_dependency, "session_dependency") if config.session_dependency else None
    redis_dep = import_object(config.redis_dependency, "redis_dependency") if config.redis_dependency else None
    shape: Shape = "session"
    if session_dep is not None and config.session_dependency is not None:
        shape = dependency_shape(session_dep, config.session_dependency)
    return Dependencies(session_dep, shape, redis_dep)


def app_label(config: PluginConfig, app: Any) -> str:
    """How messages name the app `client` serves: the dashtam_app it was loaded from, else its class."""
    return config.app or f"{type(app).__module__}.{type(app).__qualname__} (from the dashtam_app fixture)"
