# TEMPORARY: replaced by pytest_dashtam's fixtures
"""Stand-ins for the plugin's fixtures, against the machine's servers, until the plugin lands.

Database `dashtam_test_app_tmp` on 127.0.0.1:5432 (created and dropped here, nothing else) and
Redis index 14 on 127.0.0.1:6379 (only that index is flushed).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio
from alembic import command
from alembic.config import Config
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from dashtam.core.config import Settings, get_settings
from dashtam.core.database import get_session
from dashtam.core.redis import get_redis
from dashtam.main import create_app

_DB = "dashtam_test_app_tmp"
_ENV = {
    "ENVIRONMENT": "testing",
    "TESTING": "true",
    "DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{_DB}",
    "REDIS_URL": "redis://127.0.0.1:6379/14",
    "TOKEN_ENCRYPTION_KEY": "dGVzdGluZy1vbmx5LWtleS1ub3QtZm9yLXJlYWwtdXM=",
    "PROVIDER_NAME": "sandbox",
}


@pytest.fixture(scope="session")
def dashtam_settings() -> Iterator[Settings]:
    saved = {k: os.environ.get(k) for k in _ENV}
    os.environ.update(_ENV)
    get_settings.cache_clear()
    yield get_settings()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def db_engine(dashtam_settings: Settings) -> AsyncIterator[AsyncEngine]:
    admin = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{_DB}" WITH (FORCE)'))
        await conn.execute(text(f'CREATE DATABASE "{_DB}"'))
    cfg = Config("alembic.ini")
    cfg.attributes["configure_logger"] = False
    cfg.set_main_option("sqlalchemy.url", dashtam_settings.DATABASE_URL)
    await asyncio.to_thread(command.upgrade, cfg, "head")
    engine = create_async_engine(dashtam_settings.DATABASE_URL)
    yield engine
    await engine.dispose()
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{_DB}" WITH (FORCE)'))
    await admin.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def db_session(db_engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with db_engine.connect() as conn:
        outer = await conn.begin()
        session = AsyncSession(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
        yield session
        await session.close()
        await outer.rollback()


@pytest_asyncio.fixture(loop_scope="session")
async def redis_client(dashtam_settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(dashtam_settings.REDIS_URL, decode_responses=True)
    yield client
    await client.flushdb()
    await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def client(db_session: AsyncSession, redis_client: Redis) -> AsyncIterator[httpx.AsyncClient]:
    async def _session() -> AsyncIterator[AsyncSession]:
        yield db_session

    async def _redis() -> AsyncIterator[Redis]:
        yield redis_client

    app = create_app()
    app.dependency_overrides[get_session] = _session
    app.dependency_overrides[get_redis] = _redis
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as ac:
        yield ac
