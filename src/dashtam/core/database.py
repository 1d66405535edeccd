"""Engine and session factories, and the FastAPI session dependency.

Nothing is created at import time: the engine is built from settings on first use, so a test
runner can point the application at its own database first (and override `get_session`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Annotated

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from dashtam.core.config import Settings, get_settings


def create_engine(settings: Settings) -> AsyncEngine:
    """An engine for `settings.DATABASE_URL`, checking connections before use (servers restart)."""
    return create_async_engine(
        settings.DATABASE_URL,
        pool_size=settings.DATABASE_POOL_SIZE,
        pool_pre_ping=True,
        echo=settings.DATABASE_ECHO,
    )


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: handlers return ORM objects after committing them.
    return async_sessionmaker(engine, expire_on_commit=False)


@lru_cache(maxsize=1)
def _default_session_factory() -> async_sessionmaker[AsyncSession]:
    return create_session_factory(create_engine(get_settings()))


async def get_session() -> AsyncIterator[AsyncSession]:
    """One session per request (FastAPI dependency; tests override it)."""
    async with _default_session_factory()() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def dispose_default_engine() -> None:
    """Close the default engine's connections, if one was made (application shutdown)."""
    if _default_session_factory.cache_info().currsize:
        bind = _default_session_factory().kw.get("bind")
        _default_session_factory.cache_clear()
        if isinstance(bind, AsyncEngine):
            await bind.dispose()
