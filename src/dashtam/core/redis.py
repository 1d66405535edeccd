"""Redis client factory and the FastAPI Redis dependency (tests override it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Annotated

from fastapi import Depends
from redis.asyncio import Redis

from dashtam.core.config import Settings, get_settings


def create_redis(settings: Settings) -> Redis:
    """A client on the index named by `settings.REDIS_URL`, returning str values."""
    return Redis.from_url(settings.REDIS_URL, decode_responses=True)


@lru_cache(maxsize=1)
def _default_redis() -> Redis:
    return create_redis(get_settings())


async def get_redis() -> AsyncIterator[Redis]:
    """The application's Redis client (FastAPI dependency; tests override it)."""
    yield _default_redis()


RedisDep = Annotated[Redis, Depends(get_redis)]


async def close_default_redis() -> None:
    """Close the default client's connections, if one was made (application shutdown)."""
    if _default_redis.cache_info().currsize:
        client = _default_redis()
        _default_redis.cache_clear()
        await client.aclose()
