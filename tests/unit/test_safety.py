"""Each pure safety check fed its bad input: refused, with a one-line message saying what to do."""

from __future__ import annotations

import ast
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_dashtam.errors import SafetyError
from pytest_dashtam.safety import (
    DEFAULT_POSTGRES_SOCKETS,
    Violation,
    check_all,
    check_database_name,
    check_env_file,
    check_env_url,
    check_environment,
    check_host,
    check_redis_index,
    check_resolvable,
    check_servers,
    check_settings,
    check_test_name,
    check_testing_flag,
    database_name_from_url,
    is_owned_comment,
    is_test_database_name,
    ownership_comment,
    plain_value,
    postgres_hosts,
    raise_for,
    redis_hosts,
    redis_index_from_url,
    settings_value,
)

# An environment with no PG* variables: the host tests must not depend on the shell that runs them.
NO_ENV: dict[str, str] = {}

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
        environ=NO_ENV,
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
    ["dashtam_test", "test_x", "dashtam_test_gw0", "dashtam_test_tpl_ab12cd34ef56", "test", "my-tests"],
)
def test_test_names_pass(name: str) -> None:
    assert is_test_database_name(name)
    assert check_database_name(f"postgresql+asyncpg://u:p@127.0.0.1/{name}", "dashtam") is None


@pytest.mark.parametrize(
    "name", ["TEST_DB", "Todo_Test", "todo'x_test", "todo;drop_test", "t\u00f6do_test", "a b_test"]
)
def test_names_that_are_not_plain_are_refused(name: str) -> None:
    violation = _one_line(check_database_name(f"postgresql+asyncpg://u:p@127.0.0.1/{name}", "dashtam_dev"))
    assert violation.check == "database_name"
    assert "plain lower-case name" in violation.message


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
    assert check_host(url, environ=NO_ENV) is None


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
    violation = _one_line(check_host(url, environ=NO_ENV))
    assert violation.check == "host"
    assert "secret" not in violation.message
    if ":secret@" in url:
        assert ":***@" in violation.message


def test_allowed_hosts_pass() -> None:
    assert check_host("postgresql://u:p@postgres:5432/dashtam_test", allowed_hosts=["postgres"]) is None
    assert check_host("postgresql://u:p@postgres:5432/dashtam_test", allowed_hosts=["redis"]) is not None


# --- hosts as the drivers resolve them -------------------------------------------------------------------


def test_hostless_url_with_remote_pghost_is_refused_and_names_pghost() -> None:
    """The incident: `postgres@/postgres` is not "the local socket" when PGHOST names another machine."""
    url = "postgresql://postgres:secret@/postgres"
    environ = {"PGHOST": "10.1.2.3"}
    assert postgres_hosts(url, environ) == ["10.1.2.3"]
    violation = _one_line(check_host(url, environ=environ))
    assert violation.check == "host"
    assert "'10.1.2.3'" in violation.message
    assert "from PGHOST" in violation.message
    assert "unset PGHOST" in violation.message
    assert "secret" not in violation.message


def test_pghost_list_with_one_remote_host_is_refused() -> None:
    environ = {"PGHOST": "/run/postgresql,db.example.com"}
    assert postgres_hosts("postgresql://u@/dashtam_test", environ) == ["/run/postgresql", "db.example.com"]
    violation = _one_line(check_host("postgresql://u@/dashtam_test", environ=environ))
    assert "'db.example.com' (from PGHOST" in violation.message


def test_pghost_socket_dir_is_accepted() -> None:
    environ = {"PGHOST": "/run/postgresql"}
    assert postgres_hosts("postgresql://postgres@/postgres", environ) == ["/run/postgresql"]
    assert check_host("postgresql://postgres@/postgres", environ=environ) is None


def test_pghost_is_ignored_when_the_url_names_a_host() -> None:
    environ = {"PGHOST": "10.1.2.3"}
    assert postgres_hosts("postgresql://u@127.0.0.1/db", environ) == ["127.0.0.1"]
    assert check_host("postgresql://u@127.0.0.1/dashtam_test", environ=environ) is None
    assert check_host("postgresql://u@/dashtam_test?host=/tmp", environ=environ) is None


