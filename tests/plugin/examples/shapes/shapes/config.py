"""Settings at import time, lower-case fields (the env file's upper-case keys match: case-insensitive)."""

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    environment: str = "development"
    testing: bool = False
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/shapes"
    redis_url: str = "redis://127.0.0.1:6379/0"


settings = Settings()
