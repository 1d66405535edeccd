from __future__ import annotations

import pytest
from exampleapp import Item
from httpx import AsyncClient
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

pytestmark = pytest.mark.asyncio


async def count(conn_or_session: AsyncConnection | AsyncSession, table: str) -> int:
    result: int = (await conn_or_session.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
    return result


@pytest.mark.dashtam_db(transaction=True)
async def test_commits_are_real(db_session: AsyncSession, db_engine: AsyncEngine) -> None:
    item = Item(name="committed")
    db_session.add(item)
    await db_session.commit()
    async with db_engine.connect() as other:  # another connection sees it: really committed
        assert await count(other, "items") == 1
    async with db_engine.begin() as conn:  # raw SQL on another engine is tracked too
        await conn.execute(text("INSERT INTO tags (item_id, label) VALUES (:i, 'x')"), {"i": item.id})


async def test_written_tables_were_emptied_and_sequences_reset(db_session: AsyncSession) -> None:
    assert await count(db_session, "items") == 0
    assert await count(db_session, "tags") == 0
    item = Item(name="again")
    db_session.add(item)
    await db_session.flush()
    assert item.id == 1


@pytest.mark.dashtam_db(transaction=True)
async def test_marker_without_db_session(db_engine: AsyncEngine) -> None:
    async with db_engine.begin() as conn:
        await conn.execute(text("INSERT INTO items (name) VALUES ('by engine')"))


async def test_engine_writes_were_emptied(db_engine: AsyncEngine) -> None:
    async with db_engine.connect() as conn:
        assert await count(conn, "items") == 0


@pytest.mark.dashtam_db(transaction=True)
async def test_app_commits_through_client_are_real(client: AsyncClient, redis_client: Redis) -> None:
    assert (await client.post("/items/through-app")).status_code == 200


async def test_app_writes_were_emptied(db_engine: AsyncEngine) -> None:
    async with db_engine.connect() as conn:
        assert await count(conn, "items") == 0
