"""The API: bookmarks in PostgreSQL, each one cached in Redis, and a per-client rate limit on writes."""

import time
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, status
from redis.asyncio import Redis
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bookmarks.cache import get_redis
from bookmarks.config import settings
from bookmarks.db import get_session
from bookmarks.models import Bookmark
from bookmarks.schemas import BookmarkIn, BookmarkOut

SessionDep = Annotated[AsyncSession, Depends(get_session)]
RedisDep = Annotated[Redis, Depends(get_redis)]

app = FastAPI(title="bookmarks")


def cache_key(bookmark_id: int) -> str:
    return f"bookmark:{bookmark_id}"


async def rate_limit(request: Request, redis: RedisDep) -> None:
    """At most `rate_limit_per_minute` writes per client and minute (a fixed-window counter)."""
    client = request.client.host if request.client else "unknown"
    key = f"ratelimit:{client}:{int(time.time() // 60)}"
    count = await redis.incr(key)
    if count == 1:
        await redis.expire(key, 60)
    if count > settings.rate_limit_per_minute:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "rate limit exceeded, try again in a minute")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post(
    "/bookmarks", status_code=status.HTTP_201_CREATED, response_model=BookmarkOut, dependencies=[Depends(rate_limit)]
)
async def create_bookmark(data: BookmarkIn, session: SessionDep) -> Bookmark:
    bookmark = Bookmark(url=str(data.url), title=data.title)
    session.add(bookmark)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, "this URL is bookmarked already") from None
    await session.refresh(bookmark)
    return bookmark


@app.get("/bookmarks", response_model=list[BookmarkOut])
async def list_bookmarks(session: SessionDep) -> list[Bookmark]:
    return list(await session.scalars(select(Bookmark).order_by(Bookmark.id)))


@app.get("/bookmarks/{bookmark_id}", response_model=BookmarkOut)
async def get_bookmark(bookmark_id: int, session: SessionDep, redis: RedisDep) -> BookmarkOut:
    cached = await redis.get(cache_key(bookmark_id))
    if cached is not None:
        return BookmarkOut.model_validate_json(cached)
    bookmark = await session.get(Bookmark, bookmark_id)
    if bookmark is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such bookmark")
    out = BookmarkOut.model_validate(bookmark)
    await redis.set(cache_key(bookmark_id), out.model_dump_json(), ex=settings.cache_ttl_seconds)
    return out


@app.post("/bookmarks/{bookmark_id}/visits", response_model=BookmarkOut)
async def visit(bookmark_id: int, session: SessionDep, redis: RedisDep) -> Bookmark:
    bumped = update(Bookmark).where(Bookmark.id == bookmark_id).values(visits=Bookmark.visits + 1)
    bookmark = (await session.execute(bumped.returning(Bookmark))).scalar_one_or_none()
    if bookmark is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such bookmark")
    await session.commit()
    await redis.delete(cache_key(bookmark_id))
    return bookmark
