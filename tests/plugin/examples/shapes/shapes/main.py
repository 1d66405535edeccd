"""A FastAPI app whose lifespan opens its own engine, Redis pool and an outbound client on app.state, and whose
handlers get the database in each shape: a session, the sessionmaker, the engine.

SHAPES_LIFESPAN_LOG (a file) records each startup and shutdown; SHAPES_LIFESPAN_FAIL / SHAPES_SHUTDOWN_FAIL
make the startup / shutdown raise that message; SHAPES_NO_LIFESPAN puts the app behind a middleware that
refuses the lifespan scope (an ASGI app without lifespan support).
"""

import itertools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from redis.asyncio import Redis
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from shapes.cache import get_redis
from shapes.config import settings
from shapes.db import get_engine, get_session, get_sessionmaker
from shapes.models import Note

_runs = itertools.count(1)


def _log(event: str) -> None:
    path = os.environ.get("SHAPES_LIFESPAN_LOG")
    if path:
        with open(path, "a") as log:
            log.write(event + "\n")


class Mailer:
    """An outbound client the lifespan opens and closes."""

    def __init__(self) -> None:
        self.open = True

    async def aclose(self) -> None:
        self.open = False


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
    if os.environ.get("SHAPES_LIFESPAN_FAIL"):
        raise RuntimeError(os.environ["SHAPES_LIFESPAN_FAIL"])
    run = next(_runs)
    app.state.engine = create_async_engine(settings.database_url)
    app.state.redis = Redis.from_url(settings.redis_url, decode_responses=True)
    app.state.mailer = Mailer()
    _log(f"startup {run}")
    yield {"run": run}  # lifespan state: each request's request.state.run
    await app.state.mailer.aclose()
    await app.state.redis.aclose()
    await app.state.engine.dispose()
    if os.environ.get("SHAPES_SHUTDOWN_FAIL"):
        raise RuntimeError(os.environ["SHAPES_SHUTDOWN_FAIL"])
    _log(f"shutdown {run}")


app = FastAPI(lifespan=lifespan)


class RefuseLifespan:
    """A middleware for servers without lifespans: it raises on the lifespan scope, as some ASGI apps do."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.app = app

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            raise RuntimeError("this app does not do lifespans")
        await self.app(scope, receive, send)


if os.environ.get("SHAPES_NO_LIFESPAN"):
    app.add_middleware(RefuseLifespan)


@app.get("/lifespan")
async def lifespan_state(request: Request) -> dict[str, object]:
    """What the lifespan opened: its engine's database, its Redis index, the mailer, the lifespan state."""
    engine: AsyncEngine = request.app.state.engine
    async with engine.connect() as conn:
        database = (await conn.execute(text("SELECT current_database()"))).scalar_one()
    redis: Redis = request.app.state.redis
    await redis.ping()
    return {
        "database": database,
        "redis_index": redis.connection_pool.connection_kwargs["db"],
        "mailer": request.app.state.mailer.open,
        "run": request.state.run,
        "engine": id(engine),
    }


# --- a session per request ---
@app.post("/session/notes/{title}", status_code=201)
async def add_with_session(
    title: str,
    session: Annotated[AsyncSession, Depends(get_session)],
    redis: Annotated[Redis, Depends(get_redis)],
) -> dict[str, object]:
    note = Note(title=title)
    session.add(note)
    await session.commit()
    await redis.set(f"note:{note.id}", title)
    return {"id": note.id}


@app.get("/session/notes")
async def titles_with_session(session: Annotated[AsyncSession, Depends(get_session)]) -> list[str]:
    return list((await session.scalars(select(Note.title).order_by(Note.id))).all())


# --- the sessionmaker (rhoboro/async-fastapi-sqlalchemy's use cases) ---
@app.post("/maker/notes/{title}", status_code=201)
async def add_with_maker(
    title: str, maker: Annotated[async_sessionmaker, Depends(get_sessionmaker)]
) -> dict[str, object]:
    async with maker.begin() as session:
        note = Note(title=title)
        session.add(note)
    return {"id": note.id}


@app.post("/maker/drafts/{title}", status_code=201)
async def draft_with_maker(title: str, maker: Annotated[async_sessionmaker, Depends(get_sessionmaker)]) -> None:
    async with maker() as session:
        session.add(Note(title=title))
        await session.flush()  # written, then dropped: the session closes without a commit


@app.get("/maker/notes")
async def titles_with_maker(maker: Annotated[async_sessionmaker, Depends(get_sessionmaker)]) -> list[str]:
    async with maker() as session:
        return list((await session.scalars(select(Note.title).order_by(Note.id))).all())


# --- the engine ---
@app.post("/engine/notes/{title}", status_code=201)
async def add_with_engine(title: str, engine: Annotated[AsyncEngine, Depends(get_engine)]) -> dict[str, object]:
    async with engine.begin() as conn:
        new_id = (await conn.execute(insert(Note).values(title=title).returning(Note.id))).scalar_one()
    return {"id": new_id}


@app.post("/engine/commits/{title}", status_code=201)
async def add_with_engine_commit(title: str, engine: Annotated[AsyncEngine, Depends(get_engine)]) -> None:
    async with engine.connect() as conn:
        await conn.execute(insert(Note).values(title=title))
        await conn.commit()


@app.post("/engine/drafts/{title}", status_code=201)
async def draft_with_engine(title: str, engine: Annotated[AsyncEngine, Depends(get_engine)]) -> None:
    async with engine.connect() as conn:
        await conn.execute(insert(Note).values(title=title))  # no commit: rolled back when the connection closes


@app.get("/engine/notes")
async def titles_with_engine(engine: Annotated[AsyncEngine, Depends(get_engine)]) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(Note.title).order_by(Note.id))).scalars().all())