def test_no_host_anywhere_is_the_default_socket() -> None:
    assert postgres_hosts("postgresql://u@/dashtam_test", NO_ENV) == list(DEFAULT_POSTGRES_SOCKETS)
    assert postgres_hosts("postgresql://u@/dashtam_test", {"PGHOST": ""}) == list(DEFAULT_POSTGRES_SOCKETS)
    assert postgres_hosts("postgresql://u@:5432/dashtam_test", NO_ENV) == list(DEFAULT_POSTGRES_SOCKETS)


def test_environ_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOST", "10.1.2.3")
    assert postgres_hosts("postgresql://u@/dashtam_test") == ["10.1.2.3"]
    assert check_host("postgresql://u@/dashtam_test") is not None


def test_comma_host_list_in_the_netloc() -> None:
    url = "postgresql://u:pw@127.0.0.1:5432,[::1]:5433,%2Ftmp/dashtam_test"
    assert postgres_hosts(url, NO_ENV) == ["127.0.0.1", "::1", "/tmp"]
    assert check_host(url, environ=NO_ENV) is None


def test_comma_host_list_with_one_remote_host_is_refused() -> None:
    url = "postgresql://u:secret@127.0.0.1:5432,db.example.com:5433/dashtam_test"
    violation = _one_line(check_host(url, environ=NO_ENV))
    assert "'db.example.com' (in the URL)" in violation.message
    assert "'127.0.0.1'" not in violation.message
    assert "secret" not in violation.message
    assert "u:***@127.0.0.1:5432,db.example.com:5433/dashtam_test" in violation.message


def test_host_query_parameter() -> None:
    assert postgres_hosts("postgresql://u@/db?host=/run/postgresql", NO_ENV) == ["/run/postgresql"]
    assert postgres_hosts("postgresql://u@/db?host=/run/postgresql,10.0.0.7", NO_ENV) == ["/run/postgresql", "10.0.0.7"]
    violation = _one_line(check_host("postgresql://u@/dashtam_test?host=/run/postgresql,10.0.0.7", environ=NO_ENV))
    assert "'10.0.0.7' (in the URL's host= parameter)" in violation.message


def test_host_query_parameter_is_judged_beside_the_netloc_host() -> None:
    """libpq lets ?host= override the netloc's host (asyncpg the other way round): both are judged."""
    url = "postgresql://u@127.0.0.1/dashtam_test?host=10.0.0.7"
    assert postgres_hosts(url, NO_ENV) == ["127.0.0.1", "10.0.0.7"]
    assert check_host(url, environ=NO_ENV) is not None


def test_hostaddr_is_judged_for_libpq_drivers_only() -> None:
    """libpq connects to hostaddr / PGHOSTADDR whatever the host says; asyncpg does not read them."""
    assert check_host("postgresql://u@127.0.0.1/dashtam_test?hostaddr=10.0.0.8", environ=NO_ENV) is not None
    assert check_host("postgresql+psycopg://u@127.0.0.1/dashtam_test?hostaddr=10.0.0.8", environ=NO_ENV) is not None
    violation = _one_line(check_host("postgresql://u@127.0.0.1/dashtam_test", environ={"PGHOSTADDR": "10.0.0.8"}))
    assert "from PGHOSTADDR" in violation.message
    assert check_host("postgresql+asyncpg://u@127.0.0.1/dashtam_test", environ={"PGHOSTADDR": "10.0.0.8"}) is None
    assert check_host("postgresql://u@127.0.0.1/dashtam_test", environ={"PGHOSTADDR": "127.0.0.1"}) is None


