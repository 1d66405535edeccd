"""Incremental templates on the real server: a chain that only grew is built from a clone of the old template.

An appended revision runs alone, on a clone of the template of the chain before it, and gives the schema a
build from empty gives; an edited or removed revision or a changed env.py builds from empty; a SIGKILL at
any point of an incremental build leaves nothing the next run refuses, and the old template to build from.

The project is tests/support/chain_project.py's (small revisions that note in CHAIN_LOG that they ran). Its
3-revision template is built once per worker (`base`); each test plants a copy of it under a name of its own,
as an earlier run would have left it, so that only the builds under test run migrations. Foreign data on the
shared server is checksummed around the builds that run migrations.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from chain_project import ChainProject
from foreign import Foreign, foreign_data, unique_name
from selftest import Servers, suspended_guard

from pytest_dashtam import schema
from pytest_dashtam.safety import OWNERSHIP_COMMENT_PREFIX
from pytest_dashtam.schema import templates

pytestmark = pytest.mark.asyncio


@dataclass(frozen=True)
class Base:
    """The 3-revision chain's project and its template, built from empty once for this worker's tests."""

    project: ChainProject
    template: str
    hash: str
    stamp: str


async def _databases(admin_url: str, prefix: str) -> dict[str, str | None]:
    conn = await asyncpg.connect(admin_url)
    try:
        rows = await conn.fetch(
            "SELECT datname, shobj_description(oid, 'pg_database') AS c FROM pg_database "
            "WHERE starts_with(datname, $1)",
            prefix,
        )
        return {r["datname"]: r["c"] for r in rows}
    finally:
        await conn.close()


async def _drop_ours(admin_url: str, *prefixes: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        for prefix in prefixes:
            for name, comment in (await _databases(admin_url, prefix)).items():
                if prefix.startswith("pdt_test_new_") or (comment or "").startswith(OWNERSHIP_COMMENT_PREFIX):
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def base(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Base]:
    project = ChainProject(tmp_path_factory.mktemp("chain"))
    project.append(3)
    test_db = f"dashtam_test_c{secrets.token_hex(4)}"
    with suspended_guard():
        built = await schema.ensure_template(
            servers.postgres_url, test_db=test_db, alembic_ini=project.ini, metadata=None
        )
        stamp = (await _databases(servers.postgres_url, built.name))[built.name]
    assert stamp is not None
    yield Base(project, built.name, built.hash, stamp)
    with suspended_guard():
        await _drop_ours(servers.postgres_url, test_db)


@pytest_asyncio.fixture
async def test_db(servers: Servers) -> AsyncIterator[str]:
    """A base name no one else uses; every stamped database under it is dropped after the test."""
    name = f"dashtam_test_i{secrets.token_hex(4)}"
    yield name
    await _drop_ours(servers.postgres_url, name)


@pytest.fixture
def foreign(servers: Servers) -> Iterator[Foreign]:
    """Someone else's database on the shared server, beside the machine's own, checksummed by the test."""
    with foreign_data(servers.postgres_url, servers.redis_url) as planted:
        planted.plant_database(unique_name("foreign"))
        yield planted


async def _plant(admin_url: str, base: Base, test_db: str) -> str:
    """The base template copied under `test_db`'s name for it, stamped: what an earlier run left there."""
    name = schema.template_name(test_db, base.hash)
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{base.template}"')
        await conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{base.stamp}'")
        await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
    finally:
        await conn.close()
    return name


def _ran(log: Path) -> list[str]:
    """The revisions whose upgrade() ran since the last call."""
    ran = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return ran


