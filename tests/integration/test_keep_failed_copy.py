"""isolation/keep.py's copy on a real server: what a connection sees inside its open transaction, copied
into a fresh copy of the template (what `--dashtam-keep-failed` keeps), foreign keys, sequences, generated
and identity columns, triggers, another schema and the template's own rows included."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
import pytest_asyncio
from foreign import unique_name
from selftest import Servers

from pytest_dashtam.isolation import keep
from pytest_dashtam.schema import database_url
from pytest_dashtam.urls import libpq_url

# A child that sorts before its parent, a self-reference, a generated and an identity column, a trigger that
# writes, a sequence of no table's, another schema with a row the template brings (a data migration).
SCHEMA = """
CREATE SCHEMA app;
CREATE TABLE z_parent (id serial PRIMARY KEY, name text NOT NULL, shout text GENERATED ALWAYS AS (upper(name)) STORED);
CREATE TABLE a_child (
    id serial PRIMARY KEY, parent_id int NOT NULL REFERENCES z_parent (id), boss_id int REFERENCES a_child (id)
);
CREATE TABLE log (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, msg text);
CREATE FUNCTION note_child() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN INSERT INTO log (msg) VALUES ('child ' || NEW.id); RETURN NEW; END $$;
CREATE TRIGGER child_noted AFTER INSERT ON a_child FOR EACH ROW EXECUTE FUNCTION note_child();
CREATE SEQUENCE free_counter;
CREATE TABLE app.settings (key text PRIMARY KEY, value jsonb);
INSERT INTO app.settings VALUES ('seeded', '{"by": "migration"}');
"""
TABLES = ("z_parent", "a_child", "log", "app.settings")


@pytest.fixture
def databases(servers: Servers) -> Iterator[tuple[str, str]]:
    """(source, target) URLs: a test database and a fresh copy of its template."""
    template, source, target = (unique_name(stem) for stem in ("keeptpl", "keepsrc", "keepdst"))
    with psycopg.connect(servers.postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{template}"')
        with psycopg.connect(servers.postgres_url, dbname=template, autocommit=True) as conn:
            conn.execute(SCHEMA)
        for name in (source, target):
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield (
            libpq_url(database_url(servers.postgres_url, source)),
            libpq_url(database_url(servers.postgres_url, target)),
        )
    finally:
        with psycopg.connect(servers.postgres_url, autocommit=True) as admin:
            for name in (template, source, target):
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest_asyncio.fixture
async def in_transaction(databases: tuple[str, str]) -> AsyncIterator[asyncpg.Connection]:
    """The source, as a failed test leaves its connection: writes in an open transaction, never committed."""
    conn = await asyncpg.connect(databases[0])
    transaction = conn.transaction()
    await transaction.start()
    await conn.execute("DELETE FROM app.settings")
    await conn.execute("""INSERT INTO app.settings VALUES ('by test', '{"n": 1}')""")
    await conn.execute("INSERT INTO z_parent (name) VALUES ('first'), ('second')")
    await conn.execute("INSERT INTO a_child (parent_id) VALUES (2)")
    await conn.execute("INSERT INTO a_child (parent_id, boss_id) VALUES (1, 1)")
    await conn.fetchval("SELECT nextval('free_counter') + nextval('free_counter') + nextval('free_counter')")
    try:
        yield conn
    finally:
        await transaction.rollback()
        await conn.close()


async def _rows(conn: asyncpg.Connection, table: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY 1")]


async def _sequences(conn: asyncpg.Connection) -> dict[str, tuple[int, bool]]:
    return {
        name: tuple(await conn.fetchrow(f"SELECT last_value, is_called FROM {name}"))
        for name in ("z_parent_id_seq", "a_child_id_seq", "log_id_seq", "free_counter")
    }


@pytest.mark.asyncio
@pytest.mark.parametrize("checks_off", [True, False], ids=["superuser", "foreign-key-order"])
async def test_the_copy_is_what_the_transaction_sees(
    in_transaction: asyncpg.Connection, databases: tuple[str, str], monkeypatch: pytest.MonkeyPatch, checks_off: bool
) -> None:
    if not checks_off:  # as a role that may not switch the checks off: the order alone satisfies the keys
        monkeypatch.setattr(keep, "_checks_off", _refused)
    target = await asyncpg.connect(databases[1])
    try:
        rows = await keep.copy_state(in_transaction, target)
        assert rows == {"a_child": 2, "app.settings": 1, "log": 2, "z_parent": 2}
        for table in TABLES:  # the log as the test left it: the trigger did not fire again for the copy
            assert await _rows(target, table) == await _rows(in_transaction, table), table
        assert await _rows(target, "app.settings") == [("by test", '{"n": 1}')]
        assert await _rows(target, "z_parent") == [(1, "first", "FIRST"), (2, "second", "SECOND")]
        assert await _sequences(target) == await _sequences(in_transaction)
        assert (await _sequences(target))["free_counter"] == (3, True)
        enabled = await target.fetchval("SELECT tgenabled::text FROM pg_trigger WHERE tgname = 'child_noted'")
        assert enabled == "O"  # the trigger is on again in the kept database
    finally:
        await target.close()
    # The source's transaction is untouched: rolled back, the test database is as the template made it.
    await in_transaction.execute("ROLLBACK")
    assert await _rows(in_transaction, "z_parent") == []
    assert await _rows(in_transaction, "app.settings") == [("seeded", '{"by": "migration"}')]
    await in_transaction.execute("BEGIN")  # for the fixture's own rollback


async def _refused(conn: asyncpg.Connection) -> bool:
    return False
