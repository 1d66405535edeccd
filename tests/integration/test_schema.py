"""Template building, reuse, rebuild, stale cleanup and cloning against the machine's real PostgreSQL.

The server is shared (other engineers' runs, someone's dev data in `test`, `root`, `postgres`): every test
works on databases named with its own random prefix and removes them afterwards, and the foreign databases
are checked untouched before and after each test.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import pytest_asyncio
from selftest import MACHINE_DATABASES, Servers, suspended_guard

from pytest_dashtam import schema
from pytest_dashtam.errors import ConfigError, SafetyError, SchemaError
from pytest_dashtam.safety import OWNERSHIP_COMMENT_PREFIX
from pytest_dashtam.schema import ddl, migration

REPO = Path(__file__).resolve().parents[2]
ALEMBIC_INI = str(REPO / "alembic.ini")
HEAD = "0002_connections_tokens"
FOREIGN = MACHINE_DATABASES


@dataclass(frozen=True)
class Postgres:
    """The session's PostgreSQL (tests/conftest.py's `servers`), seen through an admin connection."""

    url: str

    async def admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url)

    def url_of(self, dbname: str, driver: str | None = None) -> str:
        """The URL of database `dbname` on this server (the schema module's default driver unless named)."""
        if driver is None:
            return schema.database_url(self.url, dbname)
        return schema.database_url(self.url, dbname, driver=driver)

    async def databases(self, prefix: str) -> dict[str, str | None]:
        conn = await self.admin()
        try:
            rows = await conn.fetch(
                "SELECT datname, shobj_description(oid, 'pg_database') AS c FROM pg_database "
                "WHERE starts_with(datname, $1)",
                prefix,
            )
            return {r["datname"]: r["c"] for r in rows}
        finally:
            await conn.close()

    async def foreign_snapshot(self) -> dict[str, tuple[int, str | None]]:
        conn = await self.admin()
        try:
            rows = await conn.fetch(
                "SELECT datname, oid, shobj_description(oid, 'pg_database') AS c FROM pg_database "
                "WHERE datname = ANY($1)",
                list(FOREIGN),
            )
            return {r["datname"]: (r["oid"], r["c"]) for r in rows}
        finally:
            await conn.close()

    async def fetchval(self, dbname: str, sql: str) -> object:
        conn = await asyncpg.connect(self.url_of(dbname, driver="postgresql"))
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    async def execute(self, dbname: str, sql: str) -> None:
        conn = await asyncpg.connect(self.url_of(dbname, driver="postgresql"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def foreign_state(self, name: str) -> tuple[object, ...]:
        """Everything a migration run against `name` would change: catalog row, relations, rows."""
        conn = await self.admin()
        try:
            row = await conn.fetchrow(
                "SELECT oid, shobj_description(oid, 'pg_database') AS c, datallowconn FROM pg_database "
                "WHERE datname = $1",
                name,
            )
        finally:
            await conn.close()
        assert row is not None
        inside = await asyncpg.connect(self.url_of(name, driver="postgresql"))
        try:
            relations = await inside.fetch(
                "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1, 2"
            )
            rows = await inside.fetch("SELECT * FROM precious ORDER BY v")
        finally:
            await inside.close()
        return (row["oid"], row["c"], row["datallowconn"], [tuple(r) for r in relations], [tuple(r) for r in rows])


@pytest.fixture(scope="session")
def pg(servers: Servers) -> Postgres:
    return Postgres(servers.postgres_url)


@pytest_asyncio.fixture
async def test_db(pg: Postgres) -> AsyncIterator[str]:
    """A test database name no one else uses; whatever stamped database it left behind is dropped after."""
    before = await pg.foreign_snapshot()
    name = f"dashtam_test_s{secrets.token_hex(4)}"
    yield name
    conn = await pg.admin()
    try:
        for dbname, comment in (await pg.databases(name)).items():
            if comment is not None and comment.startswith(OWNERSHIP_COMMENT_PREFIX):
                await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    finally:
        await conn.close()
    assert await pg.foreign_snapshot() == before, "a foreign database changed"
    assert set(before) == set(FOREIGN)


@dataclass(frozen=True)
class SharedTemplate:
    """One template of the repo's migrations for the session: for tests that only clone from one."""

    test_db: str  # the base name it was built for
    name: str


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def shared_template(pg: Postgres) -> AsyncIterator[SharedTemplate]:
    base = f"dashtam_test_shared{secrets.token_hex(4)}"
    with suspended_guard():
        built = await schema.ensure_template(pg.url, test_db=base, alembic_ini=ALEMBIC_INI, metadata=None)
    yield SharedTemplate(base, built.name)
    with suspended_guard():
        conn = await pg.admin()
        try:
            for dbname, comment in (await pg.databases(base)).items():
                if comment is not None and comment.startswith(OWNERSHIP_COMMENT_PREFIX):
                    await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
def alembic_copy(tmp_path: Path) -> Path:
    """The repo's Alembic scripts and ini copied where a test may edit them."""
    shutil.copytree(REPO / "alembic", tmp_path / "alembic", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "alembic.ini", tmp_path / "alembic.ini")
    return tmp_path / "alembic.ini"


# --- pure helpers --------------------------------------------------------------------------------------------


def test_hash_is_stable_and_location_independent(alembic_copy: Path) -> None:
    first = schema.template_hash(ALEMBIC_INI, None)
    assert len(first) == 12
    assert int(first, 16) >= 0
    assert schema.template_hash(ALEMBIC_INI, None) == first
    assert schema.template_hash(str(alembic_copy), None) == first


def test_hash_changes_when_a_revision_file_or_env_changes(alembic_copy: Path) -> None:
    ini = str(alembic_copy)
    original = schema.template_hash(ini, None)
    revision = alembic_copy.parent / "alembic" / "versions" / "0002_connections_tokens_audit.py"
    revision.write_text(revision.read_text() + "\n# an edit\n")
    edited = schema.template_hash(ini, None)
    assert edited != original
    env = alembic_copy.parent / "alembic" / "env.py"
    env.write_text(env.read_text() + "\n# an edit\n")
    assert schema.template_hash(ini, None) not in {original, edited}


def test_hash_ignores_files_that_do_not_shape_the_schema(alembic_copy: Path) -> None:
    original = schema.template_hash(str(alembic_copy), None)
    (alembic_copy.parent / "alembic" / "README").write_text("notes")
    cache = alembic_copy.parent / "alembic" / "versions" / "__pycache__"
    cache.mkdir()
    (cache / "x.py").write_text("x = 1")
    assert schema.template_hash(str(alembic_copy), None) == original


def test_hash_from_metadata_without_alembic() -> None:
    from dashtam.models import Base

    by_metadata = schema.template_hash(None, Base.metadata)
    assert by_metadata == schema.template_hash("", Base.metadata)
    assert by_metadata != schema.template_hash(ALEMBIC_INI, None)
    with pytest.raises(ConfigError, match="no schema source"):
        schema.template_hash(None, None)


def test_missing_alembic_ini_is_a_one_line_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"alembic.ini not found .*create_all"):
        schema.template_hash(str(tmp_path / "alembic.ini"), None)


def test_template_name_too_long_is_refused() -> None:
    assert schema.template_name("dashtam_test", "ab12cd34ef56") == "dashtam_test_tpl_ab12cd34ef56"
    with pytest.raises(ConfigError, match="longer than PostgreSQL's 63 bytes"):
        schema.template_name("dashtam_test_" + "x" * 50, "ab12cd34ef56")


def test_database_url_keeps_credentials_host_and_socket() -> None:
    url = schema.database_url("postgresql://u:p%40ss@127.0.0.1:5432/postgres", "dashtam_test_gw0")
    assert url == "postgresql+asyncpg://u:p%40ss@127.0.0.1:5432/dashtam_test_gw0"
    socket = schema.database_url("postgresql://u@/postgres?host=/run/pg&port=5433", "t_test", driver="postgresql")
    assert socket == "postgresql://u@/t_test?host=/run/pg&port=5433"


def test_redis_url_with_index() -> None:
    assert schema.redis_url_with_index("redis://127.0.0.1:6379", 3) == "redis://127.0.0.1:6379/3"
    assert schema.redis_url_with_index("redis://:pw@127.0.0.1:6379/1", 2) == "redis://:pw@127.0.0.1:6379/2"
    assert schema.redis_url_with_index("unix:///tmp/r.sock?db=1", 4) == "unix:///tmp/r.sock?db=4"


# --- the template --------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_template_is_built_once_then_reused(pg: Postgres, test_db: str) -> None:
    first = await schema.ensure_template(pg.url, test_db=test_db, alembic_ini=ALEMBIC_INI, metadata=None)
    assert first.name == schema.template_name(test_db, first.hash)
    assert first.hash == schema.template_hash(ALEMBIC_INI, None)
    assert not first.cache_hit
    assert str((await pg.databases(test_db))[first.name]).startswith(f"pytest-dashtam:template:{first.hash} chain=2.")
    conn = await pg.admin()
    try:
        oid = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = $1", first.name)
        # No one may connect to a template: a stray connection would make every clone fail.
        assert await conn.fetchval("SELECT datallowconn FROM pg_database WHERE oid = $1", oid) is False
    finally:
        await conn.close()

    second = await schema.ensure_template(pg.url, test_db=test_db, alembic_ini=ALEMBIC_INI, metadata=None)
    assert second.cache_hit
    assert second.name == first.name
    conn = await pg.admin()
    try:
        assert await conn.fetchval("SELECT oid FROM pg_database WHERE datname = $1", first.name) == oid
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_rebuild_builds_again(pg: Postgres, test_db: str) -> None:
    first = await schema.ensure_template(pg.url, test_db=test_db, alembic_ini=ALEMBIC_INI, metadata=None)
    conn = await pg.admin()
    try:
        old_oid = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = $1", first.name)
        rebuilt = await schema.ensure_template(
            pg.url, test_db=test_db, alembic_ini=ALEMBIC_INI, metadata=None, rebuild=True
        )
        assert not rebuilt.cache_hit
        assert rebuilt.name == first.name
        new_oid = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = $1", first.name)
        assert new_oid is not None
        assert new_oid != old_oid
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_stale_template_is_dropped_when_a_migration_changes(
    pg: Postgres, test_db: str, alembic_copy: Path
) -> None:
    ini = str(alembic_copy)
    old = await schema.ensure_template(pg.url, test_db=test_db, alembic_ini=ini, metadata=None)
    revision = alembic_copy.parent / "alembic" / "versions" / "0002_connections_tokens_audit.py"
    revision.write_text(revision.read_text() + "\n# an edit\n")
    new = await schema.ensure_template(pg.url, test_db=test_db, alembic_ini=ini, metadata=None)
    assert new.hash != old.hash
    assert not new.cache_hit
    assert new.stale_dropped == (old.name,)
    assert set(await pg.databases(f"{test_db}_tpl_")) == {new.name}


@pytest.mark.asyncio
async def test_stale_cleanup_leaves_unstamped_lookalikes(pg: Postgres, test_db: str) -> None:
    lookalike = f"{test_db}_tpl_000000000000"
    conn = await pg.admin()
    try:
        await conn.execute(f'CREATE DATABASE "{lookalike}"')
        try:
            result = await schema.ensure_template(pg.url, test_db=test_db, alembic_ini=ALEMBIC_INI, metadata=None)
            assert lookalike not in result.stale_dropped
            assert lookalike in await pg.databases(lookalike)
        finally:
            await conn.execute(f'DROP DATABASE IF EXISTS "{lookalike}"')
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_template_from_metadata_without_alembic(pg: Postgres, test_db: str) -> None:
    from dashtam.models import Base

    result = await schema.ensure_template(pg.url, test_db=test_db, alembic_ini=None, metadata=Base.metadata)
    assert not result.cache_hit
    clone = f"{test_db}_gw0"
    await schema.create_test_database(pg.url, clone, template=result.name, per_database_tuning=False)
    tables = await pg.fetchval(
        clone, "SELECT array_agg(tablename::text ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'"
    )
    assert isinstance(tables, list)
    assert set(Base.metadata.tables) <= set(tables)
    assert "alembic_version" not in tables


@pytest.mark.asyncio
async def test_concurrent_callers_build_the_template_once(pg: Postgres, test_db: str) -> None:
    results = await asyncio.gather(
        *(schema.ensure_template(pg.url, test_db=test_db, alembic_ini=ALEMBIC_INI, metadata=None) for _ in range(3))
    )
    assert sorted(r.cache_hit for r in results) == [False, True, True]
    assert len({r.name for r in results}) == 1


@pytest.mark.asyncio
async def test_failing_migration_is_a_one_line_error_and_leaves_nothing(
    pg: Postgres, test_db: str, alembic_copy: Path
) -> None:
    broken = alembic_copy.parent / "alembic" / "versions" / "0003_broken.py"
    broken.write_text(
        'revision = "0003_broken"\ndown_revision = "0002_connections_tokens"\nbranch_labels = None\n'
        "depends_on = None\n\nfrom alembic import op\n\n\n"
        'def upgrade() -> None:\n    op.execute("SELECT 1/0")\n\n\ndef downgrade() -> None:\n    pass\n'
    )
    with pytest.raises(SchemaError, match=r"alembic upgrade head into .* failed") as info:
        await schema.ensure_template(pg.url, test_db=test_db, alembic_ini=str(alembic_copy), metadata=None)
    assert "\n" not in str(info.value)
    assert await pg.databases(f"{test_db}_tpl_") == {}


@pytest.mark.asyncio
async def test_several_heads_are_refused(pg: Postgres, test_db: str, alembic_copy: Path) -> None:
    branch = alembic_copy.parent / "alembic" / "versions" / "0003_branch.py"
    branch.write_text(
        'revision = "0003_branch"\ndown_revision = "0001_users_providers"\nbranch_labels = None\n'
        "depends_on = None\n\n\ndef upgrade() -> None:\n    pass\n\n\ndef downgrade() -> None:\n    pass\n"
    )
    with pytest.raises(SchemaError, match=r"2 heads .*alembic merge heads"):
        await schema.ensure_template(pg.url, test_db=test_db, alembic_ini=str(alembic_copy), metadata=None)
    assert await pg.databases(f"{test_db}_tpl_") == {}


@pytest.mark.asyncio
async def test_unstamped_database_with_the_template_name_is_refused(pg: Postgres, test_db: str) -> None:
    name = schema.template_name(test_db, schema.template_hash(ALEMBIC_INI, None))
    conn = await pg.admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        try:
            with pytest.raises(SafetyError, match="not created by pytest-dashtam"):
                await schema.ensure_template(
                    pg.url, test_db=test_db, alembic_ini=ALEMBIC_INI, metadata=None, rebuild=True
                )
            assert (await pg.databases(name)) == {name: None}
        finally:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()


# --- test databases ------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_clone_is_migrated_stamped_tuned_and_fresh_each_time(
    pg: Postgres, test_db: str, shared_template: SharedTemplate
) -> None:
    template = shared_template
    clone = f"{test_db}_gw0"
    server_fsync = await pg.fetchval("postgres", "SHOW fsync")
    # What the server runs with (a private stack is tuned server-wide, the machine's server is not).
    server_sync = await pg.fetchval("postgres", "SHOW synchronous_commit")
    await schema.create_test_database(pg.url, clone, template=template.name, per_database_tuning=True)
    assert (await pg.databases(clone))[clone] == f"pytest-dashtam:test:{template.name}"
    assert await pg.fetchval(clone, "SELECT version_num FROM alembic_version") == HEAD
    tuning = await schema.read_tuning(schema.database_url(pg.url, clone))
    assert tuning["fsync"] == server_fsync
    assert tuning["synchronous_commit"] == "off"
    assert await _database_settings(pg, clone) == ["synchronous_commit=off"]  # a setting of that database only
    # Nothing server-wide changed: another database still commits as the server does.
    assert await pg.fetchval("postgres", "SHOW synchronous_commit") == server_sync

    await pg.execute(clone, "INSERT INTO users (id, email, name) VALUES (gen_random_uuid(), 'a@example.com', 'A')")
    assert await pg.fetchval(clone, "SELECT count(*) FROM users") == 1
    await schema.create_test_database(pg.url, clone, template=template.name, per_database_tuning=False)
    assert await pg.fetchval(clone, "SELECT count(*) FROM users") == 0
    tuning = await schema.read_tuning(schema.database_url(pg.url, clone))
    assert tuning["synchronous_commit"] == server_sync
    assert await _database_settings(pg, clone) == []


async def _database_settings(pg: Postgres, name: str) -> list[str]:
    """The per-database settings (ALTER DATABASE ... SET) of database `name`."""
    settings = await pg.fetchval(
        "postgres",
        "SELECT coalesce(array_agg(s ORDER BY s), '{}') FROM pg_db_role_setting r "
        f"JOIN pg_database d ON d.oid = r.setdatabase, unnest(r.setconfig) s WHERE d.datname = '{name}' "
        "AND r.setrole = 0",
    )
    assert isinstance(settings, list)
    return [str(v) for v in settings]


@pytest.mark.asyncio
async def test_clones_for_two_workers_at_once(pg: Postgres, test_db: str, shared_template: SharedTemplate) -> None:
    template = shared_template
    names = [f"{test_db}_gw{i}" for i in range(2)]
    await asyncio.gather(
        *(schema.create_test_database(pg.url, n, template=template.name, per_database_tuning=True) for n in names)
    )
    assert set(names) <= set(await pg.databases(test_db))


@pytest.mark.asyncio
async def test_clone_reachable_over_unix_socket(
    pg: Postgres, servers: Servers, test_db: str, shared_template: SharedTemplate
) -> None:
    socket_admin = servers.postgres_socket_url
    if socket_admin is None:
        pytest.skip("the servers' Unix socket is not known (DASHTAM_POSTGRES_URL names a server that has none here)")
    # The session's template, found (and checked) over the socket: a cache hit.
    template = await schema.ensure_template(
        socket_admin, test_db=shared_template.test_db, alembic_ini=ALEMBIC_INI, metadata=None
    )
    assert template.cache_hit
    assert template.name == shared_template.name
    clone = f"{test_db}_gw0"
    await schema.create_test_database(socket_admin, clone, template=template.name, per_database_tuning=True)

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(schema.database_url(socket_admin, clone))
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT current_database()"))).scalar() == clone
    finally:
        await engine.dispose()
    await schema.drop_test_database(socket_admin, clone)
    assert clone not in await pg.databases(clone)


@pytest.mark.asyncio
async def test_drop_test_database_drops_ours_even_while_connected(
    pg: Postgres, test_db: str, shared_template: SharedTemplate
) -> None:
    template = shared_template
    clone = f"{test_db}_gw0"
    await schema.create_test_database(pg.url, clone, template=template.name, per_database_tuning=False)
    holder = await asyncpg.connect(schema.database_url(pg.url, clone, driver="postgresql"))
    try:
        await schema.drop_test_database(pg.url, clone)
    finally:
        await holder.close()
    assert clone not in await pg.databases(clone)
    await schema.drop_test_database(pg.url, clone)  # absent: nothing to do


@pytest.mark.asyncio
async def test_unstamped_test_named_database_is_never_dropped(
    pg: Postgres, test_db: str, shared_template: SharedTemplate
) -> None:
    foreign = f"dashtam_test_foreign_{secrets.token_hex(4)}"
    conn = await pg.admin()
    try:
        await conn.execute(f'CREATE DATABASE "{foreign}"')
        try:
            await pg.execute(foreign, "CREATE TABLE precious (v int); INSERT INTO precious VALUES (42)")
            template = shared_template
            with pytest.raises(SafetyError, match=f"refusing to drop database '{foreign}'"):
                await schema.drop_test_database(pg.url, foreign)
            with pytest.raises(SafetyError, match="not created by pytest-dashtam"):
                await schema.create_test_database(pg.url, foreign, template=template.name, per_database_tuning=True)
            assert await pg.fetchval(foreign, "SELECT v FROM precious") == 42
        finally:
            await conn.execute(f'DROP DATABASE IF EXISTS "{foreign}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.mark.parametrize("name", FOREIGN)
@pytest.mark.asyncio
async def test_foreign_databases_are_refused(pg: Postgres, test_db: str, name: str) -> None:
    # `test` passes the naming rule and is stopped by the ownership stamp; the others by their names.
    with pytest.raises(SafetyError):
        await schema.drop_test_database(pg.url, name)
    with pytest.raises(SafetyError):
        await schema.create_test_database(pg.url, name, template="template0", per_database_tuning=False)
    with pytest.raises(SafetyError):
        await schema.drop_test_database(pg.url, name, dev_database=name)


@pytest.mark.asyncio
async def test_dev_database_name_is_refused(pg: Postgres, test_db: str) -> None:
    with pytest.raises(SafetyError, match="dev database"):
        await schema.create_test_database(
            pg.url, f"{test_db}_gw0", template="template0", per_database_tuning=False, dev_database=f"{test_db}_gw0"
        )
    assert await pg.databases(test_db) == {}


@pytest.mark.asyncio
async def test_unreachable_admin_url_is_a_one_line_masked_error(test_db: str) -> None:
    from pytest_dashtam.errors import BackendError

    with pytest.raises(BackendError, match=r"postgresql://postgres:\*\*\*@127.0.0.1:1/postgres") as info:
        await schema.ensure_template(
            "postgresql://postgres:hunter2@127.0.0.1:1/postgres",
            test_db=test_db,
            alembic_ini=ALEMBIC_INI,
            metadata=None,
        )
    assert "hunter2" not in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.asyncio
async def test_env_py_that_leaks_its_connection_does_not_block_clones(
    pg: Postgres, test_db: str, alembic_copy: Path
) -> None:
    env = alembic_copy.parent / "alembic" / "env.py"
    text = env.read_text()
    assert "await engine.dispose()" in text
    # A careless env.py: a connection to the database it migrated is left open when env.py returns.
    leak = "import asyncpg; _LEAKED.append(await asyncpg.connect(_url().replace('+asyncpg', '')))"
    leaky = text.replace("await engine.dispose()", f"await engine.dispose(); {leak}")
    env.write_text(leaky.replace("config = context.config", "_LEAKED: list[object] = []\nconfig = context.config", 1))
    template = await schema.ensure_template(pg.url, test_db=test_db, alembic_ini=str(alembic_copy), metadata=None)
    clone = f"{test_db}_gw0"
    await schema.create_test_database(pg.url, clone, template=template.name, per_database_tuning=False)
    assert await pg.fetchval(clone, "SELECT version_num FROM alembic_version") == HEAD


@pytest.mark.asyncio
async def test_check_owned_or_absent_on_the_live_server(
    pg: Postgres, test_db: str, shared_template: SharedTemplate
) -> None:
    from pytest_dashtam.safety import check_owned_or_absent

    template = shared_template
    conn = await pg.admin()
    try:
        assert await check_owned_or_absent(conn, f"{test_db}_absent") is None
        assert await check_owned_or_absent(conn, template.name) is None
        for name in FOREIGN:
            violation = await check_owned_or_absent(conn, name)
            assert violation is not None
            assert violation.check == "ownership"
            assert repr(name) in violation.message
    finally:
        await conn.close()


_BUILD_SCRIPT = """
import asyncio, json, sys
from pytest_dashtam import schema
result = asyncio.run(schema.ensure_template(sys.argv[1], test_db=sys.argv[2], alembic_ini=sys.argv[3], metadata=None))
print(json.dumps({"name": result.name, "cache_hit": result.cache_hit}))
"""


@pytest.mark.asyncio
async def test_two_processes_build_the_template_once(pg: Postgres, test_db: str) -> None:
    """What two xdist workers or two pytest runs starting together do."""
    import json
    import sys

    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _BUILD_SCRIPT,
            pg.url,
            test_db,
            ALEMBIC_INI,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [await proc.communicate() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err.decode()[-500:] for _, err in outputs]
    results = [json.loads(out) for out, _ in outputs]
    assert sorted(r["cache_hit"] for r in results) == [False, True]
    assert results[0]["name"] == results[1]["name"]


@pytest.mark.asyncio
async def test_migrate_inside_a_running_event_loop(pg: Postgres, test_db: str) -> None:
    """The CLI's dev path: alembic upgrade head into an existing database, from async code."""
    name = f"{test_db}_dev"
    await schema.create_test_database(pg.url, name, template="template0", per_database_tuning=False)
    await schema.migrate(schema.database_url(pg.url, name, driver="postgresql"), ALEMBIC_INI)
    assert await pg.fetchval(name, "SELECT version_num FROM alembic_version") == HEAD
    await schema.migrate(schema.database_url(pg.url, name), ALEMBIC_INI)  # already at head: a no-op
    assert await pg.fetchval(name, "SELECT count(*) FROM alembic_version") == 1


def test_hash_follows_alembic_version_locations(alembic_copy: Path) -> None:
    """The file list is Alembic's own reading of the configuration, extra version locations included."""
    ini = alembic_copy.read_text()
    original = schema.template_hash(str(alembic_copy), None)
    more = alembic_copy.parent / "more"
    more.mkdir()
    (more / "0003_more.py").write_text('revision = "0003_more"\ndown_revision = "0002_connections_tokens"\n')
    alembic_copy.write_text(
        ini.replace(
            "path_separator = os",
            "path_separator = space\nversion_locations = %(here)s/alembic/versions %(here)s/more",
        )
    )
    with_more = schema.template_hash(str(alembic_copy), None)
    assert with_more != original
    (more / "0003_more.py").write_text((more / "0003_more.py").read_text() + "# an edit\n")
    assert schema.template_hash(str(alembic_copy), None) not in {original, with_more}


# --- what env.py may reach -----------------------------------------------------------------------------------


def test_child_environment_points_every_database_url_at_the_target(tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    target = make_url("postgresql+asyncpg://postgres:s3cret@127.0.0.1:5432/dashtam_test_tpl_ab12cd34ef56")
    ini = str(tmp_path / "alembic.ini")
    declared = {"DATABASE_URL": "postgresql+psycopg://app:pw@db.example:6000/prod?sslmode=require"}
    child = migration._child_environment(target, ini, declared)
    assert child["DATABASE_URL"] == "postgresql+psycopg://postgres:s3cret@127.0.0.1:5432/dashtam_test_tpl_ab12cd34ef56"
    assert child["DASHTAM_MIGRATE_URL"] == target.render_as_string(hide_password=False)
    assert child["DASHTAM_MIGRATE_INI"] == ini
    assert migration._child_environment(target, ini, {})["DATABASE_URL"] == child["DASHTAM_MIGRATE_URL"]
    socket = make_url("postgresql+asyncpg://postgres@/dashtam_test_x?host=/run/pg&port=5433")
    moved = make_url(migration._child_environment(socket, ini, declared)["DATABASE_URL"])
    assert (moved.drivername, moved.host, moved.port, moved.database) == (
        "postgresql+psycopg",
        None,
        None,
        "dashtam_test_x",
    )
    assert dict(moved.query) == {"host": "/run/pg", "port": "5433"}


_SETTINGS = """
from pydantic_settings import BaseSettings


class Settings(BaseSettings):
    DATABASE_URL: str


settings = Settings()  # at import time, from the environment, as applications do
"""

_ENV_PY = """
import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

import app_settings  # noqa: F401

URL = {url}


def _run(connection):
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


async def _main():
    {before}
    engine = create_async_engine(URL)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


asyncio.run(_main())
"""

_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "0001_widgets"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    {upgrade}
    op.create_table("widgets", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text))
    op.execute("INSERT INTO widgets VALUES (1, 'from the migration')")


def downgrade():
    op.drop_table("widgets")
"""


def _project(root: Path, *, url: str, before: str = "pass", upgrade: str = "pass") -> str:
    """A small application's Alembic project: settings from the environment, an async env.py, one revision."""
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\nprepend_sys_path = %(here)s\npath_separator = os\n"
    )
    (root / "app_settings.py").write_text(_SETTINGS)
    (root / "migrations" / "env.py").write_text(_ENV_PY.format(url=url, before=before))
    (root / "migrations" / "versions" / "0001_widgets.py").write_text(_REVISION.format(upgrade=upgrade))
    return str(root / "alembic.ini")


@pytest_asyncio.fixture
async def foreign_db(pg: Postgres) -> AsyncIterator[str]:
    """Someone's database on the shared server: no plugin stamp, one table, one row; dropped afterwards."""
    name = f"dashtam_dev_{secrets.token_hex(4)}"
    conn = await pg.admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        try:
            await pg.execute(name, "CREATE TABLE precious (v int, note text); INSERT INTO precious VALUES (42, 'keep')")
            before = await pg.foreign_state(name)
            yield name
            assert await pg.foreign_state(name) == before, f"the foreign database {name} changed"
        finally:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.mark.parametrize("source", ["os.environ", "env"])
@pytest.mark.asyncio
async def test_settings_reading_env_py_migrates_the_template_not_the_named_database(
    pg: Postgres, test_db: str, foreign_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    ini = _project(tmp_path, url="app_settings.settings.DATABASE_URL")
    env: dict[str, str] | None = None
    if source == "env":
        monkeypatch.delenv("DATABASE_URL", raising=False)
        env = {"DATABASE_URL": pg.url_of(foreign_db)}
    else:
        monkeypatch.setenv("DATABASE_URL", pg.url_of(foreign_db))
    template = await schema.ensure_template(pg.url, test_db=test_db, alembic_ini=ini, metadata=None, env=env)
    assert not template.cache_hit
    clone = f"{test_db}_gw0"
    await schema.create_test_database(pg.url, clone, template=template.name, per_database_tuning=False)
    assert await pg.fetchval(clone, "SELECT version_num FROM alembic_version") == "0001_widgets"
    assert await pg.fetchval(clone, "SELECT name FROM widgets") == "from the migration"
    assert await pg.fetchval(foreign_db, "SELECT to_regclass('public.widgets')::text") is None


@pytest.mark.parametrize(
    ("kind", "refused"),
    [("database", "PostgreSQL database '{foreign}'"), ("redis", "Redis index 0 at {redis}")],
)
@pytest.mark.asyncio
async def test_env_py_reaching_elsewhere_is_refused_in_one_line(
    pg: Postgres, servers: Servers, test_db: str, foreign_db: str, tmp_path: Path, kind: str, refused: str
) -> None:
    redis_server = urlsplit(servers.redis_url)
    redis_at = f"{redis_server.hostname}:{redis_server.port}"
    if kind == "database":
        ini = _project(tmp_path, url=repr(pg.url_of(foreign_db)))
    else:
        where = f"host={redis_server.hostname!r}, port={redis_server.port}"
        redis_call = f"import redis; redis.Redis({where}, db=0).ping()"
        ini = _project(tmp_path, url="app_settings.settings.DATABASE_URL", before=redis_call)
    with pytest.raises(SchemaError, match=r"env\.py tried to reach another database") as info:
        await schema.ensure_template(pg.url, test_db=test_db, alembic_ini=ini, metadata=None)
    message = str(info.value)
    assert "\n" not in message
    assert refused.format(foreign=foreign_db, redis=redis_at) in message
    assert "DATABASE_URL environment variable" in message
    assert await pg.databases(f"{test_db}_tpl_") == {}
    name = schema.template_name(test_db, schema.template_hash(ini, None))
    assert await pg.databases(schema.unfinished_name(name)) == {}


@pytest.mark.asyncio
async def test_failure_line_masks_the_password(pg: Postgres, test_db: str, tmp_path: Path) -> None:
    ini = _project(
        tmp_path,
        url="app_settings.settings.DATABASE_URL",
        upgrade="import os; raise RuntimeError('cannot use ' + os.environ['DATABASE_URL'] + ' with hunter2')",
    )
    admin = pg.url.replace("postgres@", "postgres:hunter2@", 1)  # the local server trusts, ignoring it
    with pytest.raises(
        SchemaError, match=r"failed: RuntimeError: cannot use postgresql\+asyncpg://postgres:\*\*\*@"
    ) as info:
        await schema.ensure_template(admin, test_db=test_db, alembic_ini=ini, metadata=None)
    assert "hunter2" not in str(info.value)
    assert "\n" not in str(info.value)
    assert await pg.databases(f"{test_db}_tpl_") == {}


@pytest.mark.asyncio
async def test_hung_migration_is_stopped_at_the_timeout(pg: Postgres, test_db: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    hang = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    ini = _project(tmp_path, url="app_settings.settings.DATABASE_URL", before=hang)
    name = f"{test_db}_dev"
    await schema.create_test_database(pg.url, name, template="template0", per_database_tuning=False)
    with pytest.raises(SchemaError, match=r"did not finish within 3s and was stopped") as info:
        await schema.migrate(schema.database_url(pg.url, name), ini, timeout=3)
    assert "\n" not in str(info.value)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


# --- creations that never finished ---------------------------------------------------------------------------


@pytest_asyncio.fixture
async def unfinished(pg: Postgres) -> AsyncIterator[list[str]]:
    """Names a test creates by hand under the unfinished form; whichever is left is dropped afterwards."""
    names: list[str] = []
    yield names
    conn = await pg.admin()
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def test_unfinished_name_is_a_test_name_of_a_fixed_form() -> None:
    from pytest_dashtam.safety import check_test_name

    name = schema.unfinished_name("dashtam_test_gw0")
    assert name == schema.unfinished_name("dashtam_test_gw0")
    assert name != schema.unfinished_name("dashtam_test_gw1")
    assert len(name) == len("pdt_test_new_") + 16
    assert name.startswith("pdt_test_new_")
    assert int(name.removeprefix("pdt_test_new_"), 16) >= 0
    assert check_test_name(name, "dashtam") is None


@pytest.mark.parametrize("what", ["test database", "template"])
@pytest.mark.asyncio
async def test_unstamped_leftover_of_a_crashed_creation_is_reclaimed(
    pg: Postgres, test_db: str, unfinished: list[str], what: str
) -> None:
    if what == "template":
        final = schema.template_name(test_db, schema.template_hash(ALEMBIC_INI, None))
    else:
        final = f"{test_db}_gw0"
    leftover = schema.unfinished_name(final)
    unfinished.append(leftover)
    unrelated = f"{test_db}_unstamped"
    conn = await pg.admin()
    try:
        # What a SIGKILL between CREATE and COMMENT leaves.
        await conn.execute(f'CREATE DATABASE "{leftover}" TEMPLATE template0')
        await conn.execute(f'CREATE DATABASE "{unrelated}" TEMPLATE template0')
        try:
            template = await schema.ensure_template(pg.url, test_db=test_db, alembic_ini=ALEMBIC_INI, metadata=None)
            await schema.create_test_database(
                pg.url, f"{test_db}_gw0", template=template.name, per_database_tuning=False
            )
            assert await pg.databases(leftover) == {}
            assert (await pg.databases(final))[final] is not None
            assert (await pg.databases(unrelated)) == {unrelated: None}
        finally:
            await conn.execute(f'DROP DATABASE IF EXISTS "{unrelated}"')
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_reclaim_leaves_live_creations_and_other_names(pg: Postgres, test_db: str, unfinished: list[str]) -> None:
    live = schema.unfinished_name(f"{test_db}_live")
    live_elsewhere = schema.unfinished_name(f"{test_db}_live_elsewhere")
    crashed = schema.unfinished_name(f"{test_db}_crashed")
    lookalike = f"pdt_test_new_{secrets.token_hex(4)}"  # the prefix, but not 16 hex: not a name the plugin made
    unfinished.extend([live, live_elsewhere, crashed, lookalike])
    # A creator holds its creation lock; one whose session is in another database must count too.
    elsewhere = f"{test_db}_elsewhere"
    await schema.create_test_database(pg.url, elsewhere, template="template0", per_database_tuning=False)
    conn = await pg.admin()
    creator = await pg.admin()
    other_db = await asyncpg.connect(schema.database_url(pg.url, elsewhere, driver="postgresql"))
    try:
        for name in (live, live_elsewhere, crashed, lookalike):
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        await creator.execute("SELECT pg_advisory_lock($1)", ddl._lock_key(f"pytest-dashtam:create:{live}"))
        await other_db.execute("SELECT pg_advisory_lock($1)", ddl._lock_key(f"pytest-dashtam:create:{live_elsewhere}"))
        dropped = await schema.reclaim_unfinished(conn)
        assert crashed in dropped
        assert {live, live_elsewhere, lookalike}.isdisjoint(dropped)
        assert set(await pg.databases("pdt_test_new_")) >= {live, live_elsewhere, lookalike}
        await creator.close()
        await other_db.close()
        for _ in range(100):  # the server ends a closed session's backend, and its locks, a moment later
            await schema.reclaim_unfinished(conn)
            if live in await pg.databases(live) or live_elsewhere in await pg.databases(live_elsewhere):
                await asyncio.sleep(0.05)
                continue
            break
        assert await pg.databases(live) == {}
        assert await pg.databases(live_elsewhere) == {}
        assert lookalike in await pg.databases(lookalike)
    finally:
        await creator.close()
        await other_db.close()
        await conn.close()


@pytest.mark.asyncio
async def test_the_unfinished_drop_takes_only_unfinished_names(pg: Postgres, test_db: str) -> None:
    conn = await pg.admin()
    try:
        for name in (f"{test_db}_gw0", "test", "pdt_test_new_" + "g" * 16, "pdt_test_new_" + "0" * 15):
            with pytest.raises(SafetyError, match="as an unfinished creation"):
                await ddl._drop_unfinished(conn, name)
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_rename_onto_an_existing_name_is_the_one_line_duplicate_error(pg: Postgres, test_db: str) -> None:
    name = f"{test_db}_gw0"
    await schema.create_test_database(pg.url, name, template="template0", per_database_tuning=False)
    conn = await pg.admin()
    try:
        with pytest.raises(SchemaError, match="created by someone else at the same moment") as info:
            await ddl._create_database(conn, name, template="template0", stamp="pytest-dashtam:test:x")
    finally:
        await conn.close()
    assert "\n" not in str(info.value)
    assert await pg.databases(schema.unfinished_name(name)) == {}


_KILL_SCRIPT = """
import asyncio, os, signal, sys
import asyncpg
from pytest_dashtam import schema

admin, test_db, marker, what = sys.argv[1:5]
original = asyncpg.Connection.execute


async def execute(self, query, *args, **kwargs):
    result = await original(self, query, *args, **kwargs)
    if query.startswith(marker):
        os.kill(os.getpid(), signal.SIGKILL)
    return result


asyncpg.Connection.execute = execute
if what == "template":
    asyncio.run(schema.ensure_template(admin, test_db=test_db, alembic_ini=sys.argv[5], metadata=None))
else:
    asyncio.run(schema.create_test_database(admin, test_db + "_gw0", template="template0", per_database_tuning=False))
"""


@pytest.mark.parametrize("marker", ["CREATE DATABASE", "COMMENT ON DATABASE"])
@pytest.mark.parametrize("what", ["test database", "template"])
@pytest.mark.asyncio
async def test_sigkill_during_creation_leaves_nothing_the_next_run_cannot_clear(
    pg: Postgres, test_db: str, unfinished: list[str], marker: str, what: str
) -> None:
    import sys

    if what == "template":
        final = schema.template_name(test_db, schema.template_hash(ALEMBIC_INI, None))
    else:
        final = f"{test_db}_gw0"
    unfinished.append(schema.unfinished_name(final))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _KILL_SCRIPT,
        pg.url,
        test_db,
        marker,
        what,
        ALEMBIC_INI,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == -9, err.decode()[-500:]
    assert await pg.databases(final) == {}  # never the final name without its stamp
    assert set(await pg.databases(schema.unfinished_name(final))) == {schema.unfinished_name(final)}

    template = await schema.ensure_template(pg.url, test_db=test_db, alembic_ini=ALEMBIC_INI, metadata=None)
    await schema.create_test_database(pg.url, f"{test_db}_gw0", template=template.name, per_database_tuning=False)
    assert await pg.fetchval(f"{test_db}_gw0", "SELECT version_num FROM alembic_version") == HEAD
    assert await pg.databases(schema.unfinished_name(final)) == {}
