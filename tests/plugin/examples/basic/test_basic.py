import pytest
from sqlalchemy import select, text

from exampleapp import Item


@pytest.mark.asyncio
async def test_commit_is_rolled_back_afterwards(db_session, redis_client):
    db_session.add(Item(name="first"))
    await db_session.commit()
    assert (await db_session.scalars(select(Item.name))).all() == ["first"]
    await redis_client.set("k", "v")


@pytest.mark.asyncio
async def test_next_test_sees_nothing(db_session, redis_client):
    assert (await db_session.scalars(select(Item.name))).all() == []
    assert await redis_client.get("k") is None


@pytest.mark.asyncio
async def test_client_uses_the_test_session(client, db_session, redis_client):
    response = await client.post("/items/apple")
    assert response.status_code == 200, response.text
    item_id = response.json()["id"]
    assert (await db_session.scalars(select(Item.name))).all() == ["apple"]
    assert await redis_client.get(f"item:{item_id}") == "apple"
    assert (await client.get("/items")).json() == ["apple"]


def test_settings_point_at_the_worker(dashtam_settings, dashtam_stack):
    assert dashtam_settings.DATABASE_URL.endswith("/dashtam_test_plugin")
    assert dashtam_settings.REDIS_URL.endswith("/9")
    assert dashtam_stack.postgres_version
