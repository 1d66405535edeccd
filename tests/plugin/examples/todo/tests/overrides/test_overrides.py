from sqlalchemy import select
from todo.models import Entry


async def test_the_seed_is_in_every_test_s_database(db_session) -> None:
    assert list((await db_session.scalars(select(Entry.title))).all()) == ["seeded"]
    db_session.add(Entry(title="rolled back"))
    await db_session.commit()


async def test_the_seed_again_and_nothing_else(db_session) -> None:
    assert list((await db_session.scalars(select(Entry.title))).all()) == ["seeded"]


async def test_our_override_beside_the_plugin_s(client) -> None:
    assert (await client.get("/now")).json() == {"now": "2026-01-01T00:00:00+00:00"}
    assert (await client.post("/entries/tea")).status_code == 201