async def _schema_dump(admin_url: str, template: str, clone: str) -> str:
    """`pg_dump --schema-only` of a clone of `template` (no one may connect to a template), names normalised."""
    await schema.create_test_database(admin_url, clone, template=template, per_database_tuning=False)
    pg_dump = shutil.which("pg_dump")
    assert pg_dump is not None, "pg_dump is not on PATH"
    url = schema.database_url(admin_url, clone, driver="postgresql")
    proc = await asyncio.create_subprocess_exec(
        pg_dump,
        "--schema-only",
        "--no-owner",
        "--no-privileges",
        "--dbname",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    dumped = out.decode()
    # pg_dump 15.14+ fences its output with \restrict <random key>.
    lines = [line for line in dumped.splitlines() if not re.match(r"\\(un)?restrict ", line)]
    return "\n".join(lines).replace(clone, "<db>")


async def _version(admin_url: str, clone: str) -> str:
    conn = await asyncpg.connect(schema.database_url(admin_url, clone, driver="postgresql"))
    try:
        return str(await conn.fetchval("SELECT version_num FROM alembic_version"))
    finally:
        await conn.close()


async def test_an_appended_revision_runs_alone_on_a_clone_and_gives_the_schema_of_a_build_from_empty(
    servers: Servers, base: Base, test_db: str, tmp_path: Path, foreign: Foreign
) -> None:
    url = servers.postgres_url
    project = base.project.copy(tmp_path / "project")
    other_db = f"{test_db}_e"
    old, old_other = await _plant(url, base, test_db), await _plant(url, base, other_db)
    (new,) = project.append()
    log = tmp_path / "ran"
    env = {"CHAIN_LOG": str(log)}
    before = foreign.checksum()

    # Two builders at once (two xdist workers, two runs): one extends the old template, the other reuses it.
    results = await asyncio.gather(
        *(schema.ensure_template(url, test_db=test_db, alembic_ini=project.ini, metadata=None, env=env) for _ in "ab")
    )
    built, reused = sorted(results, key=lambda r: r.cache_hit)
    assert (built.cache_hit, reused.cache_hit, reused.name) == (False, True, built.name)
    assert (built.extended_from, built.revisions_run) == (old, 1)
    assert built.describe() == f"cache miss: built from {old} + 1 revision"
    assert _ran(log) == [new]  # the new revision's migration alone
    assert built.stale_dropped == (old,)  # dropped after the new template was cloned from it and finished
    assert set(await _databases(url, f"{test_db}_tpl_")) == {built.name}

    # From empty, as --dashtam-rebuild asks, though a template to extend is there.
    empty = await schema.ensure_template(
        url, test_db=other_db, alembic_ini=project.ini, metadata=None, env=env, rebuild=True
    )
    assert (empty.extended_from, empty.revisions_run, empty.describe()) == (None, 4, "cache miss: built")
    assert _ran(log) == project.revisions()
    assert empty.stale_dropped == (old_other,)

    incremental = await _schema_dump(url, built.name, f"{test_db}_gw0")
    from_empty = await _schema_dump(url, empty.name, f"{other_db}_gw0")
    assert "CREATE TABLE public.t0001" in incremental
    assert incremental == from_empty
    assert await _version(url, f"{test_db}_gw0") == await _version(url, f"{other_db}_gw0") == new
    assert foreign.checksum() == before


async def _revision_of(database_url: str) -> str | None:
    """The Alembic revision a database is at; None for an empty one."""
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        if await conn.fetchval("SELECT to_regclass('public.alembic_version')") is None:
            return None
        return str(await conn.fetchval("SELECT version_num FROM alembic_version"))
    finally:
        await conn.close()


@pytest.mark.parametrize("change", ["appended only", "edited middle revision", "removed revision", "changed env.py"])
async def test_only_a_chain_that_grew_extends_the_old_template(
    servers: Servers, base: Base, test_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Where the build starts, read from the database handed to the migrations, which are not run here (the
    tests around this one run them). Each change leaves a longer chain beginning with the old revision ids."""
    url = servers.postgres_url
    project = base.project.copy(tmp_path / "project")
    old = await _plant(url, base, test_db)
    if change == "edited middle revision":
        project.edit(2)
        project.append()
    elif change == "removed revision":  # the head taken out, two others put after its parent
        project.remove(3)
        project.write(4, down="r0002")
        project.write(5, down="r0004")
    elif change == "changed env.py":
        project.touch_env()
        project.append()
    else:
        project.append()
    started_at: list[str | None] = []

    async def populate(database_url: str, **_: object) -> None:
        started_at.append(await _revision_of(database_url))

    monkeypatch.setattr(templates, "_populate", populate)
    result = await schema.ensure_template(url, test_db=test_db, alembic_ini=project.ini, metadata=None)
    if change == "appended only":
        assert started_at == ["r0003"]
        assert (result.extended_from, result.revisions_run) == (old, 1)
    else:
        assert started_at == [None]
        assert (result.extended_from, result.revisions_run) == (None, len(project.revisions()))
        assert result.describe() == "cache miss: built"
    assert result.stale_dropped == (old,)


_KILLED_BUILD = """
import asyncio, os, signal, sys
import asyncpg
from pytest_dashtam import schema

admin, test_db, ini, marker = sys.argv[1:5]
original = asyncpg.Connection.execute


async def execute(self, query, *args, **kwargs):
    result = await original(self, query, *args, **kwargs)
    if marker and query.startswith(marker):
        os.kill(os.getpid(), signal.SIGKILL)
    return result


asyncpg.Connection.execute = execute
asyncio.run(schema.ensure_template(admin, test_db=test_db, alembic_ini=ini, metadata=None))
"""


async def test_sigkill_during_an_incremental_build_leaves_nothing_the_next_run_refuses(
    servers: Servers, base: Base, test_db: str, tmp_path: Path, foreign: Foreign
) -> None:
    """Killed just after cloning the old template, then killed by the new revision's migration: each time
    the next build clears what was left and still extends the old template."""
    url = servers.postgres_url
    project = base.project.copy(tmp_path / "project")
    old = await _plant(url, base, test_db)
    (new,) = project.append()
    result_hash = schema.template_hash(project.ini, None)
    final = schema.template_name(test_db, result_hash)
    unfinished = schema.unfinished_name(final)
    kill = tmp_path / "kill"
    before = foreign.checksum()

    async def killed_build(marker: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _KILLED_BUILD,
            url,
            test_db,
            project.ini,
            marker,
            env={**os.environ, "CHAIN_KILL": str(kill)},
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        assert proc.returncode == -9, err.decode()[-500:]

    try:
        # Killed once the clone of the old template is made, before it is stamped (a build from empty would
        # copy template0 instead, and not be killed).
        await killed_build(f'CREATE DATABASE "{unfinished}" TEMPLATE "{old}"')
        assert await _databases(url, final) == {}  # never the final name without its stamp
        assert set(await _databases(url, unfinished)) == {unfinished}

        kill.touch()  # the new revision's upgrade() SIGKILLs the building process
        await killed_build("")
        assert not kill.exists()
        assert await _databases(url, final) == {final: f"pytest-dashtam:template-building:{result_hash}"}
        assert await _databases(url, unfinished) == {}
        assert (await _databases(url, old))[old] == base.stamp  # untouched, still the one to build from

        log = tmp_path / "ran"
        result = await schema.ensure_template(
            url, test_db=test_db, alembic_ini=project.ini, metadata=None, env={"CHAIN_LOG": str(log)}
        )
        assert (result.name, result.extended_from, result.revisions_run) == (final, old, 1)
        assert _ran(log) == [new]
        assert result.stale_dropped == (old,)
        assert await _databases(url, unfinished) == {}
        await schema.create_test_database(url, f"{test_db}_gw0", template=final, per_database_tuning=False)
        assert await _version(url, f"{test_db}_gw0") == new
        assert foreign.checksum() == before
    finally:
        await _drop_ours(url, unfinished)