def test_service_file_host_is_judged(tmp_path: Path) -> None:
    service_file = tmp_path / "pg_service.conf"
    service_file.write_text("[prod]\nhost=db.prod.internal\nport=5432\n\n[local]\nhost=/run/postgresql\n")
    environ = {"PGSERVICEFILE": str(service_file)}
    assert postgres_hosts("postgresql://u@/db?service=prod", environ) == ["db.prod.internal"]
    violation = _one_line(check_host("postgresql://u@/dashtam_test?service=prod", environ=environ))
    assert "from service 'prod'" in violation.message
    assert check_host("postgresql://u@/dashtam_test?service=local", environ=environ) is None
    # PGSERVICE is honoured by libpq (asyncpg falls back to PGHOST / the default socket): both are judged.
    assert check_host("postgresql://u@/dashtam_test", environ={**environ, "PGSERVICE": "prod"}) is not None


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://u:p@ss@127.0.0.1/dashtam_test", "p@ss"),
        ("postgresql://u:pa/ss@127.0.0.1/dashtam_test", "pa/ss"),
        ("postgresql://u:secret@127.0.0.1:5432,127.0.0.2:port/dashtam_test", "secret"),
        ("postgresql://u:secret@[::1/dashtam_test", "secret"),
    ],
)
def test_unreadable_postgres_url_is_a_violation_without_the_password(url: str, secret: str) -> None:
    violation = _one_line(check_host(url, environ=NO_ENV))
    assert violation.check == "host"
    assert "cannot tell which server" in violation.message
    assert secret not in violation.message
    with pytest.raises(ValueError, match=r".") as raised:
        postgres_hosts(url, NO_ENV)
    assert secret not in str(raised.value)


def test_unknown_scheme_is_refused() -> None:
    violation = _one_line(check_host("mysql://u:secret@127.0.0.1/dashtam_test"))
    assert "'mysql'" in violation.message
    assert "secret" not in violation.message
    assert check_host("") is not None


def test_redis_hosts_follow_redis_py() -> None:
    assert redis_hosts("redis://127.0.0.1:6379/1") == ["127.0.0.1"]
    assert redis_hosts("redis://[::1]:6379/1") == ["::1"]
    assert redis_hosts("redis:///1") == ["localhost"]
    # redis-py takes ?host= when the netloc names none: so does the gate.
    assert redis_hosts("redis:///1?host=10.0.0.9") == ["10.0.0.9"]
    assert check_host("redis:///1?host=10.0.0.9") is not None


def test_unix_redis_url_is_a_socket() -> None:
    assert redis_hosts("unix:///tmp/redis.sock?db=1") == ["/tmp/redis.sock"]
    assert redis_hosts("unix://:pw@/run/redis/redis.sock") == ["/run/redis/redis.sock"]
    assert check_host("unix:///tmp/redis.sock?db=1") is None
    assert check_host("unix://?path=/tmp/redis.sock") is None


def test_rediss_url() -> None:
    assert redis_hosts("rediss://:pw@cache.example.com:6380/1") == ["cache.example.com"]
    assert check_host("rediss://127.0.0.1:6380/1") is None
    violation = _one_line(check_host("rediss://:secret@cache.example.com:6380/1"))
    assert "'cache.example.com'" in violation.message
    assert "secret" not in violation.message
    assert check_host("rediss://:secret@cache.example.com:6380/1", ["cache.example.com"]) is None


@pytest.mark.parametrize(
    "url",
    ["redis://:secret@127.0.0.1:notaport/1", "redis://:secret@[::1/1", "rediss://u:secret@h:6379/1?db=x"],
)
def test_malformed_redis_url_is_a_violation_with_the_password_masked(url: str) -> None:
    violation = _one_line(check_host(url))
    assert violation.check == "host"
    assert "cannot tell which server" in violation.message
    assert "secret" not in violation.message
    assert ":***@" in violation.message
    with pytest.raises(ValueError, match=r".") as raised:
        redis_hosts(url)
    assert "secret" not in str(raised.value)


def test_malformed_redis_url_does_not_quote_a_password_fragment() -> None:
    """An unencoded '/' makes urlparse read the password's start as the port; that fragment is masked."""
    violation = _one_line(check_host("redis://:zq7/xk9@127.0.0.1/1"))
    assert "zq7" not in violation.message
    assert "xk9" not in violation.message


