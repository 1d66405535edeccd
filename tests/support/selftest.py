"""What this repository's self-tests share: the servers they run against and the outer run's guard.

The outer run is itself a pytest-dashtam run whose connection guard refuses connections outside its own
stack (tests/conftest.py lifts it for the plugin's own tests). Session fixtures that start or plant servers
run before that autouse fixture, so they lift it themselves with `suspended_guard()`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

import psycopg
import pytest

from pytest_dashtam.backends import get_backend
from pytest_dashtam.backends.base import BackendOptions
from pytest_dashtam.backends.compose import docker_available
from pytest_dashtam.guard import active_guard

# Databases every machine of this kind has (someone's data), which no test may touch. A private stack gets
# them too, so that the checks that they stay untouched have something to look at wherever the tests run.
MACHINE_DATABASES = ("test", "root", "postgres")


class Servers(NamedTuple):
    """An admin PostgreSQL URL and a Redis URL (no index) the self-tests may create their own things on."""

    postgres_url: str
    redis_url: str
    private: bool  # a stack this session started (nobody else on it), not servers named by the environment
    # The same PostgreSQL over its Unix socket (`postgresql://user@/postgres?host=DIR&port=N`), when known.
    postgres_socket_url: str | None = None


def suspended_guard() -> contextlib.AbstractContextManager[None]:
    """The outer run's guard lifted for a session fixture (set up before tests/conftest.py's autouse one)."""
    guard = active_guard()
    return guard.suspended() if guard is not None else contextlib.nullcontext()


def named_servers() -> Servers | None:
    """The servers DASHTAM_POSTGRES_URL / DASHTAM_REDIS_URL name (CI's or yours), if both are given."""
    postgres_url, redis_url = os.environ.get("DASHTAM_POSTGRES_URL"), os.environ.get("DASHTAM_REDIS_URL")
    if postgres_url and redis_url:
        return Servers(
            postgres_url, redis_url.rstrip("/"), private=False, postgres_socket_url=_debian_socket(postgres_url)
        )
    return None


def _debian_socket(postgres_url: str) -> str | None:
    """Debian's packaged server listens on /var/run/postgresql too: the socket form of a URL naming it."""
    parts = urlsplit(postgres_url)
    port = parts.port or 5432
    if parts.hostname not in ("127.0.0.1", "localhost") or not Path(f"/var/run/postgresql/.s.PGSQL.{port}").exists():
        return None
    return f"postgresql://{parts.username or 'postgres'}@/postgres?host=/var/run/postgresql&port={port}"


@contextlib.contextmanager
def private_servers(root: Path) -> Iterator[Servers]:
    """A local-backend stack of this session's own under `root`, with the machine's databases planted on it."""
    backend = get_backend("local", BackendOptions(env="test", project_root=root, state_dir=root / "state"))
    with suspended_guard():
        stack = backend.start()
    try:
        local = stack.local
        socket_url = None
        if local is not None:
            user = urlsplit(stack.postgres_url).username or "postgres"
            socket_url = f"postgresql://{user}@/postgres?host={local.socket_dir}&port={local.postgres_port}"
        servers = Servers(stack.postgres_url, stack.redis_url.rstrip("/"), private=True, postgres_socket_url=socket_url)
        with suspended_guard():
            _plant_machine_databases(servers.postgres_url)
        yield servers
    finally:
        with suspended_guard():
            backend.stop()


def _plant_machine_databases(postgres_url: str) -> None:
    """`test` and `root` as the machine has them: unstamped databases holding someone's rows."""
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        existing = {r[0] for r in admin.execute("SELECT datname FROM pg_database").fetchall()}
        for name in MACHINE_DATABASES:
            if name not in existing:
                admin.execute(f'CREATE DATABASE "{name}"')
    for name in MACHINE_DATABASES:
        if name == "postgres" or name in existing:
            continue
        with psycopg.connect(postgres_url, dbname=name, autocommit=True) as conn:
            conn.execute("CREATE TABLE someones_data (v text)")
            conn.execute("INSERT INTO someones_data VALUES ('someone else''s row')")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """A child the test started, gone: SIGTERM, then SIGKILL if it outlives `timeout`."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# The stand-in images of the offline machines (../shared/docker-offline builds them; no registry is reachable).
STAND_IN_IMAGES = (("DASHTAM_POSTGRES_IMAGE", "dashtam-ci/postgres:15"), ("DASHTAM_REDIS_IMAGE", "dashtam-ci/redis:7"))


def compose_images() -> dict[str, str]:
    """The image variables an inner compose run gets: the outer run's, else a stand-in this engine has, else
    none (the compose file's own image, pulled)."""
    images: dict[str, str] = {}
    for variable, stand_in in STAND_IN_IMAGES:
        if os.environ.get(variable):
            images[variable] = os.environ[variable]
            continue
        found = subprocess.run(["docker", "image", "inspect", stand_in], capture_output=True, timeout=60, check=False)
        if found.returncode == 0:
            images[variable] = stand_in
    return images


def compose_containers(project: str, *, running_only: bool = False) -> list[str]:
    """The ids of compose project `project`'s containers (all of them, or the running ones): what a run left."""
    args = ["docker", "ps", "--quiet", "--filter", f"label=com.docker.compose.project={project}"]
    found = subprocess.run(
        args if running_only else [*args, "--all"], capture_output=True, text=True, timeout=60, check=False
    )
    return found.stdout.split()


F = TypeVar("F", bound=Callable[..., Any])

# Why a docker test skips on a machine without an engine (CI sets DASHTAM_REQUIRE_DOCKER=1: there it fails).
DOCKER_MISSING = (
    "no Docker engine with compose v2 answers (docker compose version): install Docker with the compose "
    "plugin and start it, or point DOCKER_HOST at one"
)
_docker_answers = functools.cache(docker_available)


def needs_docker() -> list[pytest.MarkDecorator]:
    """The marks of a test that needs a real Docker engine with compose (a module's `pytestmark`): the
    `docker` marker, and a skip saying why where no engine answers (asked once per process)."""
    return [pytest.mark.docker, pytest.mark.skipif(not _docker_answers(), reason=DOCKER_MISSING)]


def docker_test(test: F) -> F:
    """`needs_docker()` on one test function."""
    for mark in needs_docker():
        test = mark(test)
    return test
