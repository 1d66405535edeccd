"""GET /health: ok only when both servers answer, and 503 naming the one that does not."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from app_support import asgi_client, build_app, closed_port
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from dashtam.api import health


@pytest.mark.asyncio
async def test_health_ok_when_database_and_redis_answer(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "redis": "ok"}


@pytest.mark.asyncio
async def test_health_503_names_redis_when_redis_is_down(db_session: AsyncSession) -> None:
    # No retries: redis-py's default backoff would make this test wait for the check's timeout.
    dead_redis = Redis(host="127.0.0.1", port=closed_port(), retry=Retry(NoBackoff(), 0))
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


@pytest.mark.asyncio
async def test_health_does_not_hang_on_a_server_that_never_answers(
    db_session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A listener that accepts and then says nothing: what a wedged server looks like.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(health, "CHECK_TIMEOUT_SECONDS", 0.3)
    wedged = Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
    try:
        async with asgi_client(build_app(db_session, wedged)) as api:
            response = await asyncio.wait_for(api.get("/health"), timeout=5)
    finally:
        await wedged.aclose()
        server.close()
        await server.wait_closed()
    assert response.status_code == 503
    assert response.json()["redis"] == "unavailable"