def test_check_all_says_an_unreadable_redis_url_once() -> None:
    violations = _check_good(redis_url="redis://:secret@127.0.0.1:notaport/1")
    assert [v.check for v in violations] == ["host"]


# --- resolvability of allowed hosts ---------------------------------------------------------------------


def _no_lookup(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"getaddrinfo was called for {args[0]!r}")


def _resolves(*args: Any, **kwargs: Any) -> Any:
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.20.30.40", 0))]


def test_unresolvable_host_is_refused() -> None:
    violation = _one_line(check_resolvable("nonexistent.invalid"))
    assert violation.check == "host"
    assert "'nonexistent.invalid'" in violation.message
    assert "does not resolve" in violation.message


def test_hanging_resolver_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    release = threading.Event()

    def hang(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        return _resolves()

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    try:
        violation = _one_line(check_resolvable("db.test-net", timeout=0.05))
    finally:
        release.set()
    assert "no answer within 0.05 s" in violation.message


@pytest.mark.parametrize("host", ["localhost", "db.localhost", "127.0.0.1", "::1", "/run/postgresql", "10.0.0.5"])
def test_loopback_sockets_and_addresses_are_never_looked_up(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _no_lookup)
    assert check_resolvable(host) is None


def test_check_servers_passes_a_resolvable_allowed_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _resolves)
    violations = check_servers(
        postgres_url="postgresql://postgres:pw@db.test-net:5432/postgres",
        redis_url="redis://cache.test-net:6379/0",
        allowed_hosts=["db.test-net", "cache.test-net"],
        environ=NO_ENV,
    )
    assert violations == []


def test_check_servers_refuses_an_allowed_host_that_does_not_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    def lookup(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "typo.test-net":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return _resolves()

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    violations = check_servers(
        postgres_url="postgresql://postgres:secret@typo.test-net:5432/postgres",
        redis_url="redis://cache.test-net:6379/0",
        allowed_hosts=["typo.test-net", "cache.test-net"],
        environ=NO_ENV,
    )
    assert len(violations) == 1
    message = _one_line(violations[0]).message
    assert "'typo.test-net'" in message
    assert "Name or service not known" in message
    assert "postgresql://postgres:***@typo.test-net:5432/postgres" in message
    assert "secret" not in message


def test_check_servers_does_not_look_up_local_or_refused_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _no_lookup)
    assert (
        check_servers(
            postgres_url="postgresql://postgres@localhost/postgres",
            redis_url="unix:///tmp/redis.sock",
            allowed_hosts=["localhost"],
            environ=NO_ENV,
        )
        == []
    )
    violations = check_servers(
        postgres_url="postgresql://postgres@/postgres",
        redis_url=None,
        allowed_hosts=[],
        environ={"PGHOST": "db.example.com"},
    )
    assert [v.check for v in violations] == ["host"]
    assert "from PGHOST" in violations[0].message
    assert check_servers(postgres_url="", redis_url=None, allowed_hosts=[]) == []


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
    with pytest.raises(ValueError, match="index"):
        redis_index_from_url("redis://127.0.0.1:6379/1?db=x")


def test_redis_index_query_wins_as_in_redis_py() -> None:
    """redis-py selects `?db=` over the path: judging the path would pass a URL that flushes index 0."""
    from redis.connection import parse_url

    url = "redis://127.0.0.1:6379/3?db=0"
    assert parse_url(url)["db"] == redis_index_from_url(url) == 0  # type: ignore[no-untyped-call]
    assert [v.check for v in _check_good(redis_url=url)] == ["redis_index"]


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
        environ=NO_ENV,
    )
    checks = [v.check for v in violations]
    assert checks == ["environment", "testing_flag", "database_name", "host", "host", "redis_index"]


def test_check_all_refuses_index_beyond_databases() -> None:
    violations = _check_good(redis_url="redis://127.0.0.1:6379/16", redis_databases=16)
    assert [v.check for v in violations] == ["redis_index"]


