"""The engine at import time, and the database handed to the handlers in each shape projects use."""

from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from shapes.config import settings

engine = create_async_engine(settings.database_url)
SessionLocal = async_sessionmaker(engine, expire_on_commit=False)


async def get_session() -> AsyncIterator[AsyncSession]:
    """A session per request: the most common shape."""
    async with SessionLocal() as session:
        yield session


async def get_sessionmaker() -> AsyncIterator[async_sessionmaker]:
    """The sessionmaker itself, as rhoboro/async-fastapi-sqlalchemy's get_session gives it."""
    yield SessionLocal


def get_engine() -> AsyncEngine:
    """The engine, for handlers that work with connections (a plain function: FastAPI calls it too)."""
    return engine


async def get_connection() -> AsyncIterator[AsyncConnection]:
    """A shape the plugin does not stand in for."""
    async with engine.connect() as conn:
        yield conn
