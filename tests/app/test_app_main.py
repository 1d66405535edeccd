"""The application object: importable without settings, complete OpenAPI, configuration errors as one line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import httpx
import pytest
from app_support import asgi_client, build_app, create_user
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from dashtam.core import database as app_database
from dashtam.core import redis as app_redis
from dashtam.core.config import Settings
from dashtam.main import create_app


def test_importing_the_apps_reads_no_settings_and_opens_nothing() -> None:
    # Settings that would be refused if read: importing must still work, because a test runner
    # exports its environment only after the import.
    env = {**os.environ, "ENVIRONMENT": "production", "DEBUG": "true", "TOKEN_ENCRYPTION_KEY": "nonsense"}
    script = textwrap.dedent(
        """
        import dashtam.main, dashtam.callback
        from dashtam.core import config, database, redis
        assert dashtam.main.app is not dashtam.main.create_app()
        assert config.get_settings.cache_info().currsize == 0
        assert database._default_session_factory.cache_info().currsize == 0
        assert redis._default_redis.cache_info().currsize == 0
        print("lazy")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "lazy"


@pytest.mark.asyncio
async def test_openapi_lists_every_endpoint(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {
        "/health": {"get"},
        "/api/v1/users": {"post"},
        "/api/v1/users/{user_id}": {"get"},
        "/api/v1/users/{user_id}/providers": {"get", "post"},
        "/api/v1/users/{user_id}/providers/{provider_id}": {"get", "delete"},
        "/api/v1/providers/{provider_id}/authorization": {"post"},
        "/api/v1/providers/{provider_id}/authorization/callback": {"get"},
    } == {path: set(methods) for path, methods in paths.items()}


@pytest.mark.asyncio
async def test_unknown_provider_name_is_a_one_line_500(
    db_session: AsyncSession, redis_client: Redis, dashtam_settings: Settings
) -> None:
    misconfigured = dashtam_settings.model_copy(update={"PROVIDER_NAME": "nosuch"})
    async with asgi_client(build_app(db_session, redis_client, settings=misconfigured)) as api:
        user = await create_user(api)
        response = await api.post(
            f"/api/v1/users/{user['id']}/providers", json={"provider_key": "sandbox", "alias": "x"}
        )
    assert response.status_code == 500
    assert response.json() == {"detail": "PROVIDER_NAME='nosuch' is not a built-in provider; use one of: sandbox"}


@pytest.mark.asyncio
async def test_lifespan_closes_the_default_connections(dashtam_settings: Settings) -> None:
    # No dependency overrides: the app's own engine and Redis client, from the test environment.
    app = create_app()
    async with app.router.lifespan_context(app):
        async with asgi_client(app) as api:
            response = await api.get("/health")
        assert response.json() == {"status": "ok", "database": "ok", "redis": "ok"}
        assert app_database._default_session_factory.cache_info().currsize == 1
        assert app_redis._default_redis.cache_info().currsize == 1
    assert app_database._default_session_factory.cache_info().currsize == 0
    assert app_redis._default_redis.cache_info().currsize == 0
