"""GET /health: ok only when both servers answer, and 503 naming the one that does not."""

from __future__ import annotations

import httpx
import pytest
from app_support import asgi_client, build_app, closed_port
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine


@pytest.mark.asyncio
async def test_health_ok_when_database_and_redis_answer(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "redis": "ok"}


@pytest.mark.asyncio
async def test_health_503_names_redis_when_redis_is_down(db_session: AsyncSession) -> None:
    dead_redis = Redis(host="127.0.0.1", port=closed_port(), socket_connect_timeout=1)
    try:
        async with asgi_client(build_app(db_session, dead_redis)) as api:
            response = await api.get("/health")
    finally:
        await dead_redis.aclose()
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok", "redis": "unavailable"}


@pytest.mark.asyncio
async def test_health_503_names_database_when_database_is_down(redis_client: Redis) -> None:
    dead_engine = create_async_engine(
        f"postgresql+asyncpg://nobody@127.0.0.1:{closed_port()}/nothing", connect_args={"timeout": 1}
    )
    try:
        async with (
            AsyncSession(dead_engine) as dead_session,
            asgi_client(build_app(dead_session, redis_client)) as api,
        ):
            response = await api.get("/health")
    finally:
        await dead_engine.dispose()
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "unavailable", "redis": "ok"}
