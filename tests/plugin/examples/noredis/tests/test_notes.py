"""The project's own tests: the database through `client` and `db_session`, and no Redis anywhere."""

import psutil


async def test_a_note_through_the_api(client, db_session):
    response = await client.post("/notes/first")
    assert response.status_code == 201
    assert (await client.get("/notes")).json() == ["first"]


async def test_the_next_test_sees_none(client):
    assert (await client.get("/notes")).json() == []


def test_no_redis_was_started_or_imported(dashtam_stack, dashtam_settings):
    assert dashtam_stack.redis_url == ""
    names = [p.name() for p in psutil.Process().children(recursive=True)]
    assert not [n for n in names if "redis" in n or "valkey" in n], names
    assert not hasattr(dashtam_settings, "redis_url")
