"""The Alembic chain: upgrade head / downgrade base / upgrade head on a scratch database ends with
exactly the models' schema, and downgrade leaves nothing behind."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dashtam.models import Base
from pytest_dashtam.guard import ConnectionGuard

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"


def alembic_config(url: str) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.attributes["configure_logger"] = False  # leave pytest's logging alone
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser interpolation
    return config


@pytest_asyncio.fixture(loop_scope="session")
async def scratch_url(db_engine: AsyncEngine, dashtam_guard: ConnectionGuard) -> AsyncIterator[str]:
    """A fresh, empty database of this test's own on the test server, dropped afterwards (the guard is told:
    it refuses any database of the stack's server this run did not lease)."""
    name = f"dashtam_migrations_{uuid.uuid4().hex[:12]}_test"
    dashtam_guard.allow_database(name)
    admin = db_engine.execution_options(isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield db_engine.url.set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def on_database(url: str, work: Callable[[Connection], Any]) -> Any:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(work)
    finally:
        await engine.dispose()


def schema_diffs(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def snapshot(conn: Connection) -> dict[str, Any]:
    """What the database holds, in a comparable form: tables, columns, keys, indexes, enum types."""
    inspector = inspect(conn)
    tables: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        fks = inspector.get_foreign_keys(table)
        uniques = inspector.get_unique_constraints(table)
        indexes = inspector.get_indexes(table)
        tables[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
            "pk": inspector.get_pk_constraint(table),
            "fks": sorted(
                (f["name"] or "", tuple(f["constrained_columns"]), f["referred_table"], f["options"].get("ondelete"))
                for f in fks
            ),
            "unique": sorted((u["name"] or "", tuple(u["column_names"])) for u in uniques),
            "indexes": sorted((i["name"] or "", tuple(map(str, i["column_names"]))) for i in indexes),
        }
    enums = conn.execute(
        text(
            "SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_type t "
            "JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname ORDER BY t.typname"
        )
    ).all()
    return {"tables": tables, "enums": [(name, list(labels)) for name, labels in enums]}


def model_ondelete() -> dict[tuple[str, str], str | None]:
    return {
        (fk.parent.table.name, fk.parent.name): fk.ondelete
        for table in Base.metadata.tables.values()
        for fk in table.foreign_keys
    }


def test_the_chain_has_one_head_and_at_least_two_ordered_revisions() -> None:
    scripts = ScriptDirectory.from_config(alembic_config("postgresql+asyncpg://unused/none"))
    heads = scripts.get_heads()
    assert len(heads) == 1, f"several heads: {heads}; merge them with `alembic merge heads`"
    chain = list(scripts.walk_revisions("base", "heads"))  # newest first
    assert len(chain) >= 2
    assert chain[-1].down_revision is None
    for newer, older in itertools.pairwise(chain):
        assert newer.down_revision == older.revision


@pytest.mark.asyncio
async def test_upgrade_downgrade_upgrade_ends_with_the_models_schema(scratch_url: str) -> None:
    config = alembic_config(scratch_url)

    await asyncio.to_thread(command.upgrade, config, "head")
    assert await on_database(scratch_url, schema_diffs) == []
    first = await on_database(scratch_url, snapshot)
    assert set(first["tables"]) == {*Base.metadata.tables, "alembic_version"}
    assert first["enums"] == [("connection_status", ["pending", "active", "error", "revoked"])]
    # compare_metadata does not look at ON DELETE; the migrations must match the models there too.
    migrated_ondelete = {
        (table, columns[0]): ondelete
        for table, spec in first["tables"].items()
        for _name, columns, _referred, ondelete in spec["fks"]
    }
    assert {k: (v.upper() if v else v) for k, v in model_ondelete().items()} == migrated_ondelete

    await asyncio.to_thread(command.downgrade, config, "base")
    emptied = await on_database(scratch_url, snapshot)
    assert set(emptied["tables"]) == {"alembic_version"}
    assert emptied["enums"] == []  # the enum type is dropped too, or the next upgrade would fail

    await asyncio.to_thread(command.upgrade, config, "head")
    assert await on_database(scratch_url, schema_diffs) == []
    assert await on_database(scratch_url, snapshot) == first
    # `alembic check`, through env.py exactly as the command line runs it.
    await asyncio.to_thread(command.check, config)
    versions = await on_database(
        scratch_url, lambda conn: conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    )
    assert versions == list(ScriptDirectory.from_config(config).get_heads())


@pytest.mark.asyncio
async def test_each_step_downgrades_cleanly(scratch_url: str) -> None:
    """Walking the chain one revision at a time, up then down, works at every step."""
    config = alembic_config(scratch_url)
    revisions = [r.revision for r in reversed(list(ScriptDirectory.from_config(config).walk_revisions()))]
    seen: list[set[str]] = []
    for revision in revisions:
        await asyncio.to_thread(command.upgrade, config, revision)
        seen.append(set((await on_database(scratch_url, snapshot))["tables"]))
    # Every revision adds tables the previous one did not have.
    assert all(earlier < later for earlier, later in itertools.pairwise(seen))
    for _ in revisions:
        await asyncio.to_thread(command.downgrade, config, "-1")
    assert set((await on_database(scratch_url, snapshot))["tables"]) == {"alembic_version"}
