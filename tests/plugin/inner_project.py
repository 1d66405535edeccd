"""Inner pytest projects for the plugin's pytester tests: copied from examples/, run in a subprocess.

The inner runs use the external backend, pointed at the servers the outer session provides (conftest.py's
`servers`): the ones named in DASHTAM_POSTGRES_URL / DASHTAM_REDIS_URL when set, else a private stack the
local backend starts for the session. They share one test database name and Redis indexes 9-10, so they
take a file lock: two inner runs at once (an outer `pytest -n 2` on shared servers) would drop each
other's database.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

EXAMPLES = Path(__file__).parent / "examples"
INNER_DB = "dashtam_test_plugin"
INNER_INDEX = 9


@dataclass
class Inner:
    """One inner pytest project and ways to run it and look at the servers around it."""

    pytester: pytest.Pytester
    monkeypatch: pytest.MonkeyPatch
    postgres_url: str
    redis_url: str

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
    @property
    def postgres_port(self) -> int:
        return urlsplit(self.postgres_url).port or 5432

    @property
    def redis_port(self) -> int:
        return urlsplit(self.redis_url).port or 6379

    def admin(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.postgres_url, autocommit=True)

    def test_db(self, name: str) -> psycopg.Connection[tuple[Any, ...]]:
        """A connection to database `name` on the same server."""
        return psycopg.connect(self.postgres_url, dbname=name, autocommit=True)

    def databases(self) -> set[str]:
        with self.admin() as conn:
            return {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}

    def redis_databases(self) -> int:
        """How many logical databases the Redis server has (CONFIG GET databases)."""
        return int(str(self.redis(0).config_get("databases")["databases"]))

    def redis(self, index: int) -> redis.Redis:
        return redis.Redis.from_url(f"{self.redis_url.rstrip('/')}/{index}", decode_responses=True)
