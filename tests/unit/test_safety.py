"""Each pure safety check fed its bad input: refused, with a one-line message saying what to do."""

from __future__ import annotations

import pytest

from pytest_dashtam.errors import SafetyError
from pytest_dashtam.safety import (
    Violation,
    check_all,
    check_database_name,
    check_environment,
    check_host,
    check_redis_index,
    check_test_name,
    check_testing_flag,
    database_name_from_url,
    is_owned_comment,
    is_test_database_name,
    ownership_comment,
    raise_for,
    redis_index_from_url,
)

GOOD_DATABASE_URL = "postgresql+asyncpg://dashtam_test_user:pw@127.0.0.1:5433/dashtam_test"


def _check_good(*, redis_url: str = "redis://127.0.0.1:6380/1", redis_databases: int | None = None) -> list[Violation]:
    """check_all on the test env file's settings, with the Redis part varied."""
    return check_all(
        environment="testing",
        testing=True,
        database_url=GOOD_DATABASE_URL,
        redis_url=redis_url,
        dev_database="dashtam",
        redis_databases=redis_databases,
    )


def _one_line(violation: Violation | None) -> Violation:
    assert violation is not None
    assert "\n" not in violation.message
    return violation


# --- environment and TESTING ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["development", "production", "Testing", "test", ""])
def test_environment_other_than_testing_is_refused(value: str) -> None:
    violation = _one_line(check_environment(value))
    assert violation.check == "environment"
    assert "ENVIRONMENT=testing" in violation.message


def test_environment_testing_passes() -> None:
    assert check_environment("testing") is None


@pytest.mark.parametrize("value", [False, None, "true", "false", 1, "1"])
def test_testing_flag_must_be_boolean_true(value: object) -> None:
    violation = _one_line(check_testing_flag(value))
    assert violation.check == "testing_flag"
    assert "TESTING=true" in violation.message


def test_testing_flag_true_passes() -> None:
    assert check_testing_flag(True) is None


# --- database name ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["dashtam_test", "test_x", "dashtam_test_gw0", "dashtam_test_tpl_ab12cd34ef56", "test", "my-tests", "TEST_DB"],
)
def test_test_names_pass(name: str) -> None:
    assert is_test_database_name(name)
    assert check_database_name(f"postgresql+asyncpg://u:p@127.0.0.1/{name}", "dashtam") is None


@pytest.mark.parametrize("name", ["dashtam", "contest", "latest_prices", "attest", "testimony", "prod"])
def test_names_without_test_word_are_refused(name: str) -> None:
    violation = _one_line(check_database_name(f"postgresql+asyncpg://u:p@127.0.0.1/{name}", "dashtam_dev"))
    assert violation.check == "database_name"
    assert repr(name) in violation.message


def test_password_containing_test_does_not_make_a_dev_url_pass() -> None:
    url = "postgresql+asyncpg://dashtam_user:my_test_password@127.0.0.1:5432/dashtam"
    violation = _one_line(check_database_name(url, "dashtam"))
    assert violation.check == "database_name"
    # The password never appears in the message; the name that was read does.
    assert "my_test_password" not in violation.message
    assert "'dashtam'" in violation.message


def test_user_and_host_containing_test_do_not_make_a_dev_url_pass() -> None:
    url = "postgresql+asyncpg://test_user:test@test-host.localhost:5432/app_prod?options=test"
    violation = _one_line(check_database_name(url, "dashtam"))
    assert violation.check == "database_name"


def test_the_dev_database_name_is_refused_even_if_it_looks_like_a_test_name() -> None:
    url = "postgresql+asyncpg://u:p@127.0.0.1/dashtam_test"
    violation = _one_line(check_database_name(url, "dashtam_test"))
    assert "dev database" in violation.message


def test_dashtam_is_refused() -> None:
    assert check_database_name("postgresql+asyncpg://dashtam_user:pw@127.0.0.1/dashtam", "dashtam") is not None


def test_url_without_database_is_refused() -> None:
    violation = _one_line(check_database_name("postgresql+asyncpg://u:p@127.0.0.1:5432", "dashtam"))
    assert "no database name" in violation.message


def test_name_is_read_from_the_path_only() -> None:
    assert database_name_from_url("postgresql://test:test@127.0.0.1/prod?host=test") == "prod"
    assert database_name_from_url("postgresql://u@/dashtam_test?host=/run/postgresql") == "dashtam_test"
    assert database_name_from_url("postgresql://u@h/my%20test") == "my test"


def test_bare_name_check() -> None:
    assert check_test_name("dashtam_test_gw1", "dashtam") is None
    assert check_test_name("dashtam", "dashtam") is not None
    assert check_test_name("", "dashtam") is not None


