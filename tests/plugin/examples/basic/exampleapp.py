"""A minimal FastAPI + async SQLAlchemy + Redis app: what a user of pytest-dashtam brings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.asyncio import Redis
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    ENVIRONMENT: str = "development"
    TESTING: bool = False
    DATABASE_URL: str = "postgresql+asyncpg://u@127.0.0.1:5432/example_dev"
    REDIS_URL: str = "redis://127.0.0.1:6379/0"


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


class Tag(Base):
    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(__import__("sqlalchemy").ForeignKey("items.id"))
    label: Mapped[str] = mapped_column(String(50))


async def get_session() -> AsyncIterator[AsyncSession]:
    engine = create_async_engine(Settings().DATABASE_URL)
    async with async_sessionmaker(engine)() as session:
        yield session


async def get_redis() -> AsyncIterator[Redis]:
    yield Redis.from_url(Settings().REDIS_URL, decode_responses=True)


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/items/{name}")
    async def add(
        name: str,
        session: Annotated[AsyncSession, Depends(get_session)],
        redis: Annotated[Redis, Depends(get_redis)],
    ) -> dict[str, object]:
        item = Item(name=name)
        session.add(item)
        await session.commit()
        await redis.set(f"item:{item.id}", name)
        return {"id": item.id, "name": name}

    @app.get("/items")
    async def names(session: Annotated[AsyncSession, Depends(get_session)]) -> list[str]:
        return list((await session.scalars(select(Item.name).order_by(Item.id))).all())

    return app


app = create_app()
