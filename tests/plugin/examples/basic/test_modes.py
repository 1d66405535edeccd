"""Run under every asyncio mode / loop scope combination by tests/plugin/test_asyncio_modes.py."""

import pytest
import pytest_asyncio
from exampleapp import Item
from httpx import AsyncClient
from redis.asyncio import Redis
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def warmed_engine(db_engine: AsyncEngine) -> AsyncEngine:
    """A user's own session fixture in the session loop, using db_engine there."""
    async with db_engine.connect() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    return db_engine


async def test_first(
    db_session: AsyncSession, redis_client: Redis, client: AsyncClient, warmed_engine: AsyncEngine
) -> None:
    assert (await client.post("/items/one")).status_code == 200
    assert (await db_session.scalars(select(Item.name))).all() == ["one"]
    async with warmed_engine.connect() as conn:  # another loop than the fixture's: must still work
        assert (await conn.execute(text("SELECT count(*) FROM items"))).scalar_one() == 0


async def test_second(db_session: AsyncSession, redis_client: Redis, client: AsyncClient) -> None:
    assert (await db_session.scalars(select(Item.name))).all() == []
    # Only the plugin's stamp on its index is left of test_first's key.
    assert await redis_client.keys("*") == ["pytest-dashtam:owner"]


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop(db_session: AsyncSession, redis_client: Redis) -> None:
    db_session.add(Item(name="m"))
    await db_session.commit()
    await redis_client.set("m", "1")


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop_again(db_session: AsyncSession, redis_client: Redis) -> None:
    assert (await db_session.scalars(select(Item.name))).all() == []
    assert await redis_client.get("m") is None
