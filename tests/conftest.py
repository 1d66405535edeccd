"""What this repository's own test run needs beyond the plugin (which is loaded by its entry point)."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest


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
