"""The checks over the test settings: the env file's text, and the loaded settings object as the app will read it."""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

from pytest_dashtam.safety._env_urls import check_env_url
from pytest_dashtam.safety._hosts import check_host
from pytest_dashtam.safety._names import (
    check_database_name,
    check_environment,
    check_redis_index,
    check_test_name,
    check_testing_flag,
    redis_index_from_url,
)
from pytest_dashtam.safety._redact import redact_url
from pytest_dashtam.safety._targets import host_targets
from pytest_dashtam.safety._violation import Violation

if TYPE_CHECKING:
    from pytest_dashtam.config import PluginConfig


def check_all(
    *,
    environment: str,
    testing: object,
    database_url: str,
    redis_url: str,
    dev_database: str,
    dev_redis_index: int = 0,
    redis_databases: int | None = None,
    allowed_hosts: Collection[str] = (),
    environ: Mapping[str, str] | None = None,
    redis: bool = True,
) -> list[Violation]:
    """Every pure check over the test settings; an empty list means the gate is passed. `redis` False: the
    project has no Redis (the run starts, leases and exports none), so there is no Redis URL to judge."""
    found: list[Violation | None] = [
        check_environment(environment),
        check_testing_flag(testing),
        check_database_name(database_url, dev_database),
        check_host(database_url, allowed_hosts, environ=environ),
    ]
    if not redis:
        return [v for v in found if v is not None]
    found.append(check_host(redis_url, allowed_hosts, environ=environ))
    if host_targets(redis_url, environ)[1] is not None:
        return [v for v in found if v is not None]  # unreadable: said once by check_host, no guessed index
    try:
        index = redis_index_from_url(redis_url)
    except ValueError as exc:
        found.append(Violation("redis_index", f"REDIS_URL {redact_url(redis_url)}: {exc}; use redis://host:port/N"))
    else:
        found.append(check_redis_index(index, dev_redis_index, redis_databases))
    return [v for v in found if v is not None]


# The spellings of true the gate accepts: the settings class would read more ("yes", "on", "t", "y"), but a
# test run's flag is written on purpose, and an accidental "yes" in a dev file must not pass for it.
_TRUE = frozenset({"1", "true"})

_ENV_FILE_KNOB = "dashtam_env_file / --dashtam-env-file"


def _values_any_case(values: Mapping[str, str | None], name: str) -> list[tuple[str, str]]:
    """Every (key, value) whose key is `name` in any case: pydantic-settings matches env keys that way, and
    when a file spells one twice in different cases the gate cannot know which one wins, so it judges all."""
    wanted = name.lower()
    return [(key, value or "") for key, value in values.items() if key.lower() == wanted]


def _key_note(key: str, name: str) -> str:
    return "" if key == name else f" (as {key})"


def check_env_file(
    values: Mapping[str, str | None],
    *,
    dev_database: str,
    dev_redis_index: int,
    test_database: str,
    redis_index: int,
    allowed_hosts: Collection[str] = (),
) -> list[Violation]:
    """The checks that need only the test env file's text, so a wrong file is refused at configure time,
    before a server is started or a settings class is imported."""
    found: list[Violation | None] = [
        check_env_url(name, value, allowed_hosts)
        for name in ("DATABASE_URL", "REDIS_URL")
        for _key, value in _values_any_case(values, name)
    ]
    if any(v is not None for v in found):
        return [v for v in found if v is not None]  # the name and index below would be read from a bad URL
    environments = _values_any_case(values, "ENVIRONMENT")
    if not environments:
        found.append(
            Violation(
                "environment",
                "the test env file does not set ENVIRONMENT (looked up in any case), the test run requires "
                f"'testing'; set ENVIRONMENT=testing in the test env file ({_ENV_FILE_KNOB})",
            )
        )
    for key, value in environments:
        if value.strip() != "testing":
            found.append(
                Violation(
                    "environment",
                    f"ENVIRONMENT{_key_note(key, 'ENVIRONMENT')} is {value!r} in the test env file, the test run "
                    f"requires 'testing'; set ENVIRONMENT=testing in the test env file ({_ENV_FILE_KNOB})",
                )
            )
    flags = _values_any_case(values, "TESTING")
    if not flags:
        found.append(
            Violation(
                "testing_flag",
                "the test env file does not set TESTING (looked up in any case), the test run requires true; "
                "set TESTING=true in the test env file",
            )
        )
    for key, value in flags:
        if value.strip().lower() not in _TRUE:
            found.append(
                Violation(
                    "testing_flag",
                    f"TESTING{_key_note(key, 'TESTING')} is {value!r} in the test env file, the test run requires "
                    "true (true or 1); set TESTING=true in the test env file",
                )
            )
    found.append(check_test_name(test_database, dev_database))
    found.append(check_redis_index(redis_index, dev_redis_index))
    return [v for v in found if v is not None]


