"""Application settings.

Settings are read when `get_settings()` is first called, not at import time, so that a test runner
can export the test environment before the application reads it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["development", "testing", "production"]

# A fixed key is acceptable only where no real token is ever stored.
_TESTING_ONLY_KEY = "dGVzdGluZy1vbmx5LWtleS1ub3QtZm9yLXJlYWwtdXM="


class Settings(BaseSettings):
    """Everything the application reads from its environment (env file, then variables)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=True)

    ENVIRONMENT: Environment = "development"
    TESTING: bool = False
    DEBUG: bool = False

    DATABASE_URL: str = Field(
        default="postgresql+asyncpg://dashtam_user:dashtam_password@127.0.0.1:5432/dashtam",
        description="An async SQLAlchemy URL (postgresql+asyncpg).",
    )
    DATABASE_POOL_SIZE: int = 5
    DATABASE_ECHO: bool = False
    REDIS_URL: str = Field(
        default="redis://127.0.0.1:6379/0", description="A Redis URL whose path is the index: redis://host:port/N"
    )

    # Fernet key (urlsafe base64 of 32 bytes) encrypting provider tokens at rest.
    TOKEN_ENCRYPTION_KEY: SecretStr | None = None

    API_BASE_URL: str = "http://127.0.0.1:8000"
    # The CA bundle (PEM) the callback server verifies API_BASE_URL's certificate against, instead of the
    # system's: the dev certificate (`python -m dashtam.certs`), which `dashtam-env up dev` sets. Unset: the
    # system's CAs. Verification is never off.
    API_CA_FILE: Path | None = None
    CALLBACK_HOST: str = "127.0.0.1"
    CALLBACK_PORT: int = 8182
    # How the provider reaches the callback server: the scheme of the redirect URI (https in dev).
    CALLBACK_SCHEME: Literal["http", "https"] = "http"

    # The OAuth provider. "sandbox" issues tokens locally, so dev and tests run offline.
    PROVIDER_NAME: str = "sandbox"
    PROVIDER_CLIENT_ID: str = "dashtam-sandbox-client"
    PROVIDER_CLIENT_SECRET: SecretStr = SecretStr("sandbox-secret")
    PROVIDER_AUTHORIZE_URL: str = "https://sandbox.dashtam.invalid/oauth/authorize"
    PROVIDER_TOKEN_URL: str = "https://sandbox.dashtam.invalid/oauth/token"
    PROVIDER_SCOPES: str = "accounts transactions"
    OAUTH_STATE_TTL_SECONDS: int = 600

    @field_validator("DATABASE_URL")
    @classmethod
    def _async_postgres(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme != "postgresql+asyncpg":
            raise ValueError(
                f"DATABASE_URL must use the postgresql+asyncpg scheme (got {scheme or 'none'!r}); "
                "write it as postgresql+asyncpg://user:password@host:port/database"
            )
        return value

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_with_index(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(f"REDIS_URL must be a redis:// or rediss:// URL (got scheme {parts.scheme!r})")
        index = parts.path.strip("/")
        if parts.scheme != "unix" and index and not index.isdigit():
            raise ValueError(f"REDIS_URL's path must be the Redis index, e.g. redis://host:6379/1 (got {index!r})")
        return value

    @field_validator("API_CA_FILE")
    @classmethod
    def _readable_ca_file(cls, value: Path | None) -> Path | None:
        # Refused at start-up, not as a TLS error on the first forwarded callback.
        if value is not None and not value.is_file():
            raise ValueError(
                f"API_CA_FILE={value} is not a file; point it at the API's certificate (PEM), e.g. the dev one "
                "python -m dashtam.certs makes (.dashtam/certs/cert.pem), or unset it to trust the system's CAs"
            )
        return value

    @field_validator("TOKEN_ENCRYPTION_KEY")
    @classmethod
    def _fernet_key(cls, value: SecretStr | None) -> SecretStr | None:
        # Refused here, at start-up, rather than on the first OAuth callback that needs it.
        if value is not None:
            try:
                Fernet(value.get_secret_value())
            except (ValueError, TypeError):
                raise ValueError(
                    "TOKEN_ENCRYPTION_KEY is not a Fernet key (urlsafe base64 of 32 bytes); create one with "
                    "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
                ) from None
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_combinations(self) -> Settings:
        if self.ENVIRONMENT == "production" and self.DEBUG:
            raise ValueError("DEBUG must be false when ENVIRONMENT is production")
        if self.ENVIRONMENT == "production" and self.TESTING:
            raise ValueError("TESTING must be false when ENVIRONMENT is production")
        if self.TOKEN_ENCRYPTION_KEY is None:
            if self.ENVIRONMENT != "testing":
                raise ValueError(
                    "TOKEN_ENCRYPTION_KEY is required outside testing; create one with "
                    "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
                )
            self.TOKEN_ENCRYPTION_KEY = SecretStr(_TESTING_ONLY_KEY)
        return self

    @property
    def redis_index(self) -> int:
        """The Redis logical database the application uses (the URL's path; 0 when absent)."""
        index = urlsplit(self.REDIS_URL).path.strip("/")
        return int(index) if index.isdigit() else 0

    @property
    def database_name(self) -> str:
        return urlsplit(self.DATABASE_URL).path.lstrip("/")

    @property
    def provider_scopes(self) -> list[str]:
        return self.PROVIDER_SCOPES.split()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use (FastAPI dependency)."""
    return Settings()
