from typing import Annotated

from fastapi import Depends, FastAPI
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from todo.cache import get_redis
from todo.db import get_session
from todo.models import Entry

app = FastAPI()


def get_clock() -> str:
    """A dependency of the app's own that tests replace."""
    import datetime

    return datetime.datetime.now(datetime.UTC).isoformat()


@app.post("/entries/{title}", status_code=201)
async def add(
    title: str,
    session: Annotated[AsyncSession, Depends(get_session)],
    redis: Annotated[Redis, Depends(get_redis)],
) -> dict[str, object]:
    entry = Entry(title=title)
    session.add(entry)
    await session.commit()
    await redis.set(f"entry:{entry.id}", title)
    return {"id": entry.id, "title": title}


@app.get("/entries")
async def titles(session: Annotated[AsyncSession, Depends(get_session)]) -> list[str]:
    return list((await session.scalars(select(Entry.title).order_by(Entry.id))).all())


@app.get("/now")
async def now(clock: Annotated[str, Depends(get_clock)]) -> dict[str, str]:
    return {"now": clock}
