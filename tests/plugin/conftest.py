"""The plugin's pytester tests: inner projects from examples/, run in a subprocess (see inner_project.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from inner_project import Inner
from selftest import Servers, suspended_guard

# The inner projects are run by the tests here, never collected by the outer run.
collect_ignore = ["examples"]


@pytest.fixture
def inner(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
    servers: Servers,
) -> Iterator[Inner]:
    """An inner project on the session's servers, under a test database name and a temp dir of its own."""
    for key in list(os.environ):
        if key.startswith(("DASHTAM_", "PYTEST_XDIST")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DASHTAM_BACKEND", "external")
    monkeypatch.setenv("DASHTAM_POSTGRES_URL", servers.postgres_url)
    monkeypatch.setenv("DASHTAM_REDIS_URL", servers.redis_url)
    # tempfile.gettempdir() of the inner run: nothing it leaves there meets another run's.
    monkeypatch.setenv("TMPDIR", str(tmp_path_factory.mktemp("tmp")))
    project = Inner(pytester, monkeypatch, servers.postgres_url, servers.redis_url)
    try:
        yield project
    finally:
        with suspended_guard():
            project.cleanup()
