"""A user's conftest overriding the plugin's steps, the way pytest-django users override django_db_setup."""

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from todo.main import get_clock


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def dashtam_db_setup(dashtam_db_setup):
    """Seed this worker's fresh database once, after the plugin cloned it."""
    engine = create_async_engine(dashtam_db_setup.database_url)
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO entries (title) VALUES ('seeded')"))
    await engine.dispose()
    return dashtam_db_setup


@pytest.fixture
def dashtam_dependency_overrides(dashtam_dependency_overrides):
    """The plugin's overrides, plus one of our own."""
    return {**dashtam_dependency_overrides, get_clock: lambda: "2026-01-01T00:00:00+00:00"}
