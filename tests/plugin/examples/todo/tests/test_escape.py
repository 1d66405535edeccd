"""Code that ignores the environment and dials the shared server directly: the guard refuses it."""

import os

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

SHARED_DB = os.environ["TODO_SHARED_DB_URL"]
SHARED_REDIS = os.environ["TODO_SHARED_REDIS_URL"]


async def test_a_fixed_database_url_is_refused(dashtam_stack) -> None:
    engine = create_async_engine(SHARED_DB)
    with pytest.raises(Exception, match="pytest-dashtam refused a connection"):
        async with engine.connect() as conn:
            await conn.execute(text("DELETE FROM entries"))
    await engine.dispose()


async def test_a_fixed_redis_url_is_refused(dashtam_stack) -> None:
    client = Redis.from_url(SHARED_REDIS)
    with pytest.raises(Exception, match="pytest-dashtam refused a connection"):
        await client.flushdb()
    await client.aclose()
