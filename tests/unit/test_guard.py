"""The connection guard: which targets it lets through, what its refusals say, and that its hooks really fire.

The first half feeds check_postgres/check_redis and the parameter reader directly. The second half installs the
guard in this process and connects for real, with SQLAlchemy (asyncpg and psycopg) and redis-py (sync and
asyncio), to the shared servers on 127.0.0.1:5432 (trust, user postgres) and 127.0.0.1:6379. On those servers
this file only writes inside a scratch database it creates and drops, and only reads Redis index 13.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest

from pytest_dashtam.guard import (
    DEFAULT_FIX,
    ConnectionGuard,
    GuardError,
    Target,
    active_guard,
)
from pytest_dashtam.guard._params import pg_params

PG = Target("127.0.0.1", 5432)
REDIS = Target("127.0.0.1", 6379)
READ_INDEX = 13  # the only Redis index this file talks to on the shared server, and only to read
HINT = "take DATABASE_URL/REDIS_URL from the environment the plugin exported"


@pytest.fixture(autouse=True)
def _clean_libpq_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq's defaults come from the environment; the machine's own must not decide a test."""
    for name in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGHOSTADDR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _no_hook_left_behind() -> Iterator[None]:
    """A failing test must not leave a guard installed for the rest of the run.

    The outer run's own guard (this suite runs under the plugin too) is taken off while each test installs
    guards of its own, and put back afterwards exactly as it was.
    """
    outer = active_guard()
    if outer is not None:
        outer.uninstall()
    try:
        yield
        guard = active_guard()
        if guard is not None:
            guard.uninstall()
            pytest.fail("a test left a connection guard installed")
    finally:
        if outer is not None:
            outer.install()


@pytest.fixture
def make_guard() -> Iterator[Callable[..., ConnectionGuard]]:
    """Guards built here are uninstalled at teardown, whatever the test did."""
    made: list[ConnectionGuard] = []

    def make(
        *, postgres: Target | None = PG, redis: Target | None = REDIS, databases: tuple[str, ...] = ("todo_test_2",)
    ) -> ConnectionGuard:
        guard = ConnectionGuard(postgres=postgres, redis=redis, hint=HINT)
        for name in databases:
            guard.allow_database(name)
        guard.allow_redis_index(3)
        made.append(guard)
        return guard

    yield make
    for guard in made:
        guard.uninstall()


def _refusal(call: Callable[[], object]) -> str:
    with pytest.raises(GuardError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("pytest-dashtam refused a connection to ")
    return message


# --------------------------------------------------------------------------------------------------------------
# check_postgres


def test_refusal_names_the_target_what_the_run_uses_and_the_fix(make_guard: Callable[..., ConnectionGuard]) -> None:
    guard = make_guard()
    message = _refusal(lambda: guard.check_postgres("127.0.0.1", 5432, "todo_test"))
    assert message == (
        "pytest-dashtam refused a connection to PostgreSQL database 'todo_test' at 127.0.0.1:5432: "
        "not part of this run's stack (this run uses 'todo_test_2' at 127.0.0.1:5432); " + HINT
    )


def test_allowed_database_on_the_stack_server_passes(make_guard: Callable[..., ConnectionGuard]) -> None:
    make_guard().check_postgres("127.0.0.1", 5432, "todo_test_2")


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST", "127.0.0.1", "127.0.1.1", "::1", "[::1]", "::ffff:127.0.0.1"]
)
@pytest.mark.parametrize("stack_host", ["localhost", "127.0.0.1", "::1"])
def test_every_loopback_spelling_is_the_same_machine(
    make_guard: Callable[..., ConnectionGuard], host: str, stack_host: str
) -> None:
    make_guard(postgres=Target(stack_host, 5432)).check_postgres(host, 5432, "todo_test_2")


@pytest.mark.parametrize("host", ["db.example.com", "10.0.0.5", "192.168.1.2", "/var/run/postgresql"])
def test_another_host_is_refused_even_for_an_allowed_database(
    make_guard: Callable[..., ConnectionGuard], host: str
) -> None:
    message = _refusal(lambda: make_guard().check_postgres(host, 5432, "todo_test_2"))
    assert "not part of this run's stack (this run uses 'todo_test_2' at 127.0.0.1:5432)" in message


