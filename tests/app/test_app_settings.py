"""The settings validators refuse unsafe or malformed configurations with a message saying what to do."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dashtam.core.config import Settings

_VARIABLES = ("ENVIRONMENT", "TESTING", "DEBUG", "TOKEN_ENCRYPTION_KEY", "DATABASE_URL", "REDIS_URL")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the arguments below count, not whatever the test run exported."""
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)


def build(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


KEY = "dGVzdGluZy1vbmx5LWtleS1ub3QtZm9yLXJlYWwtdXM="


def test_production_with_debug_is_refused() -> None:
    with pytest.raises(ValidationError, match="DEBUG must be false when ENVIRONMENT is production"):
        build(ENVIRONMENT="production", DEBUG=True, TOKEN_ENCRYPTION_KEY=KEY)


def test_production_with_testing_is_refused() -> None:
    with pytest.raises(ValidationError, match="TESTING must be false"):
        build(ENVIRONMENT="production", TESTING=True, TOKEN_ENCRYPTION_KEY=KEY)


@pytest.mark.parametrize("environment", ["development", "production"])
def test_missing_key_outside_testing_is_refused(environment: str) -> None:
    with pytest.raises(ValidationError, match="TOKEN_ENCRYPTION_KEY is required outside testing"):
        build(ENVIRONMENT=environment)


def test_missing_key_in_testing_gets_the_test_only_key() -> None:
    settings = build(ENVIRONMENT="testing", TESTING=True)
    assert settings.TOKEN_ENCRYPTION_KEY is not None
    assert settings.TOKEN_ENCRYPTION_KEY.get_secret_value() == KEY


def test_production_with_a_key_and_no_debug_is_accepted() -> None:
    settings = build(ENVIRONMENT="production", TOKEN_ENCRYPTION_KEY=KEY)
    assert (settings.ENVIRONMENT, settings.DEBUG) == ("production", False)
    assert KEY not in repr(settings)  # the key is a SecretStr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u@h/db", "postgresql\\+asyncpg"),
        ("mysql+aiomysql://u@h/db", "postgresql\\+asyncpg"),
    ],
)
def test_database_url_must_be_asyncpg(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        build(ENVIRONMENT="testing", DATABASE_URL=url)


@pytest.mark.parametrize(
    ("url", "message"),
    [("http://h:6379/0", "redis:// or rediss://"), ("redis://h:6379/abc", "must be the Redis index")],
)
def test_redis_url_must_be_redis_with_an_index(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        build(ENVIRONMENT="testing", REDIS_URL=url)


def test_derived_values() -> None:
    settings = build(
        ENVIRONMENT="testing",
        DATABASE_URL="postgresql+asyncpg://u:p@h:5433/dashtam_test",
        REDIS_URL="redis://h:6380/3",
    )
    assert (settings.database_name, settings.redis_index) == ("dashtam_test", 3)
    assert build(ENVIRONMENT="testing", REDIS_URL="redis://h:6379").redis_index == 0


@pytest.mark.parametrize("key", ["not-a-key", "c2hvcnQ=", ""])
def test_malformed_encryption_key_is_refused_at_start_up(key: str) -> None:
    with pytest.raises(ValidationError, match=r"not a Fernet key.*Fernet\.generate_key"):
        build(ENVIRONMENT="development", TOKEN_ENCRYPTION_KEY=key)
