"""Inner pytest projects for the plugin's pytester tests: copied from examples/, run in a subprocess.

The inner runs use the external backend on this machine's servers (or the servers CI names in
DASHTAM_POSTGRES_URL / DASHTAM_REDIS_URL). They share one test database name and Redis indexes 9-10, so
they take a file lock: two inner runs at once (an outer `pytest -n 2`) would drop each other's database.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

EXAMPLES = Path(__file__).parent / "examples"
POSTGRES_URL = os.environ.get("DASHTAM_POSTGRES_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = os.environ.get("DASHTAM_REDIS_URL") or "redis://127.0.0.1:6379"
INNER_DB = "dashtam_test_plugin"
INNER_INDEX = 9


@dataclass
class Inner:
    """One inner pytest project and ways to run it and look at the servers around it."""

    pytester: pytest.Pytester
    monkeypatch: pytest.MonkeyPatch

    def copy(self, name: str = "basic") -> Path:
        shutil.copytree(EXAMPLES / name, self.pytester.path, dirs_exist_ok=True)
        return self.pytester.path

    def env_file(self, **values: str) -> None:
        """Rewrite the inner .env.test with these variables changed."""
        path = self.pytester.path / ".env.test"
        lines = [line for line in path.read_text().splitlines() if line.split("=", 1)[0] not in values]
        lines += [f"{k}={v}" for k, v in values.items()]
        path.write_text("\n".join(lines) + "\n")

    def ini(self, **values: str) -> None:
        path = self.pytester.path / "pytest.ini"
        path.write_text(path.read_text() + "".join(f"{k} = {v}\n" for k, v in values.items()))

    def run(self, *args: str) -> pytest.RunResult:
        return self.pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=240)

    # --- the servers, seen from outside the inner run ---
    def admin(self) -> psycopg.Connection:
        return psycopg.connect(POSTGRES_URL, autocommit=True)

    def databases(self) -> set[str]:
        with self.admin() as conn:
            return {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}

    def redis_databases(self) -> int:
        """How many logical databases the Redis server has (CONFIG GET databases)."""
        return int(str(self.redis(0).config_get("databases")["databases"]))

    def test_db(self, name: str) -> psycopg.Connection[tuple[Any, ...]]:
        """A connection to database `name` on the same server."""
        return psycopg.connect(POSTGRES_URL.rsplit("/", 1)[0] + "/" + name, autocommit=True)

    def redis(self, index: int) -> redis.Redis:
        return redis.Redis.from_url(f"{REDIS_URL}/{index}", decode_responses=True)
