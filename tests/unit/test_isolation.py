"""isolation/: engines per event loop, the rolled-back session, write tracking, DELETE planning, Redis flush.

The pure parts run without servers; the rest use this worker's test database and Redis index through the
plugin's own session fixtures (so CI runs them on the same stack as everything else).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pytest_dashtam.errors import SafetyError
from pytest_dashtam.isolation import (
    LoopEngines,
    TableCleaner,
    WriteTracker,
    flush_test_index,
    open_rollback_session,
    run_async,
)

# --- pure ---


def test_run_async_leaves_the_threads_event_loop_alone() -> None:
    async def where() -> int:
        return threading.get_ident()

    assert run_async(where) == threading.get_ident()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_run_async_inside_a_running_loop_uses_a_helper_thread() -> None:
    async def outer() -> int:
        async def inner() -> int:
            return threading.get_ident()

        return run_async(inner)

    with asyncio.Runner() as runner:
        assert runner.run(outer()) != threading.get_ident()


@pytest.mark.parametrize(
    ("sql", "table"),
    [
        ("INSERT INTO users (id) VALUES (1)", "users"),
        ('  insert into "Odd Name" values (1)', '"Odd Name"'),
        ("UPDATE public.providers SET alias = 'x'", "public.providers"),
        ("DELETE FROM ONLY tags WHERE true", "tags"),
        ("COPY items FROM STDIN", "items"),
        ("TRUNCATE TABLE a", "a"),
    ],
)
def test_raw_sql_targets(sql: str, table: str) -> None:
    tracker = WriteTracker()
    tracker.note_sql(sql)
    assert tracker.tables == {table}
    assert not tracker.unknown


@pytest.mark.parametrize("sql", ["SELECT 1", "SELECT updated_at FROM users", "SET search_path TO public"])
def test_reads_are_not_writes(sql: str) -> None:
    tracker = WriteTracker()
    tracker.note_sql(sql)
    assert tracker.tables == set()
    assert not tracker.unknown


def test_an_unrecognised_write_empties_everything() -> None:
    tracker = WriteTracker()
    tracker.note_sql("WITH moved AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM moved")
    assert tracker.unknown


def _cleaner(children: dict[int, set[int]]) -> TableCleaner:
    names = {oid: f"public.t{oid}" for oid in range(1, 7)}
    parts = {oid: ("public", f"t{oid}") for oid in names}
    return TableCleaner(names, parts, children, {2: [("public.t2_id_seq", 1, False)]}, {})


def test_plan_empties_referencing_tables_first() -> None:
    # 1 <- 2 <- 3 (3 references 2, 2 references 1); 4 references 1; 5 unrelated.
    cleaner = _cleaner({1: {2, 4}, 2: {3}})
    order = cleaner.plan({1})
    assert set(order) == {1, 2, 3, 4}
    assert order.index(3) < order.index(2) < order.index(1)
    assert order.index(4) < order.index(1)
    assert cleaner.plan({5}) == [5]


def test_cleanup_sql_deletes_then_resets_sequences() -> None:
    sql = _cleaner({1: {2}}).cleanup_sql({2})
    assert sql == "DELETE FROM public.t2;\nSELECT setval('public.t2_id_seq', 1, false)"


def test_a_reference_cycle_falls_back_to_one_truncate() -> None:
    sql = _cleaner({1: {2}, 2: {1}}).cleanup_sql({1})
    assert sql.startswith("TRUNCATE public.t1, public.t2")


# --- on the servers ---


@pytest.fixture(scope="module")
def engines(db_engine: AsyncEngine) -> Iterator[LoopEngines]:
    url = db_engine.url.render_as_string(hide_password=False)
    engines = LoopEngines(url)
    yield engines
    engines.close()


def test_a_non_test_database_is_refused() -> None:
    with pytest.raises(SafetyError, match="does not contain 'test'"):
        LoopEngines("postgresql+asyncpg://postgres@127.0.0.1/dashtam")


def test_one_engine_per_loop_disposed_when_the_loop_shuts_down(engines: LoopEngines) -> None:
    async def use() -> tuple[AsyncEngine, int]:
        engine = await engines.engine()
        assert engine is await engines.engine()
        async with engine.connect() as conn:
            value = (await conn.execute(text("SELECT 1"))).scalar_one()
        return engine, value

    created = engines.created
    with asyncio.Runner() as runner:
        first, _ = runner.run(use())
        assert first.pool.checkedin() == 1  # type: ignore[attr-defined]
    # The runner's shutdown_asyncgens() disposed it, inside its own loop.
    assert first not in engines.engines()
    with asyncio.Runner() as runner:
        second, value = runner.run(use())
    assert value == 1
    assert second is not first
    assert engines.created == created + 2


def test_savepoints_do_not_grow_the_statement_caches(engines: LoopEngines) -> None:
    """A fresh Connection per test restarts SQLAlchemy's savepoint numbering: the caches stay flat."""

    async def one_test() -> tuple[int, int]:
        isolated = await open_rollback_session(await engines.engine())
        session = isolated.session
        for _ in range(3):
            await session.execute(text("SELECT 1"))
            await session.commit()  # a savepoint, named sa_savepoint_N
        raw: Any = (await session.connection()).sync_connection.connection.dbapi_connection  # type: ignore[union-attr]
        sizes = (len(raw._prepared_statement_cache), len(raw._connection._stmt_cache))
        await isolated.close()
        return sizes

    async def many() -> list[tuple[int, int]]:
        return [await one_test() for _ in range(30)]

    with asyncio.Runner() as runner:
        sizes = runner.run(many())
    assert sizes[-1] == sizes[5], sizes


@pytest_asyncio.fixture
async def redis_on_index(_dashtam_prepared: Any, _dashtam_run: Any) -> AsyncIterator[tuple[Redis, int, str]]:
    client = Redis.from_url(_dashtam_prepared.redis_url)
    yield client, _dashtam_prepared.redis_index, _dashtam_run.owner
    await client.aclose()


@pytest.mark.asyncio
async def test_flush_refuses_the_dev_index_a_moved_client_and_another_run_s_index(
    redis_on_index: tuple[Redis, int, str],
) -> None:
    from pytest_dashtam.leases import REDIS_STAMP_KEY

    client, index, owner = redis_on_index
    await client.set("isolation-test", "1")
    with pytest.raises(SafetyError, match="is the dev index"):
        await flush_test_index(client, index, index, owner)
    with pytest.raises(SafetyError, match="refusing FLUSHDB: the Redis client is on index"):
        await flush_test_index(client, index + 1, 0, owner)
    with pytest.raises(SafetyError, match="stamped by another run"):
        await flush_test_index(client, index, 0, "someone_else")
    assert await client.get("isolation-test") == b"1"
    await flush_test_index(client, index, 0, owner)
    # Only the stamp is left: the next flush (and the next run) knows the index is this run's.
    assert await client.keys("*") == [REDIS_STAMP_KEY.encode()]


@pytest.mark.asyncio
async def test_cleaner_reads_the_real_schema(db_engine: AsyncEngine) -> None:
    async with db_engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        cleaner = await TableCleaner.load(raw)
        users = await cleaner.resolve(raw, ['"users"'])
    order = [cleaner.names[o] for o in cleaner.plan(users)]
    assert order[-1] == "public.users"
    assert "public.providers" in order
    assert order.index("public.provider_tokens") < order.index("public.providers")
