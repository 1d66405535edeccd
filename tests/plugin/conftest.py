"""The plugin's pytester tests: inner projects from examples/, run in a subprocess (see inner_project.py)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

import pytest
from filelock import FileLock
from inner_project import Inner

from pytest_dashtam.backends import get_backend
from pytest_dashtam.backends.base import BackendOptions
from pytest_dashtam.guard import active_guard

# The inner projects are run by the tests here, never collected by the outer run.
collect_ignore = ["examples"]


def suspended_guard() -> contextlib.AbstractContextManager[None]:
    """The outer run's guard lifted for a session fixture (set up before tests/conftest.py's autouse one)."""
    guard = active_guard()
    return guard.suspended() if guard is not None else contextlib.nullcontext()


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(admin PostgreSQL URL, Redis URL) for the inner runs: the CI's/user's servers if named, else our own."""
    postgres_url, redis_url = os.environ.get("DASHTAM_POSTGRES_URL"), os.environ.get("DASHTAM_REDIS_URL")
    if postgres_url and redis_url:
        yield postgres_url, redis_url
        return
    root = tmp_path_factory.mktemp("inner-stack")
    backend = get_backend("local", BackendOptions(env="test", project_root=root, state_dir=root / "state"))
    with suspended_guard():
        stack = backend.start()
    try:
        yield stack.postgres_url, stack.redis_url
    finally:
        with suspended_guard():
            backend.stop()


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, servers: tuple[str, str]) -> Iterator[Inner]:
    """An inner project on the session's servers, alone on them while it runs."""
    for key in list(os.environ):
        if key.startswith(("DASHTAM_", "PYTEST_XDIST")):
            monkeypatch.delenv(key)
    postgres_url, redis_url = servers
    monkeypatch.setenv("DASHTAM_BACKEND", "external")
    monkeypatch.setenv("DASHTAM_POSTGRES_URL", postgres_url)
    monkeypatch.setenv("DASHTAM_REDIS_URL", redis_url)
    with FileLock(os.path.join(tempfile.gettempdir(), "pytest-dashtam-plugin-tests.lock")):
        yield Inner(pytester, monkeypatch, postgres_url, redis_url)
