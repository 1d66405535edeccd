"""A project without Redis needs none: no Redis server is started or leased, nothing is exported for it, the
Redis fixtures fail with one line saying why, and code that reaches for a Redis anyway is refused.

The `noredis` inner project (tests/plugin/examples/noredis): FastAPI + async SQLAlchemy + Alembic, settings
and engine at import time, an env file with DATABASE_URL alone. Run on the local backend (no redis-server
or valkey-server process is started) and on the external backend with only a PostgreSQL URL; the shared
servers' foreign data (a database with rows, a Redis index with keys) is unchanged.
"""

from __future__ import annotations

import subprocess
import uuid

import pytest
from foreign import Foreign
from inner_project import Inner
from selftest import compose_containers, compose_images, docker_test


@pytest.fixture
def noredis(inner: Inner) -> Inner:
    inner.copy("noredis")
    inner.monkeypatch.delenv("DASHTAM_REDIS_URL")  # only a PostgreSQL is given
    return inner


@pytest.mark.parametrize("backend", ["external", "local"])
def test_a_project_without_redis_runs_without_one(noredis: Inner, planted: Foreign, backend: str) -> None:
    before = planted.checksum()
    result = noredis.run("tests/test_notes.py", "-v", f"--dashtam-backend={backend}")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["dashtam: backend=* no Redis (the project uses none: dashtam_redis)*"])
    out = result.stdout.str()
    assert "redis index" not in out
    assert planted.checksum() == before


def test_the_redis_fixtures_say_why_there_is_none(noredis: Inner, planted: Foreign) -> None:
    before = planted.checksum()
    result = noredis.run("tests/test_redis_fixture.py")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*pytest-dashtam: this run has no Redis server: the project names none*"])
    assert "Traceback" not in result.stdout.str()
    assert planted.checksum() == before


def test_code_that_reaches_for_a_redis_anyway_is_refused(noredis: Inner, planted: Foreign) -> None:
    before = planted.checksum()
    result = noredis.run("tests/test_reaches_redis.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*this run has no Redis server*"])
    assert planted.checksum() == before


def test_dashtam_redis_true_gives_a_redis_to_a_project_whose_env_file_names_none(noredis: Inner) -> None:
    noredis.monkeypatch.setenv("DASHTAM_REDIS_URL", noredis.redis_url)
    result = noredis.run("tests/test_redis_fixture.py", "-o", "dashtam_redis=true")
    result.assert_outcomes(passed=1)


def test_dashtam_redis_false_with_a_redis_dependency_is_one_line(noredis: Inner) -> None:
    result = noredis.run("-o", "dashtam_redis=false", "-o", "dashtam_redis_dependency=notes.db:get_session")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*dashtam_redis=false*names a Redis; drop one of them*"])


@docker_test
def test_on_compose_a_postgres_alone_is_the_stack(noredis: Inner, planted: Foreign) -> None:
    project = f"noredis-{uuid.uuid4().hex[:8]}"
    for variable, image in compose_images().items():
        noredis.monkeypatch.setenv(variable, image)
    noredis.monkeypatch.delenv("DASHTAM_POSTGRES_URL")
    before = planted.checksum()
    try:
        result = noredis.run(
            "tests/test_notes.py",
            "--dashtam-backend=compose",
            "--dashtam-compose-file=docker-compose.test.yml",
            f"--dashtam-compose-project={project}",
        )
        result.assert_outcomes(passed=3)
        result.stdout.fnmatch_lines(["dashtam: backend=compose * no Redis (the project uses none: dashtam_redis)*"])
        ps = subprocess.run(
            ["docker", "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={project}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert ps.stdout.strip() == ""  # started by the run, so taken down by it
    finally:
        subprocess.run(
            ["docker", "compose", "--project-name", project, "down", "--volumes", "--timeout", "1"],
            capture_output=True,
            timeout=120,
            cwd="/",
            check=False,
        )
    assert planted.checksum() == before


@docker_test
def test_a_project_that_wants_redis_from_a_compose_file_without_it_is_told_so(noredis: Inner) -> None:
    project = f"noredis-{uuid.uuid4().hex[:8]}"
    for variable, image in compose_images().items():
        noredis.monkeypatch.setenv(variable, image)
    noredis.monkeypatch.delenv("DASHTAM_POSTGRES_URL")
    result = noredis.run(
        "tests/test_notes.py",
        "-o",
        "dashtam_redis=true",
        "--dashtam-backend=compose",
        "--dashtam-compose-file=docker-compose.test.yml",
        f"--dashtam-compose-project={project}",
    )
    out = result.stdout.str()
    assert f"compose project {project}: the compose files define no service 'redis'" in out, out
    assert "Traceback" not in out
    assert compose_containers(project) == []  # nothing was started
