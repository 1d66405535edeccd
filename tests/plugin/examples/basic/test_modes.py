"""Run under every asyncio mode / loop scope combination by tests/plugin/test_asyncio_modes.py."""

import pytest
import pytest_asyncio
from exampleapp import Item
from sqlalchemy import select, text

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def warmed_engine(db_engine):
    """A user's own session fixture in the session loop, using db_engine there."""
    async with db_engine.connect() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    return db_engine


async def test_first(db_session, redis_client, client, warmed_engine):
    assert (await client.post("/items/one")).status_code == 200
    assert (await db_session.scalars(select(Item.name))).all() == ["one"]
    async with warmed_engine.connect() as conn:  # another loop than the fixture's: must still work
        assert (await conn.execute(text("SELECT count(*) FROM items"))).scalar_one() == 0


async def test_second(db_session, redis_client, client):
    assert (await db_session.scalars(select(Item.name))).all() == []
    assert await redis_client.dbsize() == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop(db_session, redis_client):
    db_session.add(Item(name="m"))
    await db_session.commit()
    await redis_client.set("m", "1")


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop_again(db_session, redis_client):
    assert (await db_session.scalars(select(Item.name))).all() == []
    assert await redis_client.get("m") is None