def test_check_all_refuses_unparsable_redis_index() -> None:
    violations = _check_good(redis_url="redis://127.0.0.1:6379/one")
    assert [v.check for v in violations] == ["redis_index"]


# --- the test env file, before anything starts --------------------------------------------------------------


def _env_file(values: Mapping[str, str | None], **overrides: Any) -> list[Violation]:
    kwargs: dict[str, Any] = {
        "dev_database": "dashtam",
        "dev_redis_index": 0,
        "test_database": "dashtam_test",
        "redis_index": 1,
    }
    kwargs.update(overrides)
    return check_env_file(values, **kwargs)


def test_env_file_with_lower_case_keys_passes() -> None:
    assert _env_file({"environment": "testing", "testing": "true"}) == []
    assert _env_file({"ENVIRONMENT": "testing", "TESTING": "1"}) == []
    assert _env_file({"Environment": " testing ", "Testing": "True"}) == []


@pytest.mark.parametrize("value", ["1", "true", "TRUE", " True "])
def test_env_file_testing_true(value: str) -> None:
    assert _env_file({"environment": "testing", "testing": value}) == []


# pydantic reads yes/on/t/y as true too; a test run's flag must be written as true on purpose.
@pytest.mark.parametrize("value", ["false", "0", "no", "off", "", "2", "enabled", None, "yes", "on", "t", "Y"])
def test_env_file_testing_not_true_is_refused(value: str | None) -> None:
    violations = _env_file({"environment": "testing", "testing": value})
    assert [v.check for v in violations] == ["testing_flag"]
    assert "TESTING=true" in _one_line(violations[0]).message
    assert "(as testing)" in violations[0].message


@pytest.mark.parametrize("value", ["development", "Testing", "test", ""])
def test_env_file_environment_other_than_testing_is_refused(value: str) -> None:
    violations = _env_file({"environment": value, "testing": "true"})
    assert [v.check for v in violations] == ["environment"]
    assert "ENVIRONMENT=testing" in _one_line(violations[0]).message


def test_env_file_without_environment_or_testing_is_refused() -> None:
    violations = _env_file({"DATABASE_URL": "postgresql://u@127.0.0.1/dashtam_test"})
    assert [v.check for v in violations] == ["environment", "testing_flag"]
    assert "does not set ENVIRONMENT" in _one_line(violations[0]).message
    assert "ENVIRONMENT=testing" in violations[0].message
    assert "does not set TESTING" in _one_line(violations[1]).message


def test_env_file_spelling_a_key_twice_is_judged_on_every_spelling() -> None:
    violations = _env_file({"ENVIRONMENT": "testing", "environment": "development", "TESTING": "true"})
    assert [v.check for v in violations] == ["environment"]
    assert "'development'" in violations[0].message


def test_env_file_database_and_redis_index() -> None:
    good = {"environment": "testing", "testing": "true"}
    assert [v.check for v in _env_file(good, test_database="dashtam")] == ["database_name"]
    assert [v.check for v in _env_file(good, test_database="prod")] == ["database_name"]
    assert [v.check for v in _env_file(good, redis_index=0)] == ["redis_index"]
    assert [v.check for v in _env_file(good, redis_index=2, dev_redis_index=2)] == ["redis_index"]


# --- the loaded settings, whatever the field spelling and type ------------------------------------------------


def _lower_case_settings(monkeypatch: pytest.MonkeyPatch, *, database: str = "dashtam_test") -> Any:
    """A project's settings with lower-case fields and pydantic types, fed from upper-case env vars."""
    from pydantic import PostgresDsn, RedisDsn, SecretStr
    from pydantic_settings import BaseSettings

    class Settings(BaseSettings):
        environment: str
        testing: bool
        database_url: PostgresDsn
        redis_url: SecretStr
        cache_url: RedisDsn | None = None

    monkeypatch.setenv("ENVIRONMENT", "testing")
    monkeypatch.setenv("TESTING", "true")
    monkeypatch.setenv("DATABASE_URL", f"postgresql+asyncpg://u:pw@127.0.0.1:5433/{database}")
    monkeypatch.setenv("REDIS_URL", "redis://:pw@127.0.0.1:6380/1")
    return Settings(_env_file=None)


