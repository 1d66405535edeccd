"""Under `pytest -n 2`: one stack, a database and a Redis index per worker, all gone afterwards."""

from __future__ import annotations

import os
import tempfile

import pytest
from inner_project import INNER_DB, INNER_INDEX, Inner


def test_two_workers(inner: Inner) -> None:
    inner.copy()
    before = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("pytest-dashtam-")}
    # loadfile: test_transaction.py's tests check what the previous one left, so they stay together, in order.
    result = inner.run("-n", "2", "--dist", "loadfile", "test_basic.py", "test_transaction.py", "--dashtam-timings")
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines(
        [
            f"dashtam: backend=external *; workers lease {INNER_DB}_gwN and their own Redis indexes",
            "*= dashtam =*",
            f"dashtam: database {INNER_DB}_gw? from template {INNER_DB}_tpl_* redis index *",
        ]
    )
    result.stdout.fnmatch_lines([f"dashtam timings: {INNER_DB}_gw0: start *", f"dashtam timings: {INNER_DB}_gw1: *"])
    databases = inner.databases()
    assert f"{INNER_DB}_gw0" not in databases
    assert f"{INNER_DB}_gw1" not in databases
    assert inner.redis(INNER_INDEX).dbsize() == 0
    assert inner.redis(INNER_INDEX + 1).dbsize() == 0
    after = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("pytest-dashtam-")}
    assert after <= before  # the run's shared directory is removed


def test_a_worker_without_a_free_redis_index_says_so(inner: Inner) -> None:
    """Two workers from the last index: the second finds none free above it, and says what it found."""
    inner.copy()
    databases = inner.redis_databases()
    base = databases - 1
    result = inner.run("-n", "2", "-p", "no:randomly", "test_basic.py", f"--dashtam-redis-index={base}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"*no free Redis index from {base + 1} (the server has {databases})*"])
    assert "Traceback" not in result.stdout.str()
