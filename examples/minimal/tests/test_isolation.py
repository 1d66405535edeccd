"""Nothing one test writes reaches the next: its rows are rolled back and its Redis index flushed."""

from httpx import AsyncClient
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bookmarks.models import Bookmark


async def test_writes_a_row_and_keys(client: AsyncClient, db_session: AsyncSession, redis_client: Redis) -> None:
    created = await client.post("/bookmarks", json={"url": "https://docs.pytest.org/", "title": "pytest"})
    await client.get(f"/bookmarks/{created.json()['id']}")
    assert await db_session.scalar(select(func.count()).select_from(Bookmark)) == 1
    assert len(await redis_client.keys("bookmark:*")) == 1
    assert len(await redis_client.keys("ratelimit:*")) == 1


async def test_sees_none_of_them(db_session: AsyncSession, redis_client: Redis) -> None:
    assert await db_session.scalar(select(func.count()).select_from(Bookmark)) == 0
    # Count the app's keys by pattern: the index also holds the plugin's ownership stamp.
    assert await redis_client.keys("bookmark:*") == []
    assert await redis_client.keys("ratelimit:*") == []