def test_settings_value_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _lower_case_settings(monkeypatch)
    for name in ("DATABASE_URL", "database_url", "Database_Url"):
        assert settings_value(settings, name) is settings.database_url
    assert settings_value(settings, "TESTING") is True
    assert settings_value(settings, "NO_SUCH_FIELD") is None
    assert settings_value(settings, "CACHE_URL") is None


def test_plain_value_reveals_secrets_and_dsns(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _lower_case_settings(monkeypatch)
    assert str(settings.redis_url) != "redis://:pw@127.0.0.1:6380/1"  # what a naive str() would check
    assert plain_value(settings_value(settings, "REDIS_URL")) == "redis://:pw@127.0.0.1:6380/1"
    assert (
        plain_value(settings_value(settings, "DATABASE_URL")) == "postgresql+asyncpg://u:pw@127.0.0.1:5433/dashtam_test"
    )
    assert plain_value(None) is None


def test_settings_value_through_an_alias_a_mapping_and_a_plain_object() -> None:
    from pydantic import AliasChoices, BaseModel, Field

    class Aliased(BaseModel):
        db: str = Field(validation_alias=AliasChoices("DATABASE_URL", "DB"))

    assert settings_value(Aliased(DATABASE_URL="x"), "database_url") == "x"
    assert settings_value({"database_url": "y"}, "DATABASE_URL") == "y"

    class Plain:
        Environment = "testing"

    assert settings_value(Plain(), "ENVIRONMENT") == "testing"


def _check_settings(settings: object) -> list[Violation]:
    return check_settings(
        settings, dev_database="dashtam", dev_redis_index=0, redis_databases=16, allowed_hosts=(), environ=NO_ENV
    )


def test_check_settings_passes_lower_case_pydantic_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _check_settings(_lower_case_settings(monkeypatch)) == []


def test_check_settings_sees_through_the_pydantic_types(monkeypatch: pytest.MonkeyPatch) -> None:
    violations = _check_settings(_lower_case_settings(monkeypatch, database="dashtam"))
    assert [v.check for v in violations] == ["database_name"]
    assert "'dashtam'" in violations[0].message
    assert "pw" not in violations[0].message


def test_check_settings_refuses_missing_fields() -> None:
    violations = _check_settings(
        {"DATABASE_URL": "postgresql://u@127.0.0.1/dashtam_test", "REDIS_URL": "redis://127.0.0.1/1"}
    )
    assert [v.check for v in violations] == ["environment", "testing_flag"]
    assert "declare the field and set ENVIRONMENT=testing" in _one_line(violations[0]).message
    assert "declare the field and set TESTING=true" in _one_line(violations[1]).message


def test_check_settings_honours_pghost(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = {
        "environment": "testing",
        "testing": True,
        "database_url": "postgresql+asyncpg://u@/dashtam_test",
        "redis_url": "redis://127.0.0.1/1",
    }
    violations = check_settings(
        settings,
        dev_database="dashtam",
        dev_redis_index=0,
        redis_databases=None,
        allowed_hosts=(),
        environ={"PGHOST": "10.1.2.3"},
    )
    assert [v.check for v in violations] == ["host"]
    assert "from PGHOST" in violations[0].message


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


# --- the gate cannot be bypassed in the schema package -------------------------------------------------------


def _calls_before_drop(function: ast.AsyncFunctionDef) -> tuple[dict[str, int], int]:
    """(first line of each call by name, line of the DROP DATABASE statement) inside one function."""
    first_call: dict[str, int] = {}
    for call in ast.walk(function):
        if isinstance(call, ast.Call):
            name = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")
            first_call[name] = min(first_call.get(name, call.lineno), call.lineno)
    drop_line = next(
        c.lineno
        for c in ast.walk(function)
        if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value.startswith("DROP DATABASE")
    )
    return first_call, drop_line


def test_schema_drops_only_behind_the_checks() -> None:
    """Every DROP DATABASE in the schema package is in one of two functions, each behind its own guard:
    `_drop_database` after the name check and the live ownership check, `_drop_unfinished` (a creation
    that crashed before its stamp) after the unfinished-name match and the name check."""
    import importlib
    import inspect
    import pkgutil

    from pytest_dashtam import schema

    modules = [
        schema,
        *(importlib.import_module(f"{schema.__name__}.{m.name}") for m in pkgutil.iter_modules(schema.__path__)),
    ]
    tree = ast.Module(body=[node for m in modules for node in ast.parse(inspect.getsource(m)).body], type_ignores=[])
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
    assert "_drop_database" in holders
    assert set(holders) <= {"_drop_database", "_drop_unfinished"}

    functions = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef)}
    first_call, drop_line = _calls_before_drop(functions["_drop_database"])
    assert first_call["check_test_name"] < first_call["check_owned_or_absent"] < drop_line
    if "_drop_unfinished" in holders:
        first_call, drop_line = _calls_before_drop(functions["_drop_unfinished"])
        assert first_call["fullmatch"] < first_call["check_test_name"] < drop_line


