"""Copied into the basic example by test_plugin_keep_failed.py: failing tests that write, and the tests after
them, which must start clean. Run in file order."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from exampleapp import Item, Tag
from redis.asyncio import Redis
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

pytestmark = pytest.mark.asyncio


async def test_fails_after_writing(db_session: AsyncSession, redis_client: Redis) -> None:
    item = Item(name="left behind")
    db_session.add(item)
    await db_session.commit()  # a savepoint: rolled back after the test
    db_session.add(Tag(item_id=item.id, label="red"))
    await db_session.flush()  # written, not even committed: kept too
    await redis_client.set("todo:1", "left behind")
    await redis_client.set("todo:2", "also")
    raise AssertionError("fails on purpose")


async def test_next_test_starts_clean(db_session: AsyncSession, redis_client: Redis) -> None:
    assert (await db_session.scalars(select(Item.name))).all() == []
    assert (await db_session.scalars(select(Tag.label))).all() == []
    assert [k for k in await redis_client.keys("*") if not k.startswith("pytest-dashtam:")] == []


async def test_passes_after_writing(db_session: AsyncSession) -> None:
    db_session.add(Item(name="passing"))
    await db_session.commit()


@pytest.mark.dashtam_db(transaction=True)
async def test_commits_then_fails(db_session: AsyncSession) -> None:
    db_session.add(Item(name="committed"))
    await db_session.commit()  # real
    raise AssertionError("fails on purpose, after a real commit")


async def test_commits_were_emptied(db_session: AsyncSession) -> None:
    assert (await db_session.scalars(select(Item.name))).all() == []


@pytest_asyncio.fixture
async def broken_seed(db_session: AsyncSession) -> AsyncIterator[None]:
    db_session.add(Item(name="seeded"))
    await db_session.flush()
    raise RuntimeError("the seed fails on purpose")
    yield


async def test_setup_fails(broken_seed: None) -> None:
    """Errors in setup: what the fixture wrote before it failed is kept."""


async def test_fails_with_its_transaction_failed(db_session: AsyncSession) -> None:
    db_session.add(Item(name="committed before"))
    await db_session.commit()
    db_session.add(Item(name="lost"))
    await db_session.flush()
    with pytest.raises(DBAPIError):
        await db_session.execute(text("SELECT 1/0"))
    raise AssertionError("fails on purpose, its transaction failed")


async def test_last_test_starts_clean(db_session: AsyncSession) -> None:
    assert (await db_session.scalars(select(Item.name))).all() == []
