"""The `todo` inner project (examples/todo): an ordinary FastAPI project, run as a user would run it.

Its settings, engine and Redis client are created at import time from lower-case settings fields, its
Alembic env.py reads the URL from those settings, and its env file names the shared server. Each test gets
its own copy with a unique test database name, so runs of it can go on at the same time (on purpose).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from foreign import unique_name
from inner_project import INNER_ADDOPTS

EXAMPLE = Path(__file__).parents[1] / "plugin" / "examples" / "todo"


@dataclass
class Todo:
    """One copy of the todo project whose env file names the shared servers."""

    path: Path
    database: str  # the env file's test database name (unique to the test)
    postgres_url: str  # the shared server's admin URL
    redis_url: str
    redis_index: int

    @classmethod
    def make(cls, root: Path, postgres_url: str, redis_url: str, redis_index: int, database: str = "") -> Todo:
        shutil.copytree(EXAMPLE, root, dirs_exist_ok=True)
        todo = cls(root, database or unique_name("todo"), postgres_url, redis_url, redis_index)
        todo.write_env()
        return todo

    def copy(self, root: Path) -> Todo:
        """The same project (same test database name) in another folder: a second checkout."""
        shutil.copytree(self.path, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".dashtam"))
        return Todo(root, self.database, self.postgres_url, self.redis_url, self.redis_index)

    @property
    def shared_db_url(self) -> str:
        pg = urlsplit(self.postgres_url)
        return f"postgresql+asyncpg://{pg.netloc}/{self.database}"

    @property
    def shared_redis_url(self) -> str:
        return f"{self.redis_url.rstrip('/')}/{self.redis_index}"

    def write_env(self, **extra: str) -> None:
        lines = [
            "environment=testing",
            "testing=true",
            f"database_url={self.shared_db_url}",
            f"redis_url={self.shared_redis_url}",
            *(f"{k}={v}" for k, v in extra.items()),
        ]
        (self.path / ".env.test").write_text("\n".join(lines) + "\n")

    def ini(self, **values: str) -> None:
        path = self.path / "pyproject.toml"
        text = path.read_text()
        text = text.replace(
            "[tool.pytest.ini_options]\n",
            "[tool.pytest.ini_options]\n" + "".join(f'{k} = "{v}"\n' for k, v in values.items()),
        )
        path.write_text(text)

    def environ(self, backend: str, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DASHTAM_", "PYTEST_XDIST", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST", "TODO_"))
            # Bytecode caches kept as in a user's run (see conftest.py's `inner`).
            and k != "PYTHONDONTWRITEBYTECODE"
        }
        env["DASHTAM_BACKEND"] = backend
        env["PYTEST_ADDOPTS"] = INNER_ADDOPTS
        if backend == "external":
            env["DASHTAM_POSTGRES_URL"] = self.postgres_url
            env["DASHTAM_REDIS_URL"] = self.redis_url
        env["TODO_SHARED_DB_URL"] = self.shared_db_url
        env["TODO_SHARED_REDIS_URL"] = self.shared_redis_url
        env.update(extra)
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args]

    def start(self, *args: str, backend: str = "external", **extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            cwd=self.path,
            env=self.environ(backend, **extra),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def run(self, *args: str, backend: str = "external", **extra: str) -> pytest.RunResult:
        return finish(self.start(*args, backend=backend, **extra))


def finish(process: subprocess.Popen[str], timeout: float = 300) -> pytest.RunResult:
    started = time.monotonic()
    out, err = process.communicate(timeout=timeout)
    print(out, err, sep="\n--- stderr ---\n")  # shown when the outer test fails
    return pytest.RunResult(process.returncode, out.splitlines(), err.splitlines(), time.monotonic() - started)