# --- the env file's own URLs (safety/_env_urls.py) ---
@pytest.mark.parametrize(
    ("name", "url", "check", "words"),
    [
        ("DATABASE_URL", "mysql://root:pw@127.0.0.1/x_test", "url", "not a PostgreSQL URL"),
        ("DATABASE_URL", "not a url at all", "url", "not a PostgreSQL URL"),
        ("DATABASE_URL", "postgresql+asyncpg://u:hunter2@127.0.0.1:abc/x_test", "url", "cannot be read"),
        ("DATABASE_URL", "postgresql+asyncpg://u:hunter2@db.example.com/x_test", "host", "'db.example.com'"),
        ("DATABASE_URL", "postgresql+asyncpg://u@10.1.2.3/x_test", "host", "'10.1.2.3'"),
        ("DATABASE_URL", "postgresql+asyncpg://u@/x_test?host=db.example.com", "host", "host= parameter"),
        ("DATABASE_URL", "postgresql+asyncpg://u@localhost/x_test?host=postgres", "host", "host= parameter"),
        ("REDIS_URL", "http://127.0.0.1:6379/1", "url", "not a Redis URL"),
        ("REDIS_URL", "redis://:hunter2@127.0.0.1:99999/1", "url", "cannot be read"),
        ("REDIS_URL", "redis://cache.example.com:6379/1", "host", "'cache.example.com'"),
        ("REDIS_URL", "redis://127.0.0.1:6379/abc", "redis_index", "'abc'"),
    ],
)
def test_env_file_urls_that_are_wrong_are_refused(name: str, url: str, check: str, words: str) -> None:
    violation = _one_line(check_env_url(name, url))
    assert violation.check == check
    assert words in violation.message
    assert "hunter2" not in violation.message


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("DATABASE_URL", "postgresql+asyncpg://u:p@127.0.0.1:5433/x_test"),
        ("DATABASE_URL", "postgresql://u@postgres:5432/x_test"),  # a compose service name: the stack replaces it
        ("DATABASE_URL", "postgresql+asyncpg://u@/x_test?host=/var/run/postgresql"),
        ("REDIS_URL", "redis://redis:6379/1"),
        ("REDIS_URL", "redis://[::1]:6380/2"),
        ("REDIS_URL", "unix:///tmp/redis.sock?db=1"),
    ],
)
def test_env_file_urls_that_are_fine_pass(name: str, url: str) -> None:
    assert check_env_url(name, url) is None


def test_an_allowed_remote_host_passes() -> None:
    assert check_env_url("DATABASE_URL", "postgresql://u@db.example.com/x_test", ("db.example.com",)) is None