# --- host -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@127.0.0.1:5432/dashtam_test",
        "postgresql://u:p@127.8.9.10:5432/dashtam_test",
        "postgresql://u:p@localhost/dashtam_test",
        "postgresql://u:p@[::1]:5432/dashtam_test",
        "postgresql://u@/dashtam_test?host=/var/run/postgresql",
        "postgresql://u@/dashtam_test",
        "redis://127.0.0.1:6379/1",
        "unix:///tmp/redis.sock?db=1",
    ],
)
def test_local_hosts_pass(url: str) -> None:
    assert check_host(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:secret@db.example.com:5432/dashtam_test",
        "postgresql://u:secret@10.0.0.5:5432/dashtam_test",
        "postgresql://u:secret@192.168.1.20/dashtam_test",
        "postgresql://u@/dashtam_test?host=prod-db.internal",
        "redis://:secret@cache.example.com:6379/1",
    ],
)
def test_non_loopback_hosts_are_refused(url: str) -> None:
    violation = _one_line(check_host(url))
    assert violation.check == "host"
    assert "secret" not in violation.message
    if ":secret@" in url:
        assert ":***@" in violation.message


def test_allowed_hosts_pass() -> None:
    assert check_host("postgresql://u:p@postgres:5432/dashtam_test", allowed_hosts=["postgres"]) is None
    assert check_host("postgresql://u:p@postgres:5432/dashtam_test", allowed_hosts=["redis"]) is not None


# --- redis index ------------------------------------------------------------------------------------------


def test_dev_redis_index_is_refused() -> None:
    violation = _one_line(check_redis_index(0))
    assert violation.check == "redis_index"
    assert "dev index" in violation.message
    assert check_redis_index(3, dev_index=3) is not None


def test_redis_index_beyond_databases_is_refused() -> None:
    violation = _one_line(check_redis_index(16, databases=16))
    assert "16 databases" in violation.message
    assert check_redis_index(15, databases=16) is None


def test_negative_redis_index_is_refused() -> None:
    assert check_redis_index(-1) is not None


def test_redis_index_from_url() -> None:
    assert redis_index_from_url("redis://127.0.0.1:6379/4") == 4
    assert redis_index_from_url("redis://127.0.0.1:6379") == 0
    assert redis_index_from_url("unix:///tmp/r.sock?db=2") == 2
    with pytest.raises(ValueError, match="index"):
        redis_index_from_url("redis://127.0.0.1:6379/x")


# --- all together ----------------------------------------------------------------------------------------


def test_check_all_passes_good_settings() -> None:
    assert _check_good(redis_databases=16) == []


def test_check_all_reports_every_violation() -> None:
    violations = check_all(
        environment="development",
        testing=False,
        database_url="postgresql+asyncpg://dashtam_user:test@db.example.com:5432/dashtam",
        redis_url="redis://cache.example.com:6379/0",
        dev_database="dashtam",
    )
    checks = [v.check for v in violations]
    assert checks == ["environment", "testing_flag", "database_name", "host", "host", "redis_index"]


def test_check_all_refuses_index_beyond_databases() -> None:
    violations = _check_good(redis_url="redis://127.0.0.1:6379/16", redis_databases=16)
    assert [v.check for v in violations] == ["redis_index"]


def test_check_all_refuses_unparsable_redis_index() -> None:
    violations = _check_good(redis_url="redis://127.0.0.1:6379/one")
    assert [v.check for v in violations] == ["redis_index"]


def test_raise_for_joins_messages_on_one_line() -> None:
    violations = [Violation("environment", "first problem"), Violation("host", "second problem")]
    with pytest.raises(SafetyError, match=r"^first problem; second problem$"):
        raise_for(violations)
    raise_for([])


def test_ownership_stamp() -> None:
    stamp = ownership_comment("template", "ab12")
    assert stamp == "pytest-dashtam:template:ab12"
    assert is_owned_comment(stamp)
    assert not is_owned_comment(None)
    assert not is_owned_comment("")
    assert not is_owned_comment("dev data, do not drop")


# --- the gate cannot be bypassed in schema.py ---------------------------------------------------------------


def test_schema_has_one_drop_and_it_runs_the_checks_first() -> None:
    """Every DROP DATABASE is in `_drop_database`, after the name check and the live ownership check."""
    import ast
    import inspect

    from pytest_dashtam import schema

    tree = ast.parse(inspect.getsource(schema))
    destructive = ("DROP DATABASE", "DROP TABLE", "DROP SCHEMA", "TRUNCATE", "DELETE FROM", "flushdb", "flushall")
    holders = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
            for child in ast.walk(node):
                text = child.value if isinstance(child, ast.Constant) and isinstance(child.value, str) else ""
                if any(word in text for word in destructive):
                    holders.append(node.name)
                if isinstance(child, ast.Attribute) and child.attr in ("flushdb", "flushall"):
                    holders.append(node.name)
    assert set(holders) == {"_drop_database"}

    drop = next(n for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef) and n.name == "_drop_database")
    first_call: dict[str, int] = {}
    for call in ast.walk(drop):
        if isinstance(call, ast.Call):
            name = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")
            first_call[name] = min(first_call.get(name, call.lineno), call.lineno)
    drop_line = next(
        c.lineno
        for c in ast.walk(drop)
        if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value.startswith("DROP DATABASE")
    )
    assert first_call["check_test_name"] < first_call["check_owned_or_absent"] < drop_line