def check_config(config: PluginConfig) -> list[Violation]:
    """Every check on a PluginConfig that needs no server: the env file's text and the given servers' hosts.

    The one gate pytest (at configure time) and `dashtam-env` (before anything starts) both go through.
    """
    from pytest_dashtam.safety._hosts import check_servers

    violations = check_env_file(
        config.env_values,
        dev_database=config.dev_database,
        dev_redis_index=config.dev_redis_index,
        test_database=config.test_database,
        redis_index=config.redis_index,
        allowed_hosts=config.allowed_hosts,
    )
    external = config.backend in ("auto", "external")
    violations += check_servers(
        postgres_url=config.postgres_url if external else None,
        redis_url=config.redis_url if external else None,
        allowed_hosts=config.allowed_hosts,
    )
    return violations


def _field_aliases(info: object) -> set[str]:
    """A pydantic field's alias and validation aliases, lower-cased: the names its env var may go by."""
    names: set[str] = set()
    for alias in (getattr(info, "alias", None), getattr(info, "validation_alias", None)):
        choices = getattr(alias, "choices", [alias])
        names.update(c.lower() for c in choices if isinstance(c, str))
    return names


def settings_value(settings: object, name: str) -> object:
    """`settings.<name>` in whatever case the project spelled the field; None when there is no such field.

    pydantic-settings matches env vars case-insensitively, so `database_url: str` is fed by DATABASE_URL
    and the gate must find it under either spelling (or under an alias such as
    `Field(validation_alias="DATABASE_URL")`).
    """
    wanted = name.lower()
    if isinstance(settings, Mapping):
        return next((v for k, v in settings.items() if isinstance(k, str) and k.lower() == wanted), None)
    try:
        return getattr(settings, name)
    except AttributeError:
        pass
    fields = getattr(type(settings), "model_fields", None)
    if isinstance(fields, Mapping):
        for field_name, info in fields.items():
            if field_name.lower() == wanted or wanted in _field_aliases(info):
                return getattr(settings, field_name, None)
    extra = getattr(settings, "__pydantic_extra__", None)
    if isinstance(extra, Mapping):
        found = next((v for k, v in extra.items() if isinstance(k, str) and k.lower() == wanted), None)
        if found is not None:
            return found
    for attribute in dir(settings):
        if attribute.lower() == wanted:
            return getattr(settings, attribute, None)
    return None


def plain_value(value: object) -> str | None:
    """A settings value as the plain text the app will use: SecretStr revealed, a DSN or enum as its text.

    `str(SecretStr(...))` is '**********' and would hide a dev URL from the gate.
    """
    if value is None:
        return None
    reveal = getattr(value, "get_secret_value", None)
    if callable(reveal):
        value = reveal()
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


def check_settings(
    settings: object,
    *,
    dev_database: str,
    dev_redis_index: int,
    redis_databases: int | None,
    allowed_hosts: Collection[str],
    environ: Mapping[str, str] | None = None,
    redis: bool = True,
) -> list[Violation]:
    """`check_all` over a loaded settings object, reading its fields whatever their case and type."""
    environment = plain_value(settings_value(settings, "ENVIRONMENT"))
    testing = settings_value(settings, "TESTING")
    redis_value = settings_value(settings, "REDIS_URL")
    found = check_all(
        environment=environment if environment is not None else "",
        testing=testing,
        database_url=plain_value(settings_value(settings, "DATABASE_URL")) or "",
        redis_url=plain_value(redis_value) or "",
        dev_database=dev_database,
        dev_redis_index=dev_redis_index,
        redis_databases=redis_databases,
        allowed_hosts=allowed_hosts,
        environ=environ,
        # Settings without a Redis field read no Redis URL (the app may take the plugin's from elsewhere).
        redis=redis and redis_value is not None,
    )
    # check_all can only say "ENVIRONMENT is ''"; a field the settings lack needs a different fix.
    missing: dict[str, tuple[str, str, str]] = {}
    if environment is None:
        missing["environment"] = ("ENVIRONMENT", "'testing'", "ENVIRONMENT=testing")
    if testing is None:
        missing["testing_flag"] = ("TESTING", "true", "TESTING=true")
    return [
        Violation(
            v.check,
            f"the settings' {missing[v.check][0]} is None or no field of any case, the test run requires "
            f"{missing[v.check][1]}; declare the field and set {missing[v.check][2]} in the test env file",
        )
        if v.check in missing
        else v
        for v in found
    ]
