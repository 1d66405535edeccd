"""dashtam_session_dependency = shapes.db:get_session (-> AsyncIterator[AsyncSession]): client gives db_session."""

from outside import rows_seen_from_outside
from shapes.models import Note
from sqlalchemy import select


async def test_a_write_through_the_api(client, db_session, redis_client, db_engine) -> None:
    response = await client.post("/session/notes/milk")
    assert response.status_code == 201, response.text
    assert (await client.get("/session/notes")).json() == ["milk"]
    assert list((await db_session.scalars(select(Note.title))).all()) == ["milk"]  # the test's own transaction
    assert await redis_client.get(f"note:{response.json()['id']}") == "milk"
    assert await rows_seen_from_outside(db_engine) == 0  # never committed for real


async def test_the_next_test_sees_none(client, redis_client) -> None:
    assert (await client.get("/session/notes")).json() == []
    assert await redis_client.keys("note:*") == []


async def test_db_session_alone_needs_no_app(db_session) -> None:
    assert list((await db_session.scalars(select(Note.title))).all()) == []
