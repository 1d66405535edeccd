"""Each safety layer refuses its bad input before anything connects, and nothing was dropped or flushed.

The proof: a stamped test database left by an earlier run (--dashtam-keep) holds a planted row, and the
worker's Redis index a planted key; a refused run must leave both in place (a run that got past the gate
would drop and re-clone the database and flush the index). Every check that needs no server is a
configure-time `pytest.UsageError` (exit 4): no test runs, nothing connects.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
import redis
from foreign import unique_name
from inner_project import Inner, Taken, copy_example, drop_stamped, inner_environment, run_apart, taken
from selftest import Servers, suspended_guard

PLANTED_KEY = "pytest-dashtam-safety-test-planted"


@pytest.fixture(scope="module")
def kept(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Taken]:
    """What an earlier run left with --dashtam-keep: its stamped database, a planted row in it, and its Redis
    index with a planted key. Made once for the tests of this module (each checks it is untouched after)."""
    root = tmp_path_factory.mktemp("kept")
    database = unique_name("plugin")
    copy_example(root, database)
    changes = inner_environment(servers.postgres_url, servers.redis_url, tmp_path_factory.mktemp("tmp"))
    changes["INNER_EXPECT_DB"] = database
    with suspended_guard():
        result = run_apart(root, changes, "test_basic.py", "-k", "settings", "--dashtam-keep")
        result.assert_outcomes(passed=1)
        (took,) = taken(result)
        assert took.database == database
        with psycopg.connect(servers.postgres_url, autocommit=True) as admin:
            row = admin.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
        assert row is not None
        assert str(row[0]).startswith("pytest-dashtam:")
        with psycopg.connect(servers.postgres_url, dbname=database, autocommit=True) as conn:
            conn.execute("INSERT INTO items (name) VALUES ('planted')")
        index = redis.Redis.from_url(f"{servers.redis_url}/{took.redis_index}", decode_responses=True)
        index.set(PLANTED_KEY, "1")
    try:
        yield took
    finally:
        with suspended_guard():
            index.delete(PLANTED_KEY)
            index.close()
            drop_stamped(servers.postgres_url, database)  # created by this fixture's own run (stamped): ours


@dataclass
class Planted:
    """A copy of the project whose env file names the kept database (see `kept`)."""

    inner: Inner
    took: Taken

    def run(self, *args: str) -> pytest.RunResult:
        return self.inner.run(*args)

    def untouched(self) -> None:
        with self.inner.test_db(self.took.database) as conn:
            assert conn.execute("SELECT name FROM items").fetchall() == [("planted",)]
        assert self.inner.redis(self.took.redis_index).get(PLANTED_KEY) == "1"


@pytest.fixture
def planted(inner: Inner, kept: Taken) -> Planted:
    inner.copy()
    inner.env_file(DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{kept.database}")
    inner.monkeypatch.setenv("INNER_EXPECT_DB", kept.database)
    planted = Planted(inner, kept)
    planted.untouched()
    return planted


def _refused(result: pytest.RunResult, message: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines(["ERROR: pytest-dashtam: *" + message.lstrip("*")])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_environment_must_be_testing(planted: Planted) -> None:
    planted.inner.env_file(ENVIRONMENT="development")
    _refused(
        planted.run("test_basic.py"),
        "ENVIRONMENT is 'development' in the test env file, the test run requires 'testing'*",
    )
    planted.untouched()


def test_testing_flag_must_be_true(planted: Planted) -> None:
    planted.inner.env_file(TESTING="false")
    _refused(planted.run("test_basic.py"), "TESTING is 'false' in the test env file, the test run requires true*")
    planted.untouched()


def test_database_name_must_be_a_test_name(planted: Planted) -> None:
    planted.inner.env_file(DATABASE_URL="postgresql+asyncpg://postgres:test@127.0.0.1:5432/dashtam_plugin")
    # The password says "test"; only the name counts.
    _refused(planted.run("test_basic.py"), "*the database name 'dashtam_plugin'*does not contain 'test'*")
    planted.untouched()


def test_database_must_not_be_the_dev_database(planted: Planted) -> None:
    _refused(
        planted.run("test_basic.py", f"--dashtam-dev-database={planted.took.database}"),
        f"*the test database '{planted.took.database}'*is the dev database*",
    )
    planted.untouched()


def test_host_must_be_local(planted: Planted) -> None:
    # "vm" resolves to 127.0.0.1 here, so the servers answer, but it is not a loopback *name*.
    import socket

    try:
        socket.gethostbyname(socket.gethostname())
    except OSError:
        pytest.skip("this machine's host name does not resolve; the host check needs a non-loopback name")
    host = socket.gethostname()
    result = planted.run(
        "test_basic.py",
        f"--dashtam-postgres-url=postgresql://postgres@{host}:{planted.inner.postgres_port}/postgres",
        f"--dashtam-redis-url=redis://{host}:{planted.inner.redis_port}",
    )
    _refused(result, f"*the host '{host}' (in the URL) is neither loopback*")
    planted.untouched()


def test_redis_index_must_not_be_the_dev_index(inner: Inner) -> None:
    inner.copy()
    dev = inner.redis(0)
    dev.set(PLANTED_KEY, "dev data")
    try:
        _refused(inner.run("test_basic.py", "--dashtam-redis-index=0"), "*the Redis index 0 is the dev index*")
        assert dev.get(PLANTED_KEY) == "dev data"
    finally:
        dev.delete(PLANTED_KEY)  # only our own key: index 0 is someone's dev data


def test_redis_index_must_exist(planted: Planted) -> None:
    databases = planted.inner.redis_databases()
    # Known only once the server answers, but the configuration's mistake all the same: exit 4, one line.
    _refused(
        planted.run("test_basic.py", f"--dashtam-redis-index={databases}"),
        f"*the Redis index {databases} does not exist*the server has {databases} databases*",
    )
    planted.untouched()


def test_an_unstamped_database_is_never_dropped_and_the_run_takes_a_name_of_its_own(inner: Inner) -> None:
    inner.copy()
    foreign = f"{inner.database}_foreign"
    inner.env_file(DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{foreign}")
    with inner.admin() as admin:
        admin.execute(f'CREATE DATABASE "{foreign}"')
    try:
        with inner.test_db(foreign) as conn:
            conn.execute("CREATE TABLE precious (v text); INSERT INTO precious VALUES ('keep me')")
            oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()
        inner.monkeypatch.setenv("INNER_EXPECT_DB", f"{foreign}_2")
        result = inner.run("test_basic.py")
        result.assert_outcomes(passed=6)
        result.stdout.fnmatch_lines([f"*{foreign} is held by a live run or is not the plugin's: using {foreign}_2*"])
        with inner.test_db(foreign) as conn:
            assert conn.execute("SELECT v FROM precious").fetchall() == [("keep me",)]
            assert conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone() == oid
            assert conn.execute("SELECT shobj_description(%s, 'pg_database')", oid).fetchone() == (None,)
        assert f"{foreign}_2" not in inner.databases()
    finally:
        with inner.admin() as admin:  # the unstamped one is this test's own; the stamped ones go with `inner`
            admin.execute(f'DROP DATABASE IF EXISTS "{foreign}" WITH (FORCE)')
