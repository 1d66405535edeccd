"""dashtam-env reads an env file's variables in any case, as the plugin and pydantic-settings do: a project
whose settings have lower-case fields writes `database_url=` in its env files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from pytest_dashtam.cli.envs import Env


def test_values_are_read_in_any_case() -> None:
    env = Env(
        name="dev",
        root=Path("."),
        env_file=Path(".env.dev"),
        values={"database_url": "postgresql+asyncpg://u@h/app", "API_BASE_URL": "https://localhost:8000"},
        config=cast(Any, None),
    )
    assert env.value("DATABASE_URL") == "postgresql+asyncpg://u@h/app"
    assert env.value("API_BASE_URL") == "https://localhost:8000"
    assert env.value("REDIS_URL", "redis://default") == "redis://default"
