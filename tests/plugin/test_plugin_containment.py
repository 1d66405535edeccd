"""Containment and ownership on the setups ordinary projects have (issue 8), against the machine's shared servers.

Each test plants someone else's data on the shared PostgreSQL and Redis (a database with the project's own
test database name, holding a table the project's migration would also create, and a non-empty Redis
index that the project's env file names), runs the `todo` project as a user would, and compares a
checksum of that data, and of the machine's own databases, before and after.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tally
from foreign import Foreign, changed_bytes, databases_like, foreign_data
from todo_project import Todo, finish

ADMIN_URL = os.environ.get("DASHTAM_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DASHTAM_TEST_REDIS_URL", "redis://127.0.0.1:6379")
# Pairs of concurrent runs per combination: 1 by default (every `make test`: each combination starts its second
# run at its own moment, so "together" and "mid-run" are both tried); the full acceptance count is
# DASHTAM_CONCURRENCY_TRIALS=5 (README, Development), which spreads every combination's starts over 0-1.6 s.
TRIALS = int(os.environ.get("DASHTAM_CONCURRENCY_TRIALS", "1"))
APP_TESTS = ("tests/test_todo.py", "tests/test_escape.py")


@pytest.fixture
def shared() -> Iterator[Foreign]:
    with foreign_data(ADMIN_URL, REDIS_URL) as foreign:
        yield foreign


@pytest.fixture
def todo(tmp_path: Path, shared: Foreign) -> Iterator[Todo]:
    """The todo project, its env file naming the shared servers, where someone else's data sits under the
    very names it asks for."""
    index = shared.free_index(1)
    project = Todo.make(tmp_path / "a", ADMIN_URL, REDIS_URL, index)
    shared.plant_database(project.database)
    shared.plant_redis(index)
    yield project
    _drop_family(project.database, keep=shared.databases)


def _drop_family(base: str, keep: list[str]) -> None:
    """What a failed test's runs may have left of their own (stamped by the plugin; never the foreign data)."""
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) "
            "AND shobj_description(oid, 'pg_database') LIKE 'pytest-dashtam:%%'",
            (base,),
        ).fetchall()
        for (name,) in rows:
            if name not in keep:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _no_leftovers(todo: Todo) -> None:
    """Only the foreign database and the plugin's template cache (kept on purpose) have the project's name."""
    names = databases_like(ADMIN_URL, todo.database)
    assert {n for n in names if not n.startswith(f"{todo.database}_tpl_")} == {todo.database}


@pytest.mark.parametrize("overrides", [False, True], ids=["no-dependency-options", "dependency-options"])
def test_import_time_engine_and_client_reach_only_the_run_s_own_stack(
    todo: Todo, shared: Foreign, overrides: bool
) -> None:
    """Case 1: the env file names the shared server, the run has its own local stack: nothing lands there."""
    if overrides:
        todo.ini(dashtam_session_dependency="todo.db:get_session", dashtam_redis_dependency="todo.cache:get_redis")
    before = shared.checksum()
    result = todo.run(*APP_TESTS, backend="local")
    result.assert_outcomes(passed=7)
    assert shared.checksum() == before
    _no_leftovers(todo)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_foreign_database_and_index_with_the_test_names_on_the_run_s_own_server(
    todo: Todo, shared: Foreign, workers: str
) -> None:
    """Cases 2, 4 and 6: the shared server is the run's server too. The foreign todo_..._test (with an
    `entries` table: an env.py migrating it would fail) and the foreign Redis index stay as they are; the
    run works on a name and an index of its own and says so."""
    before = shared.checksum()
    result = todo.run(*APP_TESTS, "-n", workers)
    result.assert_outcomes(passed=7)
    text = result.stdout.str()
    assert f"{todo.database} is held by a live run or is not the plugin's: using {todo.database}_2" in text
    assert f"Redis index {todo.redis_index} is held or not empty" in text
    assert shared.checksum() == before
    _no_leftovers(todo)