def test_hostnames_compare_case_insensitively_without_resolving(make_guard: Callable[..., ConnectionGuard]) -> None:
    guard = make_guard(postgres=Target("DB.Internal", 5432))
    guard.check_postgres("db.internal", 5432, "todo_test_2")
    # db.internal may well be 127.0.0.1, but finding out would mean a DNS query: refused.
    _refusal(lambda: guard.check_postgres("127.0.0.1", 5432, "todo_test_2"))


def test_another_port_is_refused(make_guard: Callable[..., ConnectionGuard]) -> None:
    message = _refusal(lambda: make_guard().check_postgres("127.0.0.1", 5433, "todo_test_2"))
    assert "'todo_test_2' at 127.0.0.1:5433" in message


def test_missing_port_is_pgport_or_5432(
    make_guard: Callable[..., ConnectionGuard], monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = make_guard()
    guard.check_postgres("127.0.0.1", None, "todo_test_2")
    guard.check_postgres("127.0.0.1", "", "todo_test_2")
    monkeypatch.setenv("PGPORT", "5433")
    assert "at 127.0.0.1:5433" in _refusal(lambda: guard.check_postgres("127.0.0.1", None, "todo_test_2"))
    make_guard(postgres=Target("127.0.0.1", 5433)).check_postgres("127.0.0.1", None, "todo_test_2")


def test_missing_host_is_pghost_or_the_default_socket(
    make_guard: Callable[..., ConnectionGuard], monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = make_guard()
    message = _refusal(lambda: guard.check_postgres(None, 5432, "todo_test_2"))
    assert "at the default Unix socket (.s.PGSQL.5432)" in message
    monkeypatch.setenv("PGHOST", "localhost")
    guard.check_postgres(None, 5432, "todo_test_2")
    guard.check_postgres("", None, "todo_test_2")
    monkeypatch.setenv("PGHOST", "db.example.com")
    _refusal(lambda: guard.check_postgres(None, 5432, "todo_test_2"))


@pytest.mark.parametrize(
    "host", [None, "/var/run/postgresql", "/run/postgresql", "/tmp", "/tmp/", "/tmp/.s.PGSQL.5432"]
)
@pytest.mark.parametrize("stack_dir", ["/var/run/postgresql", "/run/postgresql", "/tmp"])
def test_the_default_socket_directories_are_one_server(
    make_guard: Callable[..., ConnectionGuard], host: str | None, stack_dir: str
) -> None:
    make_guard(postgres=Target(stack_dir, 5432)).check_postgres(host, 5432, "todo_test_2")


def test_a_socket_directory_is_never_a_tcp_host_nor_another_directory(
    make_guard: Callable[..., ConnectionGuard],
) -> None:
    guard = make_guard(postgres=Target("/tmp", 5432))
    _refusal(lambda: guard.check_postgres("127.0.0.1", 5432, "todo_test_2"))
    _refusal(lambda: guard.check_postgres("/tmp/pytest-dashtam-1/pg", 5432, "todo_test_2"))
    _refusal(lambda: guard.check_postgres("/tmp/.s.PGSQL.5433", None, "todo_test_2"))
    private = make_guard(postgres=Target("/tmp/pytest-dashtam-1/pg", 5433))
    private.check_postgres("/tmp/pytest-dashtam-1/pg/", 5433, "todo_test_2")
    message = _refusal(lambda: private.check_postgres(None, 5433, "todo_test_2"))
    assert "(this run uses 'todo_test_2' at /tmp/pytest-dashtam-1/pg/.s.PGSQL.5433)" in message


def test_missing_database_is_pgdatabase_or_the_user(
    make_guard: Callable[..., ConnectionGuard], monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = make_guard()
    guard.check_postgres("127.0.0.1", 5432, None, user="todo_test_2")
    assert "database 'postgres'" in _refusal(lambda: guard.check_postgres("127.0.0.1", 5432, None, user="postgres"))
    monkeypatch.setenv("PGUSER", "todo_test_2")
    guard.check_postgres("127.0.0.1", 5432, None)
    monkeypatch.setenv("PGDATABASE", "dashtam")
    assert "database 'dashtam'" in _refusal(lambda: guard.check_postgres("127.0.0.1", 5432, None, user="todo_test_2"))


def test_a_host_list_passes_only_if_every_host_is_the_stack(make_guard: Callable[..., ConnectionGuard]) -> None:
    guard = make_guard()
    guard.check_postgres("127.0.0.1,localhost", 5432, "todo_test_2")
    guard.check_postgres("127.0.0.1,localhost", "5432,5432", "todo_test_2")
    message = _refusal(lambda: guard.check_postgres("127.0.0.1,db.example.com", 5432, "todo_test_2"))
    assert "at 127.0.0.1:5432, db.example.com:5432:" in message
    _refusal(lambda: guard.check_postgres("127.0.0.1,localhost", "5432,5433", "todo_test_2"))
    _refusal(lambda: guard.check_postgres("127.0.0.1,", 5432, "todo_test_2"))  # the empty entry: the socket


def test_several_allowed_databases_are_all_named(make_guard: Callable[..., ConnectionGuard]) -> None:
    guard = make_guard(databases=("todo_test_2", "todo_template"))
    guard.check_postgres("127.0.0.1", 5432, "todo_template")
    message = _refusal(lambda: guard.check_postgres("127.0.0.1", 5432, "todo"))
    assert "(this run uses 'todo_template' or 'todo_test_2' at 127.0.0.1:5432)" in message


def test_without_a_hint_the_refusal_still_says_what_to_do() -> None:
    guard = ConnectionGuard(postgres=PG, redis=REDIS)
    message = _refusal(lambda: guard.check_postgres("127.0.0.1", 5432, "todo"))
    assert message.endswith("(this run uses no database yet at 127.0.0.1:5432); " + DEFAULT_FIX)


def test_no_stack_refuses_every_connection() -> None:
    guard = ConnectionGuard(postgres=None, redis=None, hint=HINT)
    guard.allow_database("todo_test_2")
    guard.allow_redis_index(3)
    message = _refusal(lambda: guard.check_postgres("127.0.0.1", 5432, "todo_test_2"))
    assert message == (
        "pytest-dashtam refused a connection to PostgreSQL database 'todo_test_2' at 127.0.0.1:5432: "
        "the test stack is not running, so no PostgreSQL server is part of this run; " + HINT
    )
    message = _refusal(lambda: guard.check_redis("127.0.0.1", 6379, 3, client_name="pytest-dashtam-lease-x"))
    assert "Redis index 3 at 127.0.0.1:6379: the test stack is not running, so no Redis server" in message


def test_a_name_cannot_break_the_message_onto_two_lines(make_guard: Callable[..., ConnectionGuard]) -> None:
    message = _refusal(lambda: make_guard().check_postgres("127.0.0.1", 5432, "evil\nname"))
    assert "'evil\\nname'" in message


def test_plugin_connections_may_use_any_database_of_the_stack_server_only(
    make_guard: Callable[..., ConnectionGuard],
) -> None:
    guard = make_guard()
    guard.check_postgres("127.0.0.1", 5432, "postgres", application_name="pytest-dashtam-admin")
    _refusal(lambda: guard.check_postgres("127.0.0.1", 5432, "postgres", application_name="alembic"))
    _refusal(lambda: guard.check_postgres("10.0.0.5", 5432, "postgres", application_name="pytest-dashtam-admin"))
    guard.allow_internal_prefix("my-harness")
    guard.check_postgres("127.0.0.1", 5432, "postgres", application_name="my-harness-1")


# --------------------------------------------------------------------------------------------------------------
# Reading what the driver is about to connect to


def test_asyncpg_parameters() -> None:
    p = pg_params([], {"host": "127.0.0.1", "port": 5432, "database": "d", "user": "u", "password": "pw"})
    assert (p.host, p.port, p.database, p.user) == ("127.0.0.1", "5432", "d", "u")
    p = pg_params([], {"host": ["a", "b"], "port": [5432, 5433], "server_settings": {"application_name": "x"}})
    assert (p.host, p.port, p.database, p.application_name) == ("a,b", "5432,5433", None, "x")


def test_psycopg_parameters_and_conninfo_strings() -> None:
    p = pg_params([], {"host": "h", "dbname": "d", "hostaddr": "10.0.0.9", "application_name": "app"})
    assert (p.host, p.port, p.database, p.application_name) == ("10.0.0.9", None, "d", "app")
    p = pg_params(["host=h1 port=5433 dbname='my db' password='se cret'"], {"user": "u"})
    assert (p.host, p.port, p.database, p.user) == ("h1", "5433", "my db", "u")
    p = pg_params([], {"dsn": "postgresql://u:pw@[::1]:5432,h2:5433/d?application_name=a", "dbname": "explicit"})
    assert (p.host, p.port, p.database, p.user, p.application_name) == ("::1,h2", "5432,5433", "explicit", "u", "a")


def test_the_password_never_reaches_the_message(make_guard: Callable[..., ConnectionGuard]) -> None:
    guard = make_guard()
    cases: list[tuple[list[object], dict[str, object]]] = [
        ([], {"host": "127.0.0.1", "port": 5432, "database": "todo", "user": "u", "password": "s3cr3tpw"}),
        (["postgresql://u:s3cr3tpw@db.example.com/todo"], {}),
        (["host=db.example.com password=s3cr3tpw dbname=todo"], {}),
        ([], {"host": "u:s3cr3tpw@db.example.com", "dbname": "todo"}),
    ]
    for cargs, cparams in cases:
        message = _refusal(lambda c=cargs, p=cparams: guard._check_dbapi_connect(_PgDialect(), c, p))  # type: ignore[misc]
        assert "s3cr3tpw" not in message
        assert "'todo'" in message


class _PgDialect:
    name = "postgresql"


# --------------------------------------------------------------------------------------------------------------
# check_redis


def test_redis_refusal_message(make_guard: Callable[..., ConnectionGuard]) -> None:
    message = _refusal(lambda: make_guard().check_redis("127.0.0.1", 6379, 1))
    assert message == (
        "pytest-dashtam refused a connection to Redis index 1 at 127.0.0.1:6379: "
        "not part of this run's stack (this run uses index 3 at 127.0.0.1:6379); " + HINT
    )


def test_redis_allowed_index_on_the_stack_server(make_guard: Callable[..., ConnectionGuard]) -> None:
    guard = make_guard()
    guard.check_redis("localhost", 6379, 3)
    guard.check_redis(None, None, 3)  # redis-py's defaults: localhost:6379
    guard.allow_redis_index(4)
    assert "(this run uses indexes 3, 4 at" in _refusal(lambda: guard.check_redis("::1", 6379, 5))


def test_redis_plugin_connections_may_use_any_index_of_the_stack_server_only(
    make_guard: Callable[..., ConnectionGuard],
) -> None:
    guard = make_guard()
    guard.check_redis("127.0.0.1", 6379, 0, client_name="pytest-dashtam-lease-x")
    _refusal(lambda: guard.check_redis("127.0.0.1", 6380, 0, client_name="pytest-dashtam-lease-x"))
    _refusal(lambda: guard.check_redis("127.0.0.1", 6379, 0, client_name="my-app"))


def test_redis_unix_socket(make_guard: Callable[..., ConnectionGuard]) -> None:
    guard = make_guard(redis=Target("/tmp/pytest-dashtam-1/redis.sock", None))
    guard.check_redis(None, None, 3, unix_path="/tmp/pytest-dashtam-1//redis.sock")
    message = _refusal(lambda: guard.check_redis(None, None, 3, unix_path="/var/run/redis/redis.sock"))
    assert (
        "Redis index 3 at /var/run/redis/redis.sock: not part of this run's stack (this run uses index 3 at " in message
    )
    _refusal(lambda: guard.check_redis("127.0.0.1", 6379, 3))


# --------------------------------------------------------------------------------------------------------------
# install / uninstall


def _originals() -> dict[str, object]:
    import redis.asyncio.connection
    import redis.connection
    from sqlalchemy.engine import Dialect

    return {
        "sync": redis.connection.AbstractConnection.__dict__["connect_check_health"],
        "async": redis.asyncio.connection.AbstractConnection.__dict__["connect_check_health"],
        "has_events": Dialect.__dict__["_has_events"],
    }


def test_install_is_idempotent_and_a_second_guard_replaces_the_first(
    make_guard: Callable[..., ConnectionGuard],
) -> None:
    import redis.connection
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    before = _originals()
    first, second = make_guard(), make_guard()
    first.install()
    wrapped = redis.connection.AbstractConnection.__dict__["connect_check_health"]
    first.install()
    assert redis.connection.AbstractConnection.__dict__["connect_check_health"] is wrapped
    assert wrapped.__wrapped__ is before["sync"]
    assert active_guard() is first
    second.install()
    assert active_guard() is second
    assert redis.connection.AbstractConnection.__dict__["connect_check_health"].__wrapped__ is before["sync"]
    assert first._listener is None
    assert second._listener is not None
    assert event.contains(Engine, "do_connect", second._listener)
    first.uninstall()  # no longer installed: nothing to undo, and the second stays
    assert active_guard() is second
    second.uninstall()
    assert active_guard() is None
    assert _originals() == before


def test_importing_the_guard_imports_neither_sqlalchemy_nor_redis() -> None:
    code = "import sys, pytest_dashtam.guard; print(sorted(m for m in ('sqlalchemy', 'redis') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_other_dialects_are_not_the_guards_business(make_guard: Callable[..., ConnectionGuard]) -> None:
    import sqlalchemy

    make_guard().install()
    engine = sqlalchemy.create_engine("sqlite://")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("select 1").scalar() == 1
    engine.dispose()


# --------------------------------------------------------------------------------------------------------------
# Real servers


def _reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


needs_postgres = pytest.mark.skipif(not _reachable(5432), reason="no PostgreSQL on 127.0.0.1:5432")
needs_redis = pytest.mark.skipif(not _reachable(6379), reason="no Redis on 127.0.0.1:6379")


class _Listener:
    """A TCP port that counts as 'connected to' the moment a client dials it: proof a refusal dialled nothing."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    def dialled(self) -> bool:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[_Listener]:
    trap = _Listener()
    yield trap
    trap.close()


@pytest.fixture
def scratch_database() -> Iterator[str]:
    """A database of this test's own on the shared server (created before, dropped after any guard)."""
    import psycopg

    name = f"dashtam_guard_{uuid.uuid4().hex[:10]}_test"
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _sessions(database: str) -> int:
    import psycopg

    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)).fetchone()
    assert row is not None
    return int(row[0])


@needs_postgres
@pytest.mark.asyncio
async def test_async_engine_refused_before_connecting_allowed_database_connects(
    make_guard: Callable[..., ConnectionGuard], scratch_database: str, listener: _Listener
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    other = f"{scratch_database}_other"
    guard = make_guard(databases=(scratch_database,))
    guard.install()

    # Another database on the stack server: refused, and the server never saw a session for it.
    engine = create_async_engine(f"postgresql+asyncpg://postgres:s3cr3tpw@127.0.0.1:5432/{other}")
    with pytest.raises(GuardError) as info:
        async with engine.connect():
            pass
    await engine.dispose()
    assert f"PostgreSQL database '{other}' at 127.0.0.1:5432: not part of this run's stack" in str(info.value)
    assert "s3cr3tpw" not in str(info.value)
    assert _sessions(other) == 0

    # The allowed database on another port: refused without dialling it.
    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{listener.port}/{scratch_database}")
    with pytest.raises(GuardError):
        async with engine.connect():
            pass
    await engine.dispose()
    assert not listener.dialled()

    engine = create_async_engine(f"postgresql+asyncpg://postgres@localhost:5432/{scratch_database}")
    async with engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE t (x int)")
        assert (await conn.exec_driver_sql("SELECT count(*) FROM t")).scalar() == 0
    await engine.dispose()


@needs_postgres
def test_sync_psycopg_engine_refused_and_allowed(
    make_guard: Callable[..., ConnectionGuard], scratch_database: str, listener: _Listener
) -> None:
    import sqlalchemy

    made_before_install = sqlalchemy.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{scratch_database}")
    guard = make_guard(databases=("todo_test_2",))
    guard.install()
    # An engine that existed before install() is guarded too: the listener is on the class.
    message = _refusal(made_before_install.connect)
    assert f"'{scratch_database}' at 127.0.0.1:5432" in message
    assert _sessions(scratch_database) == 0

    trap = sqlalchemy.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{listener.port}/todo_test_2")
    _refusal(trap.connect)
    assert not listener.dialled()

    guard.allow_database(scratch_database)
    with made_before_install.connect() as conn:
        assert conn.exec_driver_sql("SELECT current_database()").scalar() == scratch_database
    made_before_install.dispose()


@needs_postgres
@pytest.mark.asyncio
async def test_uninstall_lets_the_connection_through_again(
    make_guard: Callable[..., ConnectionGuard], scratch_database: str
) -> None:
    import sqlalchemy
    from sqlalchemy.ext.asyncio import create_async_engine

    before = _originals()
    guard = make_guard(databases=("todo_test_2",))
    guard.install()
    sync_engine = sqlalchemy.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{scratch_database}")
    async_engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{scratch_database}")
    _refusal(sync_engine.connect)
    guard.uninstall()
    assert _originals() == before
    with sync_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    async with async_engine.connect() as aconn:
        assert (await aconn.exec_driver_sql("SELECT 1")).scalar() == 1
    sync_engine.dispose()
    await async_engine.dispose()


@needs_redis
def test_sync_redis_refused_allowed_and_plugin_clients(
    make_guard: Callable[..., ConnectionGuard], listener: _Listener
) -> None:
    import redis

    guard = make_guard()
    guard.allow_redis_index(READ_INDEX)
    guard.install()
    client = redis.Redis(host="127.0.0.1", port=6379, db=1)
    message = _refusal(client.ping)
    assert "Redis index 1 at 127.0.0.1:6379: not part of this run's stack (this run uses indexes 3, 13 at" in message
    client.close()

    with redis.Redis(host="localhost", port=6379, db=READ_INDEX) as allowed:
        allowed.get("pytest-dashtam-guard-probe")

    # A plugin client on an index no test was given: allowed on the stack server, refused elsewhere.
    guard2 = make_guard()  # allows index 3 only
    guard2.install()
    with redis.Redis(host="127.0.0.1", port=6379, db=READ_INDEX, client_name="pytest-dashtam-lease-x") as lease:
        lease.get("pytest-dashtam-guard-probe")
    stray = redis.Redis(host="127.0.0.1", port=listener.port, db=3, client_name="pytest-dashtam-lease-x")
    _refusal(stray.ping)
    assert not listener.dialled()

    # Subclasses go through the same hook: SSL (the check comes before the handshake) and Unix sockets.
    ssl_client = redis.Redis(host="127.0.0.1", port=listener.port, db=3, ssl=True)
    _refusal(ssl_client.ping)
    assert not listener.dialled()
    assert "at /nonexistent/redis.sock" in _refusal(redis.Redis(unix_socket_path="/nonexistent/redis.sock").ping)
    assert "s3cr3tpw" not in _refusal(redis.Redis.from_url("redis://:s3cr3tpw@127.0.0.1:6379/1").ping)


@needs_redis
@pytest.mark.asyncio
async def test_async_redis_refused_allowed_and_restored(
    make_guard: Callable[..., ConnectionGuard], listener: _Listener
) -> None:
    import redis.asyncio

    before = _originals()
    guard = make_guard()
    guard.install()
    client = redis.asyncio.Redis(host="127.0.0.1", port=6379, db=READ_INDEX)
    with pytest.raises(GuardError) as info:
        await client.get("pytest-dashtam-guard-probe")
    assert f"Redis index {READ_INDEX} at 127.0.0.1:6379: not part of this run's stack (this run uses index 3" in str(
        info.value
    )
    stray = redis.asyncio.Redis(host="127.0.0.1", port=listener.port, db=3)
    with pytest.raises(GuardError):
        await stray.ping()
    assert not listener.dialled()
    lease = redis.asyncio.Redis(host="127.0.0.1", port=6379, db=READ_INDEX, client_name="pytest-dashtam-lease-x")
    await lease.get("pytest-dashtam-guard-probe")
    await lease.aclose()

    guard.allow_redis_index(READ_INDEX)
    await client.get("pytest-dashtam-guard-probe")
    await client.aclose()

    guard.uninstall()
    assert _originals() == before
    after = redis.asyncio.Redis(host="127.0.0.1", port=6379, db=READ_INDEX)
    await after.get("pytest-dashtam-guard-probe")  # index 13 no longer allowed by anyone, and no guard: fine
    await after.aclose()
    await stray.aclose()
