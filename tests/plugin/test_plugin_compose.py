"""Issue 8, case 5: a compose file that sets POSTGRES_DB, as the official image documents, just works.

The server is one the run itself creates from nothing (its own compose project), so what the image made
there is the plugin's to use and drop; the shared servers the env file names are never reached.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from foreign import Foreign, foreign_data
from selftest import compose_containers, compose_images, needs_docker
from todo_project import Todo

ADMIN_URL = os.environ.get("DASHTAM_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DASHTAM_TEST_REDIS_URL", "redis://127.0.0.1:6379")

pytestmark = needs_docker()


@pytest.fixture
def shared() -> Iterator[Foreign]:
    with foreign_data(ADMIN_URL, REDIS_URL) as foreign:
        yield foreign


@pytest.fixture
def compose_project() -> Iterator[str]:
    name = f"todo-it-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(
        ["docker", "compose", "--project-name", name, "down", "--volumes", "--remove-orphans", "--timeout", "1"],
        capture_output=True,
        timeout=120,
        cwd="/",
    )


def test_postgres_db_in_the_compose_file(tmp_path: Path, shared: Foreign, compose_project: str) -> None:
    index = shared.free_index(1)
    todo = Todo.make(tmp_path / "c", ADMIN_URL, REDIS_URL, index)
    todo.write_env(TODO_DB=todo.database)  # the compose file's POSTGRES_DB: the env file's test database
    todo.ini(dashtam_compose_files="docker-compose.test.yml", dashtam_compose_project=compose_project)
    shared.plant_database(todo.database)  # the same name on the shared server the env file names
    shared.plant_redis(index)
    before = shared.checksum()
    images = compose_images()
    result = todo.run("tests/test_todo.py", "tests/test_escape.py", backend="compose", **images)
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines([f"dashtam: database {todo.database} from template {todo.database}_tpl_*"])
    assert "refusing to drop" not in result.stdout.str()
    assert shared.checksum() == before
    # The run started the project, so it took it down.
    assert compose_containers(compose_project) == []


def test_a_killed_run_s_stack_of_an_ordinary_compose_file_is_reaped(
    tmp_path: Path, shared: Foreign, compose_project: str
) -> None:
    """The todo compose file carries no owner labels (as projects write them); the run labels its stack
    itself, so after a SIGKILL the next run takes the dead run's stack down instead of attaching to it as
    a kept one and leaving it running."""
    index = shared.free_index(1)
    todo = Todo.make(tmp_path / "k", ADMIN_URL, REDIS_URL, index)
    todo.write_env(TODO_DB=todo.database)
    todo.ini(dashtam_compose_files="docker-compose.test.yml", dashtam_compose_project=compose_project)
    images = compose_images()
    before = shared.checksum()
    killed = todo.start("tests/test_slow.py", backend="compose", **images)
    try:
        deadline = time.monotonic() + 180
        while not compose_containers(compose_project, running_only=True) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert compose_containers(compose_project, running_only=True), "the killed run's stack never came up"
        time.sleep(2)  # past `up`: the tests are running
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.communicate(timeout=60)
    assert compose_containers(compose_project, running_only=True)  # left behind by the SIGKILL
    result = todo.run("tests/test_todo.py", backend="compose", **images)
    result.assert_outcomes(passed=5)
    assert "attached to" not in result.stdout.str()
    assert compose_containers(compose_project) == []  # the dead run's stack reaped, this run's stopped
    assert shared.checksum() == before
