"""What this repository's own test run needs beyond the plugin (which is loaded by its entry point)."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from selftest import Servers, named_servers, private_servers
from tally import install

from pytest_dashtam.guard import active_guard

APP_TESTS = Path(__file__).parent / "app"


def pytest_configure(config: pytest.Config) -> None:
    """The reliability suite's counts (tests/support/tally.py), printed at the end of any run that gathered
    some: under xdist by the controller alone, which every worker's reports reach."""
    install(config)


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The PostgreSQL and Redis the integration and plugin tests work on: the ones DASHTAM_POSTGRES_URL and
    DASHTAM_REDIS_URL name (CI's, yours), else a private local-backend stack started for this session (one per
    xdist worker: nothing else on the machine meets it)."""
    named = named_servers()
    if named is not None:
        yield named
        return
    with private_servers(tmp_path_factory.mktemp("servers")) as private:
        yield private


@pytest.fixture(autouse=True)
def _reach_other_servers_on_purpose(request: pytest.FixtureRequest) -> Iterator[None]:
    """The plugin's own tests talk to the machine's servers, scratch databases and private stacks on purpose
    (that is what they test), so the connection guard of this outer run lets them through, as
    pytest-django's `django_db_blocker.unblock()` would. The app's tests (tests/app) stay guarded, as any
    user's tests are."""
    guard = active_guard()
    if guard is None or Path(str(request.node.path)).is_relative_to(APP_TESTS):
        yield
        return
    with guard.suspended():
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """In CI the Docker engine is part of the machine: a docker test that skips there is a failure.

    Locally the compose tests skip with a reason when no engine answers; CI sets DASHTAM_REQUIRE_DOCKER=1
    after starting one, so a broken engine cannot hide behind a skip.
    """
    report = yield
    if (
        report.skipped
        and os.environ.get("DASHTAM_REQUIRE_DOCKER") == "1"
        and item.get_closest_marker("docker") is not None
    ):
        report.outcome = "failed"
        report.longrepr = f"DASHTAM_REQUIRE_DOCKER=1 but this docker test skipped: {report.longrepr}"
    return report
