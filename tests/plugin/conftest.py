"""The plugin's pytester tests: inner projects from examples/, run in a subprocess (see inner_project.py)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
from filelock import FileLock
from inner_project import POSTGRES_URL, REDIS_URL, Inner

pytest_plugins = ["pytester"]
# The inner projects are run by the tests here, never collected by the outer run.
collect_ignore = ["examples"]


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Iterator[Inner]:
    """An inner project on the machine's servers, alone on them while it runs."""
    for key in list(os.environ):
        if key.startswith("DASHTAM_") or key.startswith("PYTEST_XDIST"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DASHTAM_BACKEND", "external")
    monkeypatch.setenv("DASHTAM_POSTGRES_URL", POSTGRES_URL)
    monkeypatch.setenv("DASHTAM_REDIS_URL", REDIS_URL)
    with FileLock(os.path.join(tempfile.gettempdir(), "pytest-dashtam-plugin-tests.lock")):
        yield Inner(pytester, monkeypatch)
