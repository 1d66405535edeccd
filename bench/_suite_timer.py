"""Inner-project pytest plugin for bench_suite.py: per-test setup/call/teardown durations and timestamps.

bench_suite.py copies this file into each generated project and loads it with `-p _suite_timer`, so the
same code measures pytest-dashtam and the peers. It writes one JSON file (path in $BENCH_OUT) at the end of
the session. Under xdist only the controller writes: the workers' reports reach it through
`pytest_runtest_logreport`, so the durations are the workers' own.

Stdlib only and no pytest import: the peers run it on another interpreter, as another user.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

_tests: dict[str, dict[str, float]] = {}
_marks: dict[str, Any] = {"first_call": None, "finished": []}


def pytest_runtest_call(item: Any) -> None:
    """Wall-clock start of the first test's body: everything before it is start-up."""
    if _marks["first_call"] is None:
        _marks["first_call"] = time.time()


def pytest_runtest_logreport(report: Any) -> None:
    _tests.setdefault(report.nodeid, {})[report.when] = report.duration
    if report.when == "call" and not report.passed:
        _marks.setdefault("failed", []).append(report.nodeid)


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    _marks["finished"].append(time.time())


def pytest_unconfigure(config: Any) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") or "BENCH_OUT" not in os.environ:
        return
    # Test order, as run (dicts keep insertion order): the first test carries the session's setup and
    # the last one its teardown, which bench_suite.py leaves out of the per-test medians.
    tests = [{"nodeid": nodeid, **durations} for nodeid, durations in _tests.items()]
    with open(os.environ["BENCH_OUT"], "w") as f:
        json.dump({**_marks, "tests": tests, "unconfigure": time.time()}, f)
