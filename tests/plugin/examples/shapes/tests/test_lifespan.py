"""The app's lifespan under client: run before the first request, once for the session loop, its own for a
test in a function loop (app.state put back afterwards), on the run's database and Redis index."""

import pytest
from shapes.main import app
from sqlalchemy.engine import make_url

SEEN: dict[str, object] = {}


async def test_the_lifespan_ran_before_the_first_request(client, dashtam_settings) -> None:
    body = (await client.get("/lifespan")).json()
    assert body["database"] == make_url(dashtam_settings.database_url).database  # the lifespan's own engine
    assert body["redis_index"] == int(dashtam_settings.redis_url.rsplit("/", 1)[1])
    assert body["mailer"] is True
    assert body["run"] == 1  # the lifespan state, in request.state
    SEEN.update(body)


async def test_one_lifespan_for_the_session_loop(client) -> None:
    body = (await client.get("/lifespan")).json()
    assert (body["run"], body["engine"]) == (1, SEEN["engine"])


@pytest.mark.asyncio(loop_scope="function")
async def test_a_function_loop_gets_a_lifespan_of_its_own(client) -> None:
    body = (await client.get("/lifespan")).json()  # its engine is of this loop: no "attached to a different loop"
    assert body["run"] == 2
    assert body["engine"] != SEEN["engine"]


async def test_the_session_lifespan_is_back_afterwards(client) -> None:
    body = (await client.get("/lifespan")).json()
    assert (body["run"], body["engine"]) == (1, SEEN["engine"])
    assert id(app.state.engine) == SEEN["engine"]
