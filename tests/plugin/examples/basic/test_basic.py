from __future__ import annotations

from typing import Any

import pytest
from exampleapp import Item
from httpx import AsyncClient
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from pytest_dashtam.backends.base import Stack


@pytest.mark.asyncio
async def test_commit_is_rolled_back_afterwards(db_session: AsyncSession, redis_client: Redis) -> None:
    db_session.add(Item(name="first"))
    await db_session.commit()
    assert (await db_session.scalars(select(Item.name))).all() == ["first"]
    await redis_client.set("k", "v")


@pytest.mark.asyncio
async def test_next_test_sees_nothing(db_session: AsyncSession, redis_client: Redis) -> None:
    assert (await db_session.scalars(select(Item.name))).all() == []
    assert await redis_client.get("k") is None


@pytest.mark.asyncio
async def test_client_uses_the_test_session(client: AsyncClient, db_session: AsyncSession, redis_client: Redis) -> None:
    response = await client.post("/items/apple")
    assert response.status_code == 200, response.text
    item_id = response.json()["id"]
    assert (await db_session.scalars(select(Item.name))).all() == ["apple"]
    assert await redis_client.get(f"item:{item_id}") == "apple"
    assert (await client.get("/items")).json() == ["apple"]


@pytest.mark.asyncio
async def test_settings_point_at_the_worker(dashtam_settings: Any, dashtam_stack: Stack, redis_client: Redis) -> None:
    import os

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    # The database this run leased: the env file's name (which the outer test passes on), or the one the outer
    # test expects it to take instead.
    base = os.environ["INNER_EXPECT_DB"]
    assert dashtam_settings.DATABASE_URL.endswith(f"/{base}" + (f"_{worker}" if worker else ""))
    # The Redis index this process leased (the env file's 9 plus the worker number, or the next free one).
    index = int(dashtam_settings.REDIS_URL.rsplit("/", 1)[1])
    assert index == redis_client.connection_pool.connection_kwargs["db"]
    assert index >= 9 + (int(worker[2:]) if worker else 0)
    # The app's own settings (not overridden by fixtures) read the same values from the environment.
    assert os.environ["DATABASE_URL"] == dashtam_settings.DATABASE_URL
    assert os.environ["REDIS_URL"] == dashtam_settings.REDIS_URL
    assert dashtam_stack.postgres_version


def test_client_overrides_are_removed_afterwards() -> None:
    from exampleapp import app

    assert app.dependency_overrides == {}


def test_without_the_stack_needs_nothing() -> None:
    assert True
