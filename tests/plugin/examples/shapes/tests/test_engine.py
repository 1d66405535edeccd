"""dashtam_session_dependency = shapes.db:get_engine (-> AsyncEngine): client gives an engine whose connections
are the test's connection, each transaction a savepoint."""

import pytest
from outside import rows_seen_from_outside
from shapes.models import Note
from sqlalchemy import select


async def test_a_write_through_the_api(client, db_session, db_engine) -> None:
    response = await client.post("/engine/notes/milk")  # engine.begin()
    assert response.status_code == 201, response.text
    assert (await client.post("/engine/commits/tea")).status_code == 201  # engine.connect() + commit()
    assert (await client.post("/engine/drafts/eggs")).status_code == 201  # engine.connect(), no commit
    assert (await client.get("/engine/notes")).json() == ["milk", "tea"]
    assert list((await db_session.scalars(select(Note.title).order_by(Note.id))).all()) == ["milk", "tea"]
    assert await rows_seen_from_outside(db_engine) == 0


async def test_the_next_test_sees_none(client) -> None:
    assert (await client.get("/engine/notes")).json() == []


@pytest.mark.dashtam_db(transaction=True)
async def test_real_commits_with_the_marker(client, db_engine) -> None:
    assert (await client.post("/engine/notes/bread")).status_code == 201  # the real engine: a real commit
    assert await rows_seen_from_outside(db_engine) == 1


async def test_and_after_it_none(client, db_engine) -> None:
    assert (await client.get("/engine/notes")).json() == []
    assert await rows_seen_from_outside(db_engine) == 0
