"""The inner projects bench_suite.py runs: one on pytest-dashtam, one on pytest-postgresql + pytest-redis.

Both hold the same N tests: insert a row and read it back, set a Redis key and get it back. Each tool is
used the way its README shows: pytest-dashtam with configuration only (a settings class, an env file, the
metadata for `create_all`) and its `db_session`/`redis_client` fixtures in async tests; the peers with
`postgresql_proc`/`postgresql` (the schema loaded once into their template database, a database cloned and
dropped per test) and `redis_proc`/`redisdb`, sync clients, as their docs show.
Generated into a temporary folder at run time; nothing here is committed output.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TIMER = Path(__file__).with_name("_suite_timer.py")

# Shaped like Dashtam's own core modules (config, models, database and redis dependencies): an app's
# dependency modules import redis.asyncio and sqlalchemy.ext.asyncio at module level, so collection pays for
# those imports before the plugin's phases start, as it does in a real project.
DASHTAM_APP = '''\
"""A minimal app for the suite benchmark: what pytest-dashtam needs from a project, nothing more."""
from collections.abc import AsyncIterator

from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.asyncio import Redis
from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")
    ENVIRONMENT: str = "development"
    TESTING: bool = False
    DATABASE_URL: str = ""
    REDIS_URL: str = ""


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


async def get_session() -> AsyncIterator[AsyncSession]:
    raise NotImplementedError("the benchmark's tests use db_session directly")
    yield


async def get_redis() -> AsyncIterator[Redis]:
    raise NotImplementedError("the benchmark's tests use redis_client directly")
    yield


app = None
'''

DASHTAM_TESTS = """\
import pytest
from sqlalchemy import select

from benchapp import Item


@pytest.mark.asyncio
@pytest.mark.parametrize("n", range({tests}))
async def test_row_and_key(n, db_session, redis_client):
    db_session.add(Item(name=f"n{{n}}"))
    await db_session.flush()
    assert (await db_session.scalars(select(Item.name))).all() == [f"n{{n}}"]
    await redis_client.set("k", n)
    assert await redis_client.get("k") == str(n)
"""

DASHTAM_ENV = (
    "ENVIRONMENT=testing\nTESTING=true\n"
    "DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1/benchsuite_test\nREDIS_URL=redis://127.0.0.1/1\n"
)

# The loop scope the project's own pyproject.toml uses (one loop per session) is the plugin's fast path;
# pytest-asyncio's default is one loop per test ("function"), which bench_suite.py can time too.
DASHTAM_INI = """\
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = {loop_scope}
asyncio_default_test_loop_scope = {loop_scope}
dashtam_backend = local
dashtam_env_file = .env.test
dashtam_postgres_bin = {pg_bin}
dashtam_redis_bin = {redis_bin}
dashtam_settings = benchapp:Settings
dashtam_metadata = benchapp:Base.metadata
dashtam_alembic_ini =
dashtam_app = benchapp:app
dashtam_session_dependency = benchapp:get_session
dashtam_redis_dependency = benchapp:get_redis
"""

# The reference the issue measured before any plugin code: a hand-written rollback conftest, the same
# servers (started with the local backend's class, so "start" costs the same) and the same tests, no safety
# checks, no template, no plugin. Under xdist each worker starts servers of its own, as such a conftest would.
BARE_CONFTEST = """\
import os

import asyncpg
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from benchapp import Base
from pytest_dashtam.backends.base import BackendOptions
from pytest_dashtam.backends.local import LocalBackend


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    backend = LocalBackend(
        BackendOptions(state_dir=tmp_path_factory.mktemp("state"), postgres_bin={pg_bin!r}, redis_bin={redis_bin!r})
    )
    yield backend.start()
    backend.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def engine(stack):
    admin = await asyncpg.connect(stack.postgres_url)
    await admin.execute("CREATE DATABASE bare_test")
    await admin.close()
    url = stack.postgres_url.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + "/bare_test"
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def db_session(engine):
    async with engine.connect() as conn:
        outer = await conn.begin()
        session = AsyncSession(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield session
        finally:
            await session.close()
            await outer.rollback()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def redis_session(stack):
    client = Redis.from_url(stack.redis_url + "/1", decode_responses=True)
    yield client
    await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def redis_client(redis_session):
    yield redis_session
    await redis_session.flushdb()
"""

PEER_CONFTEST = """\
from pathlib import Path

from pytest_postgresql import factories as pg
from pytest_redis import factories as rd

postgresql_proc = pg.postgresql_proc(executable={pg_ctl!r}, load=[Path(__file__).parent / "schema.sql"])
postgresql = pg.postgresql("postgresql_proc")
redis_proc = rd.redis_proc(executable={redis!r})
redisdb = rd.redisdb("redis_proc")
"""

PEER_TESTS = """\
import pytest


@pytest.mark.parametrize("n", range({tests}))
def test_row_and_key(n, postgresql, redisdb):
    with postgresql.cursor() as cur:
        cur.execute("INSERT INTO items (name) VALUES (%s)", (f"n{{n}}",))
        cur.execute("SELECT name FROM items")
        assert [r[0] for r in cur.fetchall()] == [f"n{{n}}"]
    redisdb.set("k", n)
    assert redisdb.get("k") == str(n).encode()
"""

PEER_SCHEMA = "CREATE TABLE items (id serial PRIMARY KEY, name varchar(100) NOT NULL);\n"


def _write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    shutil.copyfile(TIMER, directory / TIMER.name)


def dashtam_project(directory: Path, tests: int, pg_bin: str, redis_bin: str, loop_scope: str = "session") -> None:
    """A project that uses pytest-dashtam's local backend, schema from `metadata.create_all`."""
    _write(
        directory,
        {
            "benchapp.py": DASHTAM_APP,
            "test_suite.py": DASHTAM_TESTS.format(tests=tests),
            ".env.test": DASHTAM_ENV,
            "pytest.ini": DASHTAM_INI.format(pg_bin=pg_bin, redis_bin=redis_bin, loop_scope=loop_scope),
        },
    )


def bare_project(directory: Path, tests: int, pg_bin: str, redis_bin: str) -> None:
    """The same app and tests on a hand-written rollback conftest (the issue's reference), no plugin."""
    ini = "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = session\n"
    _write(
        directory,
        {
            "benchapp.py": DASHTAM_APP,
            "conftest.py": BARE_CONFTEST.format(pg_bin=pg_bin, redis_bin=redis_bin),
            "test_suite.py": DASHTAM_TESTS.format(tests=tests),
            "pytest.ini": ini + "asyncio_default_test_loop_scope = session\n",
        },
    )


def peer_project(directory: Path, tests: int, pg_bin: str, redis_bin: str) -> None:
    """A project on pytest-postgresql + pytest-redis with nothing but the executables configured."""
    _write(
        directory,
        {
            "conftest.py": PEER_CONFTEST.format(pg_ctl=str(Path(pg_bin) / "pg_ctl"), redis=redis_bin),
            "schema.sql": PEER_SCHEMA,
            "test_suite.py": PEER_TESTS.format(tests=tests),
            "pytest.ini": "[pytest]\n",
        },
    )
