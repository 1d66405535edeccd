"""The session as small overridable fixtures (issue 9): a user's conftest overrides one step, the plugin
keeps the rest; the gc.freeze option; teardown problems as warnings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from foreign import foreign_data
from todo_project import Todo

ADMIN_URL = os.environ.get("DASHTAM_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DASHTAM_TEST_REDIS_URL", "redis://127.0.0.1:6379")


@pytest.fixture
def todo(tmp_path: Path) -> Iterator[Todo]:
    with foreign_data(ADMIN_URL, REDIS_URL) as shared:
        yield Todo.make(tmp_path / "a", ADMIN_URL, REDIS_URL, shared.free_index(1))


def test_a_conftest_overrides_the_setup_and_extends_the_dependency_overrides(todo: Todo) -> None:
    # Without the dependency options the plugin overrides nothing; with them, the user's dict adds to them.
    todo.ini(dashtam_session_dependency="todo.db:get_session", dashtam_redis_dependency="todo.cache:get_redis")
    result = todo.run("tests/overrides", "-p", "no:randomly")
    result.assert_outcomes(passed=3)


def test_gc_freeze_can_be_turned_off(todo: Todo) -> None:
    probe = todo.path / "tests" / "test_gc_probe.py"
    probe.write_text("import gc\n\n\ndef test_probe(dashtam_stack):\n    print('FROZEN', gc.get_freeze_count())\n")
    on = todo.run("tests/test_gc_probe.py", "-s")
    on.assert_outcomes(passed=1)
    assert "FROZEN 0" not in on.stdout.str()
    off = todo.run("tests/test_gc_probe.py", "-s", "--dashtam-gc-freeze=off")
    off.assert_outcomes(passed=1)
    off.stdout.fnmatch_lines(["*FROZEN 0*"])


def test_a_teardown_problem_is_a_warning_that_w_error_can_fail(todo: Todo, tmp_path: Path) -> None:
    """A test that leaves a connection to the test database open and unkillable would block the DROP; here the
    DROP is made to fail by a test that renames the run's database away (the plugin's own refusal)."""
    probe = todo.path / "tests" / "test_breaks_teardown.py"
    probe.write_text(
        "from sqlalchemy import text\n"
        "from sqlalchemy.ext.asyncio import create_async_engine\n\n\n"
        "async def test_unstamp(dashtam_db_setup, dashtam_guard):\n"
        "    url = dashtam_db_setup.database_url.rsplit('/', 1)[0] + '/postgres'\n"
        "    dashtam_guard.allow_database('postgres')\n"
        "    engine = create_async_engine(url, isolation_level='AUTOCOMMIT')\n"
        "    async with engine.connect() as conn:\n"
        "        await conn.execute(text(f\"COMMENT ON DATABASE {dashtam_db_setup.database} IS 'mine now'\"))\n"
        "    await engine.dispose()\n"
    )
    result = todo.run("tests/test_breaks_teardown.py", "-W", "default")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*DashtamTeardownWarning: pytest-dashtam teardown: could not drop*refusing to drop*"])
    strict = todo.run("tests/test_breaks_teardown.py", "-W", "error::pytest_dashtam.plugin.DashtamTeardownWarning")
    assert strict.ret != 0
    # The database the test took over is left, as the plugin never drops what it does not own: drop it here.
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        for (name,) in admin.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (todo.database,)
        ).fetchall():
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
