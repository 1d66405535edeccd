"""dashtam_session_dependency = shapes.db:get_sessionmaker (-> AsyncIterator[async_sessionmaker]): client gives a
sessionmaker whose sessions join the test's transaction."""

import pytest
from outside import rows_seen_from_outside
from shapes.models import Note
from sqlalchemy import select


async def test_a_write_through_the_api(client, db_session, db_engine) -> None:
    response = await client.post("/maker/notes/milk")
    assert response.status_code == 201, response.text
    assert (await client.post("/maker/drafts/eggs")).status_code == 201  # flushed, never committed
    assert (await client.get("/maker/notes")).json() == ["milk"]
    assert list((await db_session.scalars(select(Note.title))).all()) == ["milk"]
    assert await rows_seen_from_outside(db_engine) == 0


async def test_the_next_test_sees_none(client) -> None:
    assert (await client.get("/maker/notes")).json() == []


@pytest.mark.dashtam_db(transaction=True)
async def test_real_commits_with_the_marker(client, db_engine) -> None:
    assert (await client.post("/maker/notes/bread")).status_code == 201  # on the real engine: a real commit
    assert await rows_seen_from_outside(db_engine) == 1


async def test_and_after_it_none(client, db_engine) -> None:
    assert (await client.get("/maker/notes")).json() == []
    assert await rows_seen_from_outside(db_engine) == 0
