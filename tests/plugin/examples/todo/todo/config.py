"""Settings the way most FastAPI projects write them: lower-case fields, one instance at import time."""

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    environment: str = "development"
    testing: bool = False
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/todo"
    redis_url: str = "redis://127.0.0.1:6379/0"


settings = Settings()