@pytest.mark.parametrize(("first", "second", "offset"), [("0", "0", 0.0), ("2", "2", 1.6), ("0", "2", 0.8)])
def test_two_runs_at_once_on_one_server(
    todo: Todo,
    shared: Foreign,
    tmp_path: Path,
    first: str,
    second: str,
    offset: float,
    record_property: Callable[[str, object], None],
) -> None:
    """Case 3: two checkouts of one project, started together or one mid-run, on one external server."""
    other = todo.copy(tmp_path / "b")
    before = shared.checksum()
    tally.record(record_property, concurrent_runs=2 * TRIALS)
    for trial in range(TRIALS):
        a = todo.start("tests/test_alone.py", "-n", first, TODO_RUN_MARK=f"a{trial}")
        # From "together" to "the second starts mid-run" (1.6 s in): the combination's own moment in a single
        # trial, spread over the whole range when there are more.
        time.sleep(1.6 * trial / (TRIALS - 1) if TRIALS > 1 else offset)
        b = other.start("tests/test_alone.py", "-n", second, TODO_RUN_MARK=f"b{trial}")
        for result in (finish(a), finish(b)):
            result.assert_outcomes(passed=4)
    after = shared.checksum()
    tally.record(record_property, checksums_compared=1, dev_bytes_changed=changed_bytes(before, after))
    assert after == before
    _no_leftovers(todo)


def test_a_killed_xdist_run_leaves_nothing_the_next_run_keeps(todo: Todo, shared: Foreign) -> None:
    """Case 8: the per-worker databases of a SIGKILLed `-n 2` run are reclaimed by the next run."""
    before = shared.checksum()
    process = todo.start("tests/test_slow.py", "-n", "2")
    deadline = time.monotonic() + 120
    family = f"{todo.database}_2_gw"
    while len([n for n in databases_like(ADMIN_URL, family)]) < 2:
        assert process.poll() is None, finish(process).stdout.str()
        assert time.monotonic() < deadline, "the run did not create its worker databases"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert len(databases_like(ADMIN_URL, family)) == 2
    result = todo.run(*APP_TESTS)
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines([f"*reclaimed 2 database(s) of dead runs*{family}*"])
    assert shared.checksum() == before
    _no_leftovers(todo)


def test_a_hostless_admin_url_follows_pghost_and_is_refused_before_connecting(todo: Todo, shared: Foreign) -> None:
    """Case 8 and 9: libpq would take PGHOST; the gate reads it the same way, before any connection."""
    before = shared.checksum()
    result = todo.run(
        *APP_TESTS,
        DASHTAM_POSTGRES_URL="postgresql://postgres@/postgres",
        PGHOST="10.255.255.1",
    )
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*pytest-dashtam:*10.255.255.1*PGHOST*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert shared.checksum() == before


def test_an_unknown_remote_host_is_refused_at_once(todo: Todo, shared: Foreign) -> None:
    before = shared.checksum()
    result = todo.run(
        *APP_TESTS,
        DASHTAM_POSTGRES_URL="postgresql://postgres@db.example.invalid:5432/postgres",
        DASHTAM_ALLOWED_HOSTS="db.example.invalid",
    )
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*pytest-dashtam:*db.example.invalid*"])
    assert shared.checksum() == before


def test_no_default_points_at_dashtam(todo: Todo, shared: Foreign) -> None:
    """Case 10: a project that names neither its app nor its settings gets one line naming the key."""
    path = todo.path / "pyproject.toml"
    path.write_text(
        "\n".join(
            line for line in path.read_text().splitlines() if not line.startswith(("dashtam_settings", "dashtam_app"))
        )
    )
    before = shared.checksum()
    result = todo.run("tests/test_todo.py", "-p", "no:randomly")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(["*the client fixture needs the project's ASGI app: set dashtam_app*"])
    result.stdout.fnmatch_lines(["*dashtam_settings needs the project's settings class*"])
    assert "dashtam.core" not in result.stdout.str()
    assert shared.checksum() == before
    _no_leftovers(todo)
