"""Ordinary tests of an ordinary project: the app's own engine and Redis client, no dependency overrides."""

import os

from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from todo.cache import redis
from todo.config import settings
from todo.db import SessionLocal, engine
from todo.models import Entry


async def test_add_through_the_api(client) -> None:
    response = await client.post("/entries/milk")
    assert response.status_code == 201
    assert "milk" in (await client.get("/entries")).json()


async def test_the_import_time_engine_is_on_the_run_s_database(dashtam_stack) -> None:
    async with engine.connect() as conn:
        name = (await conn.execute(text("SELECT current_database()"))).scalar_one()
    assert name == engine.url.database == make_url(os.environ["DATABASE_URL"]).database
    assert name.startswith("todo_")
    assert engine.url.port == make_url(dashtam_stack.postgres_url).port


async def test_commit_through_the_import_time_session(dashtam_stack) -> None:
    async with SessionLocal() as session:
        session.add(Entry(title="eggs"))
        await session.commit()
        assert await session.scalar(select(func.count()).select_from(Entry)) >= 1


async def test_import_time_redis_client(dashtam_stack) -> None:
    await redis.set("todo:probe", "1")
    assert await redis.get("todo:probe") == "1"
    await redis.delete("todo:probe")


def test_settings_and_environment_name_the_stack(dashtam_settings) -> None:
    assert settings.database_url == os.environ["DATABASE_URL"] == dashtam_settings.database_url
    assert settings.redis_url == os.environ["REDIS_URL"]
    assert "SHARED" not in settings.database_url
