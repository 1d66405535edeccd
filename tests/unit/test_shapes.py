"""isolation/shapes.py: a session dependency's shape from its annotation, and the stand-ins of each shape on the
test's transaction (on this run's own test database, through the plugin's db_session)."""

from __future__ import annotations

import typing
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Annotated, Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from pytest_dashtam.errors import ConfigError
from pytest_dashtam.isolation import JoinedEngine, dependency_shape, stand_in
from pytest_dashtam.isolation.shapes import Shape


class MySession(AsyncSession):
    pass


def _declared(annotation: object) -> Any:
    def dependency() -> None:
        return None

    dependency.__annotations__ = {"return": annotation}
    return dependency


def _unannotated() -> None:
    pass


_unannotated.__annotations__ = {}


@pytest.mark.parametrize(
    ("annotation", "shape"),
    [
        (AsyncSession, "session"),
        (MySession, "session"),
        (AsyncIterator[AsyncSession], "session"),
        (AsyncGenerator[AsyncSession, None], "session"),
        (typing.AsyncIterator[AsyncSession], "session"),
        (Annotated[AsyncSession, "doc"], "session"),
        (AsyncIterator[Annotated[AsyncSession, "doc"]], "session"),
        (AsyncSession | None, "session"),
        (Iterator[AsyncSession], "session"),
        (typing.Any, "session"),
        (async_sessionmaker, "sessionmaker"),
        (async_sessionmaker[AsyncSession], "sessionmaker"),
        # rhoboro/async-fastapi-sqlalchemy's, unparametrized:
        (AsyncIterator[async_sessionmaker], "sessionmaker"),  # type: ignore[type-arg]
        (Annotated[AsyncIterator[async_sessionmaker[AsyncSession]], "doc"], "sessionmaker"),
        (AsyncEngine, "engine"),
        (AsyncGenerator[AsyncEngine, None], "engine"),
        # Annotations as written, where they cannot be evaluated (names imported under TYPE_CHECKING only):
        ("AsyncIterator[AsyncSession]", "session"),
        ("AsyncIterator[NotImportedHere[async_sessionmaker[AsyncSession]]]", "sessionmaker"),
        ("Annotated[NotImportedHere[AsyncEngine], Depends(x)]", "engine"),
    ],
)
def test_the_shape_comes_from_the_declared_return_type(annotation: object, shape: Shape) -> None:
    assert dependency_shape(_declared(annotation), "myapp.db:get_db") == shape


def test_an_unannotated_dependency_gets_a_session() -> None:
    assert dependency_shape(_unannotated, "myapp.db:get_db") == "session"

    async def get_db():  # type: ignore[no-untyped-def]
        yield None

    assert dependency_shape(get_db, "myapp.db:get_db") == "session"


@pytest.mark.parametrize(
    ("annotation", "shown"),
    [
        (AsyncIterator[AsyncConnection], "AsyncIterator[AsyncConnection]"),
        (Iterator[Session], "Iterator[Session]"),
        (str, "str"),
        ("AsyncIterator[Connection]", "AsyncIterator[Connection]"),
    ],
)
def test_an_unknown_shape_is_one_line_naming_the_dependency(annotation: object, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        dependency_shape(_declared(annotation), "myapp.db:get_db")
    message = str(info.value)
    assert message.startswith(f"dashtam_session_dependency='myapp.db:get_db' is declared to give {shown}; ")
    assert "override it yourself in dashtam_dependency_overrides" in message
    assert "\n" not in message


# --- the stand-ins, on the test's transaction ---


async def _probe(db_session: AsyncSession) -> None:
    await db_session.execute(text("CREATE TEMP TABLE shape_probe (id serial PRIMARY KEY, title text)"))


async def _titles(db_session: AsyncSession) -> list[str]:
    return list((await db_session.scalars(text("SELECT title FROM shape_probe ORDER BY id"))).all())


@pytest.mark.asyncio
async def test_the_session_stand_in_is_db_session(db_session: AsyncSession) -> None:
    assert stand_in("session", db_session) is db_session


@pytest.mark.asyncio
async def test_the_sessionmaker_s_sessions_join_the_test_s_transaction(db_session: AsyncSession) -> None:
    await _probe(db_session)
    maker = stand_in("sessionmaker", db_session)
    assert isinstance(maker, async_sessionmaker)
    async with maker.begin() as session:  # committed: a savepoint released
        await session.execute(text("INSERT INTO shape_probe (title) VALUES ('kept')"))
    async with maker() as session:  # closed without a commit: rolled back
        await session.execute(text("INSERT INTO shape_probe (title) VALUES ('dropped')"))
    async with maker() as session:
        await session.execute(text("INSERT INTO shape_probe (title) VALUES ('committed')"))
        await session.commit()
    assert await _titles(db_session) == ["kept", "committed"]
    connection = await db_session.connection()
    assert connection.in_transaction()  # the outer transaction is still there, rolled back after the test


@pytest.mark.asyncio
async def test_the_engine_s_connections_are_the_test_s_connection(db_session: AsyncSession) -> None:
    await _probe(db_session)
    engine = stand_in("engine", db_session)
    assert isinstance(engine, JoinedEngine)
    async with engine.begin() as conn:  # committed at the end of the block
        await conn.execute(text("INSERT INTO shape_probe (title) VALUES ('begin')"))

    async def fail_inside_begin() -> None:
        async with engine.begin() as conn:  # rolled back by the error
            await conn.execute(text("INSERT INTO shape_probe (title) VALUES ('error')"))
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await fail_inside_begin()
    async with engine.connect() as conn:
        await conn.execute(text("INSERT INTO shape_probe (title) VALUES ('commit')"))
        await conn.commit()
        await conn.execute(text("INSERT INTO shape_probe (title) VALUES ('rollback')"))
        await conn.rollback()
        await conn.execute(text("INSERT INTO shape_probe (title) VALUES ('not committed')"))
    conn = await engine.connect()  # awaited, then closed by hand
    async with conn.begin():
        await conn.execute(text("INSERT INTO shape_probe (title) VALUES ('conn.begin')"))
    transaction = await conn.begin()
    await conn.execute(text("INSERT INTO shape_probe (title) VALUES ('transaction.rollback')"))
    await transaction.rollback()
    assert (await conn.execute(text("SELECT count(*) FROM shape_probe"))).scalar_one() == 3
    await conn.close()
    await engine.dispose()  # nothing: the engine is the plugin's
    assert await _titles(db_session) == ["begin", "commit", "conn.begin"]
    assert engine.url.database == db_session.bind.engine.url.database  # type: ignore[union-attr]
    assert engine.dialect.name == "postgresql"


@pytest.mark.asyncio
async def test_under_a_real_commit_test_the_stand_ins_are_the_real_engine(db_engine: AsyncEngine) -> None:
    session = AsyncSession(bind=db_engine)  # what db_session is under dashtam_db(transaction=True)
    assert stand_in("engine", session) is db_engine
    maker = stand_in("sessionmaker", session)
    assert maker.kw["bind"] is db_engine
    assert "join_transaction_mode" not in maker.kw
