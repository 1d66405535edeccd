"""Request and response bodies of the HTTP API.

Responses are built from ORM objects before the handler commits, so they never depend on the
session's expire-on-commit setting (a test session may differ from the application's).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from dashtam.models import ConnectionStatus

# Deliberately loose: the only real proof of an address is mail reaching it, which is not ours to do.
Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, to_lower=True, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
ProviderKey = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[a-z0-9_\-]+$")
]
Alias = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserCreate(_Strict):
    email: Email
    name: Name


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    name: str
    is_active: bool
    created_at: datetime


class ProviderCreate(_Strict):
    provider_key: ProviderKey = Field(description="Which provider implementation serves this connection.")
    alias: Alias = Field(description="The user's name for this connection; unique per user.")


class ProviderRead(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID
    provider_key: str
    alias: str
    status: ConnectionStatus
    connected_at: datetime | None
    last_sync_at: datetime | None
    created_at: datetime


class AuthorizationStart(BaseModel):
    authorization_url: str
    state: str
    expires_in: int = Field(description="Seconds until the state expires.")


class AuthorizationResult(BaseModel):
    provider_id: uuid.UUID
    status: ConnectionStatus
    connected_at: datetime
    token_expires_at: datetime | None
    scope: str | None


CheckResult = Literal["ok", "unavailable"]


class HealthStatus(BaseModel):
    status: Literal["ok", "unavailable"]
    database: CheckResult
    redis: CheckResult
