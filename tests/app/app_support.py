"""Helpers shared by the app's tests (plain functions: the fixtures come from pytest-dashtam)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from dashtam.core.config import Settings, get_settings
from dashtam.core.database import get_session
from dashtam.core.redis import get_redis
from dashtam.main import create_app
from dashtam.providers import ProviderRegistry, get_provider_registry


def build_app(
    session: AsyncSession,
    redis: Redis,
    *,
    settings: Settings | None = None,
    registry: ProviderRegistry | None = None,
) -> FastAPI:
    """A fresh API app on the test session and Redis, with optional settings / providers swapped in."""

    async def _session() -> AsyncIterator[AsyncSession]:
        yield session

    async def _redis() -> AsyncIterator[Redis]:
        yield redis

    app = create_app()
    app.dependency_overrides[get_session] = _session
    app.dependency_overrides[get_redis] = _redis
    if settings is not None:
        app.dependency_overrides[get_settings] = lambda: settings
    if registry is not None:
        app.dependency_overrides[get_provider_registry] = lambda: registry
    return app


@asynccontextmanager
async def asgi_client(app: FastAPI, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, **kwargs)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released), for "server is down" tests."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def unique_email() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


async def create_user(client: httpx.AsyncClient, **fields: str) -> dict[str, Any]:
    body = {"email": unique_email(), "name": "Ada Lovelace", **fields}
    response = await client.post("/api/v1/users", json=body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


async def create_provider(
    client: httpx.AsyncClient, user_id: str, alias: str = "main bank", provider_key: str = "sandbox"
) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/users/{user_id}/providers", json={"provider_key": provider_key, "alias": alias}
    )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


async def start_authorization(client: httpx.AsyncClient, provider_id: str) -> Mapping[str, Any]:
    response = await client.post(f"/api/v1/providers/{provider_id}/authorization")
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data
