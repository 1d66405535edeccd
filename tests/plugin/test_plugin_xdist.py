"""Under `pytest -n 2`: one stack, a database and a Redis index per worker, all gone afterwards."""

from __future__ import annotations

import os

import pytest
from inner_project import Inner, taken


def test_two_workers(inner: Inner) -> None:
    inner.copy()
    db = inner.database
    # loadfile: test_transaction.py's tests check what the previous one left, so they stay together, in order.
    result = inner.run("-n", "2", "--dist", "loadfile", "test_basic.py", "test_transaction.py", "--dashtam-timings")
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines(
        [
            f"dashtam: backend=external *; workers lease {db}_gwN and their own Redis indexes",
            "*= dashtam =*",
            f"dashtam: database {db}_gw? from template {db}_tpl_* redis index *",
        ]
    )
    result.stdout.fnmatch_lines([f"dashtam timings: {db}_gw0: start *", f"dashtam timings: {db}_gw1: *"])
    workers = taken(result)
    assert sorted(w.database for w in workers) == [f"{db}_gw0", f"{db}_gw1"]
    assert len({w.redis_index for w in workers}) == 2  # an index each
    assert inner.databases() == {w.template for w in workers}  # the template is the cache; the rest is gone
    for worker in workers:
        assert inner.redis(worker.redis_index).dbsize() == 0
    # The inner run's own temp dir (TMPDIR, set by the inner fixture): the run's shared files are removed.
    assert not [p for p in os.listdir(os.environ["TMPDIR"]) if p.startswith("pytest-dashtam-")]


def test_a_worker_without_a_free_redis_index_says_so(inner: Inner) -> None:
    """Two workers from the last index: the second finds none free above it, and says what it found."""
    inner.copy()
    databases = inner.redis_databases()
    base = databases - 1
    result = inner.run("-n", "2", "-p", "no:randomly", "test_basic.py", f"--dashtam-redis-index={base}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"*the Redis index {base + 1} does not exist*the server has {databases} databases*"])
    assert "Traceback" not in result.stdout.str()
