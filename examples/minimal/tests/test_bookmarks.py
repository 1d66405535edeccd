"""The API end to end: rows through `client`, seen by `db_session`; keys through `client`, seen by `redis_client`.

`client` serves the app with its `get_session` and `get_redis` dependencies replaced by the test's
`db_session` and `redis_client` (the pyproject's dashtam_* keys name them): what a request commits is
rolled back after the test, and what it writes to Redis is flushed.
"""

from httpx import AsyncClient
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from bookmarks.config import settings
from bookmarks.models import Bookmark


async def test_create_then_read(client: AsyncClient, db_session: AsyncSession) -> None:
    created = await client.post("/bookmarks", json={"url": "https://www.postgresql.org/", "title": "PostgreSQL"})
    assert created.status_code == 201, created.text
    bookmark_id = created.json()["id"]

    row = await db_session.get(Bookmark, bookmark_id)
    assert row is not None
    assert (row.url, row.title, row.visits) == ("https://www.postgresql.org/", "PostgreSQL", 0)

    read = await client.get(f"/bookmarks/{bookmark_id}")
    assert read.json() == {"id": bookmark_id, "url": "https://www.postgresql.org/", "title": "PostgreSQL", "visits": 0}


async def test_reads_are_cached_in_redis(client: AsyncClient, redis_client: Redis) -> None:
    created = await client.post("/bookmarks", json={"url": "https://redis.io/", "title": "Redis"})
    key = f"bookmark:{created.json()['id']}"

    assert (await client.get(f"/bookmarks/{created.json()['id']}")).status_code == 200
    assert 0 < await redis_client.ttl(key) <= settings.cache_ttl_seconds

    visited = await client.post(f"/bookmarks/{created.json()['id']}/visits")
    assert visited.json()["visits"] == 1
    assert not await redis_client.exists(key)  # a visit invalidates the cached copy


async def test_a_duplicate_url_is_a_conflict(client: AsyncClient, db_session: AsyncSession) -> None:
    first = await client.post("/bookmarks", json={"url": "https://fastapi.tiangolo.com/", "title": "FastAPI"})
    again = await client.post("/bookmarks", json={"url": "https://fastapi.tiangolo.com/", "title": "Again"})
    assert (first.status_code, again.status_code) == (201, 409)
    # The app's rollback undid its own insert only: the first bookmark is still there.
    assert await db_session.scalar(select(func.count()).select_from(Bookmark)) == 1


async def test_writes_are_rate_limited(client: AsyncClient, redis_client: Redis) -> None:
    limit = settings.rate_limit_per_minute  # 5, from .env.test
    statuses = [
        (await client.post("/bookmarks", json={"url": f"https://example.com/{n}", "title": f"n{n}"})).status_code
        for n in range(limit + 1)
    ]
    assert statuses == [201] * limit + [429]
    [counter] = await redis_client.keys("ratelimit:*")
    assert await redis_client.get(counter) == str(limit + 1)


async def test_a_row_from_db_session_is_served_by_the_api(client: AsyncClient, db_session: AsyncSession) -> None:
    db_session.add(Bookmark(url="https://alembic.sqlalchemy.org/", title="Alembic"))
    await db_session.commit()  # a savepoint of the test's transaction: still rolled back afterwards

    listed = await client.get("/bookmarks")
    assert [b["title"] for b in listed.json()] == ["Alembic"]


def test_the_app_s_settings_name_the_test_database() -> None:
    # Created at import time from .env.test, with the test servers' URLs the plugin exported first.
    assert (settings.environment, settings.testing) == ("testing", True)
    assert str(make_url(settings.database_url).database).startswith("bookmarks_test")
