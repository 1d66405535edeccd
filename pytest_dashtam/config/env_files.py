"""Reading the env files: the test env file's variables, and the dev values beside it the tests must avoid."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from pytest_dashtam.errors import ConfigError

# Where the test env file is looked for when no option names it, in order.
DEFAULT_ENV_FILES = ("env/.env.test", ".env.test")


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of a dotenv file (KEY=VALUE lines; comments, blank lines and `export ` allowed).

    A file that cannot be read as UTF-8 text is a one-line ConfigError: python-dotenv would raise mid-parse.
    """
    from dotenv import dotenv_values

    try:
        return {k: v for k, v in dotenv_values(path, encoding="utf-8").items() if v is not None}
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"the env file {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"the env file {path} cannot be read ({exc.strerror or exc}); check its permissions"
        ) from None


def env_value(values: Mapping[str, str], name: str) -> str | None:
    """A variable of an env file whatever its case: pydantic-settings matches names case-insensitively."""
    if name in values:
        return values[name]
    lowered = name.lower()
    return next((v for k, v in values.items() if k.lower() == lowered), None)


def url_database(url: str | None) -> str:
    """The database a URL names ("" for none): the test env file's gives the test database's name."""
    if not url:
        return ""
    try:
        return urlsplit(url).path.lstrip("/").split("?")[0]
    except ValueError:
        return ""


def url_redis_index(url: str | None) -> int | None:
    """The index a redis://host/N URL names, None when it names none."""
    if not url:
        return None
    try:
        path = urlsplit(url).path.strip("/")
    except ValueError:
        return None
    return int(path) if path.isdigit() else None


def dev_env_values(env_file: Path) -> dict[str, str]:
    """The dev env file beside the test env file (.env.dev, else .env.dev.example), if any."""
    for name in (".env.dev", ".env.dev.example"):
        candidate = env_file.parent / name
        if candidate.is_file():
            return read_env_file(candidate)
    return {}
