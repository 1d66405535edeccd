"""Settings at import time, lower-case fields: a project with a database and no Redis at all."""

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    environment: str = "development"
    testing: bool = False
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/notes"


settings = Settings()
