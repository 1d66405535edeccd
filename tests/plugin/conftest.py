"""The plugin's pytester tests: inner projects from examples/, run in a subprocess (see inner_project.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from foreign import Foreign, foreign_data, unique_name
from inner_project import Inner, inner_environment
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
    for key, value in inner_environment(
        servers.postgres_url, servers.redis_url, tmp_path_factory.mktemp("tmp")
    ).items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    project = Inner(pytester, monkeypatch, servers.postgres_url, servers.redis_url)
    try:
        yield project
    finally:
        with suspended_guard():
            project.cleanup()


@pytest.fixture
def planted(inner: Inner) -> Iterator[Foreign]:
    """Someone else's database (with rows) and Redis index on the servers the inner run uses: the tests
    compare their checksum before and after."""
    with foreign_data(inner.postgres_url, inner.redis_url) as foreign:
        foreign.plant_database(unique_name("foreign"))
        foreign.plant_redis(foreign.free_index(1))
        yield foreign
