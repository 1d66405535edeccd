"""examples/minimal run the way its README says: `pytest` in its own folder, on the local backend and on compose.

The example is an ordinary FastAPI project that uses the plugin through its pyproject's dashtam_* keys and
its .env.test alone (no conftest). Each test copies it, runs its suite in a subprocess with none of this
run's DASHTAM_* settings, and checks that every test passed and that nothing of the run is left: no server
process of the local stack (nor any process that inherited the run's environment), no container, volume or
network of its compose project.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
from inner_project import INNER_ADDOPTS, run_apart
from selftest import compose_images, docker_test

EXAMPLE = Path(__file__).parents[2] / "examples" / "minimal"
# The example's tests: tests/test_bookmarks.py and tests/test_isolation.py.
TESTS = 8
# `dashtam: backend=local (from DASHTAM_BACKEND): PostgreSQL 15.2 at postgresql://...:N/postgres, Redis 7.0 at redis://...:M`
_SERVERS = re.compile(r"^dashtam: backend=(\w+) \(from [^)]*\): PostgreSQL .* at (\S+), Redis \S+ at ([^\s;,]+)")


def copy_example(tmp_path: Path) -> Path:
    root = tmp_path / "minimal"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".dashtam", "__pycache__", ".pytest_cache"))
    return root


def environ(tmp_path: Path, **values: str) -> dict[str, str | None]:
    """Changes to the outer run's environment (run_apart's): none of its DASHTAM_* settings and xdist's
    variables, a TMPDIR of the test's own, plus `values`."""
    env: dict[str, str | None] = {
        key: None
        for key in os.environ
        if key.startswith(("DASHTAM_", "PYTEST_XDIST", "PYTEST_CURRENT_TEST"))
        # The example relies on the plugin's entry point, as a user's project does; bytecode caches are kept
        # as in a user's run (see inner_project.inner_environment).
        or key in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTHONDONTWRITEBYTECODE")
    }
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    env["TMPDIR"] = str(tmpdir)
    env["PYTEST_ADDOPTS"] = INNER_ADDOPTS
    env.update(values)
    return env


def run_example(root: Path, env: Mapping[str, str | None]) -> pytest.RunResult:
    """The example's suite in a subprocess from its own folder; a teardown warning fails it. -v: the header
    lists every dashtam option with where its value came from."""
    return run_apart(root, env, "-v", "-W", "error::pytest_dashtam.plugin.DashtamTeardownWarning")


def assert_passed(result: pytest.RunResult, backend: str) -> tuple[str, str]:
    """Every test passed on `backend`; the (PostgreSQL, Redis) URLs the run's report names."""
    result.assert_outcomes(passed=TESTS)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["dashtam: database bookmarks_test* from template bookmarks_test_tpl_*, redis index *"])
    found = [m for m in map(_SERVERS.match, result.stdout.lines) if m is not None]
    assert found, result.stdout.str()
    assert {m[1] for m in found} == {backend}
    return found[-1][2], found[-1][3]


def answers(url: str) -> bool:
    """Something accepts connections on the host and port of `url`."""
    parts = urlsplit(url)
    assert parts.hostname is not None, url
    assert parts.port is not None, url
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return True
    except OSError:
        return False


def heirs(tmpdir: Path) -> list[psutil.Process]:
    """Live processes whose environment came from the run (its TMPDIR): servers, janitors, migrations."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("TMPDIR") == str(tmpdir):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_local_backend(tmp_path: Path) -> None:
    root = copy_example(tmp_path)
    env = environ(tmp_path, DASHTAM_BACKEND="local")
    result = run_example(root, env)
    postgres_url, redis_url = assert_passed(result, "local")
    # The run stopped the servers it started, and nothing it spawned outlives it.
    assert not answers(postgres_url), postgres_url
    assert not answers(redis_url), redis_url
    deadline = time.monotonic() + 5
    while (left := heirs(Path(str(env["TMPDIR"])))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == []
    assert list((root / ".dashtam").glob("*/stack-*.json")) == []


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=120, cwd="/")


@pytest.fixture
def compose_project() -> Iterator[str]:
    """A compose project name of this test's own; taken down afterwards whatever the run left."""
    name = f"bookmarks-it-{uuid.uuid4().hex[:8]}"
    yield name
    docker("compose", "--project-name", name, "down", "--volumes", "--remove-orphans", "--timeout", "1")


@docker_test
def test_compose_backend(tmp_path: Path, compose_project: str) -> None:
    root = copy_example(tmp_path)
    images = compose_images()
    env = environ(tmp_path, DASHTAM_BACKEND="compose", DASHTAM_COMPOSE_PROJECT=compose_project, **images)
    result = run_example(root, env)
    assert_passed(result, "compose")
    result.stdout.fnmatch_lines([f"dashtam: *compose_project={compose_project} (from DASHTAM_COMPOSE_PROJECT)"])
    label = f"label=com.docker.compose.project={compose_project}"
    # The run started the project, so it took it down: containers, the pgdata volume and the network.
    assert docker("ps", "--all", "--quiet", "--filter", label).stdout.split() == []
    assert docker("volume", "ls", "--quiet", "--filter", label).stdout.split() == []
    assert docker("network", "ls", "--quiet", "--filter", label).stdout.split() == []
