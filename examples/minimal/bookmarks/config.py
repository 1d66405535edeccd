"""The settings, read once at import time from the environment and `.env`."""

from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    environment: Literal["development", "testing", "production"] = "development"
    testing: bool = False
    database_url: str = "postgresql+asyncpg://bookmarks:bookmarks@localhost:5432/bookmarks"
    redis_url: str = "redis://localhost:6379/0"
    rate_limit_per_minute: int = Field(default=60, ge=1)
    cache_ttl_seconds: int = Field(default=300, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.testing != (self.environment == "testing"):
            raise ValueError("TESTING=true goes with ENVIRONMENT=testing, and only with it")
        if not self.database_url.startswith("postgresql+asyncpg://"):
            raise ValueError("DATABASE_URL must use the asyncpg driver (postgresql+asyncpg://...)")
        if not self.redis_url.startswith(("redis://", "rediss://")):
            raise ValueError("REDIS_URL must be a redis:// or rediss:// URL")
        return self


settings = Settings()
