"""PluginConfig: precedence CLI > environment > ini > default, sources, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_dashtam.config import OPTIONS, OPTIONS_BY_NAME, build_config, resolve
from pytest_dashtam.errors import ConfigError

# A value each option accepts, per level, all different so the winner is visible.
SAMPLES: dict[str, tuple[object, str, object]] = {
    "backend": ("local", "compose", "external"),
    "env_file": ("cli.env", "envvar.env", "ini.env"),
    "settings": ("cli:S", "env:S", "ini:S"),
    "app": ("cli:app", "env:app", "ini:app"),
    "metadata": ("cli:md", "env:md", "ini:md"),
    "alembic_ini": ("cli.ini", "env.ini", "ini.ini"),
    "session_dependency": ("cli:dep", "env:dep", "ini:dep"),
    "redis_dependency": ("cli:dep", "env:dep", "ini:dep"),
    "redis": ("true", "false", "auto"),
    "compose_files": (["a.yml"], "b.yml", ["c.yml"]),
    "compose_project": ("cli-test", "env-test", "ini-test"),
    "postgres_url": ("postgresql://cli", "postgresql://env", "postgresql://ini"),
    "redis_url": ("redis://cli", "redis://env", "redis://ini"),
    "keep": (True, "0", True),
    "keep_failed": (True, "0", True),
    "rebuild": (True, "0", True),
    "timings": (True, "0", True),
    "gc_freeze": ("off", "on", False),
    "dev_database": ("dev_cli", "dev_env", "dev_ini"),
    "dev_redis_index": ("3", "4", "5"),
    "redis_index": ("6", "7", "8"),
    "allowed_hosts": (["cli-host"], "env-host", ["ini-host"]),
    "timeout": ("1.5", "2.5", "3.5"),
    "postgres_bin": ("/cli/bin", "/env/bin", "/ini/bin"),
    "redis_bin": ("/cli/redis", "/env/redis", "/ini/redis"),
}


def test_every_option_has_samples() -> None:
    assert set(SAMPLES) == {o.name for o in OPTIONS}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_precedence_cli_env_ini_default(name: str) -> None:
    option = OPTIONS_BY_NAME[name]
    cli_value, env_value, ini_value = SAMPLES[name]
    cli, env, ini = {name: cli_value}, {option.env: env_value}, {name: ini_value}

    values, sources = resolve(cli, env, ini)
    assert sources[name] == option.flag
    values, sources = resolve({}, env, ini)
    assert sources[name] == option.env
    values, sources = resolve({}, {}, ini)
    assert sources[name] == f"ini {option.ini}"
    values, sources = resolve({}, {}, {})
    assert sources[name] == "default"
    assert values[name] == option.default


def test_explicit_false_beats_a_lower_true() -> None:
    """Read with `is None`, not `or`: DASHTAM_KEEP=0 must win over keep=true in ini."""
    values, sources = resolve({}, {"DASHTAM_KEEP": "0"}, {"keep": True})
    assert values["keep"] is False
    assert sources["keep"] == "DASHTAM_KEEP"


def test_explicit_empty_alembic_ini_beats_the_default() -> None:
    values, sources = resolve({}, {}, {"alembic_ini": ""})
    assert values["alembic_ini"] == ""
    assert sources["alembic_ini"] == "ini dashtam_alembic_ini"


def test_typed_values() -> None:
    values, _ = resolve({}, {"DASHTAM_REDIS_INDEX": "7", "DASHTAM_COMPOSE_FILES": "a.yml,b.yml"}, {})
    assert values["redis_index"] == 7
    assert values["compose_files"] == ("a.yml", "b.yml")


def test_bad_boolean_in_env_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"DASHTAM_KEEP='maybe' is not a boolean; use one of"):
        resolve({}, {"DASHTAM_KEEP": "maybe"}, {})


def test_bad_integer() -> None:
    with pytest.raises(ConfigError, match=r"dashtam_redis_index='x' is not an integer"):
        resolve({}, {}, {"redis_index": "x"})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    env = tmp_path / "env"
    env.mkdir()
    (env / ".env.test").write_text(
        "ENVIRONMENT=testing\nTESTING=true\n"
        "DATABASE_URL=postgresql+asyncpg://u:p@127.0.0.1:5433/shop_test\nREDIS_URL=redis://127.0.0.1:6380/3\n"
    )
    (env / ".env.dev.example").write_text(
        "DATABASE_URL=postgresql+asyncpg://u:p@127.0.0.1/shop_dev\nREDIS_URL=redis://127.0.0.1:6379/2\n"
    )
    (tmp_path / "alembic.ini").write_text("[alembic]\n")
    return tmp_path


def test_defaults_from_the_env_files(project: Path) -> None:
    config = build_config({}, {}, {}, project)
    assert config.backend == "auto"
    assert config.env_file == project / "env" / ".env.test"
    assert config.test_database == "shop_test"
    assert config.redis_index == 3
    assert config.dev_database == "shop_dev"
    assert config.dev_redis_index == 2
    assert config.alembic_ini == project / "alembic.ini"
    assert config.env_values["ENVIRONMENT"] == "testing"
    assert config.describe("backend") == "backend=auto (default)"


def test_dev_env_file_wins_over_the_example(project: Path) -> None:
    (project / "env" / ".env.dev").write_text("DATABASE_URL=postgresql+asyncpg://u@h/mine\n")
    assert build_config({}, {}, {}, project).dev_database == "mine"


def test_no_dev_env_file_means_dashtam_and_index_0(project: Path) -> None:
    (project / "env" / ".env.dev.example").unlink()
    config = build_config({}, {}, {}, project)
    assert (config.dev_database, config.dev_redis_index) == ("dashtam", 0)


def test_describe_names_the_source(project: Path) -> None:
    config = build_config({"backend": "local"}, {"DASHTAM_REDIS_INDEX": "5"}, {}, project)
    assert config.describe("backend") == "backend=local (from --dashtam-backend)"
    assert config.describe("redis_index") == "redis_index=5 (from DASHTAM_REDIS_INDEX)"
    assert config.describe("env_file") == "env_file=env/.env.test (default)"


def test_unknown_backend_lists_the_valid_ones(project: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({}, {"DASHTAM_BACKEND": "docker"}, {}, project)
    assert str(info.value) == (
        "dashtam_backend='docker' (from DASHTAM_BACKEND) is not a backend; valid values: auto, compose, local, external"
    )


def test_missing_env_file(project: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"the test env file .*nope.env \(dashtam_env_file from ini dashtam_env_file\) does not exist"
    ):
        build_config({}, {}, {"env_file": "nope.env"}, project)


def test_bad_import_string(project: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"dashtam_app='main.app' \(from --dashtam-app\) is not an import string; "
        r"write it as module:attr",
    ):
        build_config({"app": "main.app"}, {}, {}, project)


def test_missing_alembic_ini(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"set it empty to use metadata\.create_all"):
        build_config({}, {}, {"alembic_ini": "migrations/alembic.ini"}, project)
    (project / "alembic.ini").unlink()
    # No alembic.ini where the default looks: the metadata builds the schema, and the header says so.
    with pytest.raises(ConfigError, match=r"no schema source: there is no alembic.ini .* dashtam_metadata is not set"):
        build_config({}, {}, {}, project)
    config = build_config({"metadata": "shop.models:Base.metadata"}, {}, {}, project)
    assert config.alembic_ini is None
    assert config.describe("alembic_ini") == "alembic_ini=None (default: no alembic.ini, metadata.create_all)"
    assert build_config({}, {}, {"alembic_ini": ""}, project).alembic_ini is None


def test_no_option_defaults_to_another_project_s_code(project: Path) -> None:
    config = build_config({}, {}, {}, project)
    assert (config.settings, config.app, config.metadata) == (None, None, None)
    assert (config.session_dependency, config.redis_dependency) == (None, None)


def test_env_file_found_at_the_project_root_too(project: Path) -> None:
    (project / "env" / ".env.test").rename(project / ".env.test")
    assert build_config({}, {}, {}, project).env_file == project / ".env.test"


def test_env_file_that_is_a_directory(project: Path) -> None:
    (project / "envdir").mkdir()
    with pytest.raises(ConfigError, match=r"envdir .* is a directory"):
        build_config({"env_file": "envdir"}, {}, {}, project)


def test_env_file_needs_a_database_url_and_any_case_is_read(project: Path) -> None:
    (project / "env" / ".env.test").write_text("environment=testing\ntesting=true\nredis_url=redis://h/4\n")
    with pytest.raises(ConfigError, match=r"sets no DATABASE_URL with a database name"):
        build_config({}, {}, {}, project)
    (project / "env" / ".env.test").write_text("database_url=postgresql+asyncpg://h/app_test\nredis_url=redis://h/4\n")
    config = build_config({}, {}, {}, project)
    assert (config.test_database, config.redis_index) == ("app_test", 4)


def test_one_url_without_the_other(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"needs both URLs but --dashtam-redis-url \(DASHTAM_REDIS_URL\) is not set"):
        build_config({"postgres_url": "postgresql://postgres@127.0.0.1/postgres"}, {}, {}, project)


def test_external_without_urls(project: Path) -> None:
    with pytest.raises(ConfigError, match="dashtam_backend=external needs --dashtam-postgres-url"):
        build_config({"backend": "external"}, {}, {}, project)


def test_empty_env_url_counts_as_unset(project: Path) -> None:
    config = build_config({}, {"DASHTAM_POSTGRES_URL": "", "DASHTAM_REDIS_URL": ""}, {}, project)
    assert config.postgres_url is None
    assert config.redis_url is None


def test_negative_redis_index(project: Path) -> None:
    with pytest.raises(ConfigError, match="is negative"):
        build_config({"redis_index": "-1"}, {}, {}, project)


def test_config_is_frozen(project: Path) -> None:
    config = build_config({}, {}, {}, project)
    with pytest.raises(AttributeError):
        config.backend = "local"  # type: ignore[misc]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1"])
def test_timeout_must_be_positive_and_finite(project: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"must be a positive, finite number of seconds"):
        build_config({}, {"DASHTAM_TIMEOUT": value}, {}, project)


def test_repr_masks_the_server_passwords(project: Path) -> None:
    config = build_config(
        {"postgres_url": "postgresql://adm:s3cret@127.0.0.1/postgres", "redis_url": "redis://:r3dis@127.0.0.1:6379"},
        {},
        {},
        project,
    )
    assert "s3cret" not in repr(config)
    assert "r3dis" not in repr(config)
    assert "postgresql://adm:***@127.0.0.1/postgres" in repr(config)
