"""Run twice at once against one server: each run sees only its own rows and keys (real commits)."""

import asyncio
import os

import pytest
from sqlalchemy import select
from todo.cache import redis
from todo.db import SessionLocal
from todo.models import Entry

MARK = os.environ.get("TODO_RUN_MARK", "unmarked")


@pytest.mark.parametrize("n", range(4))
async def test_only_our_rows_and_keys(dashtam_stack, n: int) -> None:
    async with SessionLocal() as session:
        session.add(Entry(title=f"{MARK}:{n}"))
        await session.commit()
    await redis.set(f"todo:{MARK}:{n}", "1")
    await asyncio.sleep(0.3)
    async with SessionLocal() as session:
        titles = list((await session.scalars(select(Entry.title))).all())
    assert titles
    assert all(t.startswith(f"{MARK}:") for t in titles), titles
    keys = await redis.keys("todo:*")
    assert keys
    assert all(k.startswith(f"todo:{MARK}:") for k in keys), keys
