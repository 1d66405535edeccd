"""`--dashtam-keep-failed` (issue 12): a failed test's database state kept under a name of its own, stamped,
listed and removed by `dashtam-env kept`, while the next tests still start clean.

On the basic inner project with examples/keep/test_keep_failed.py copied in: a rollback-mode test that
commits (a savepoint) and flushes rows into two tables joined by a foreign key and sets two Redis keys, then
fails; a real-commit test that commits and fails; a fixture that writes and fails in setup; a test whose
transaction failed; tests after them that must see nothing. The admin URL carries a password, which no
output may show.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from foreign import Foreign
from inner_project import EXAMPLES, Inner
from passwords import SECRET, with_password

from pytest_dashtam.safety import OWNERSHIP_COMMENT_PREFIX

_PSQL = re.compile(r"^dashtam: psql (postgresql://\S+)$")
FAILING = "test_keep_failed.py::test_fails_after_writing"
COMMITTING = "test_keep_failed.py::test_commits_then_fails"
FAILED_TRANSACTION = "test_keep_failed.py::test_fails_with_its_transaction_failed"
SETUP = "test_keep_failed.py::test_setup_fails"


def _kept_from(result: pytest.RunResult) -> list[str]:
    """The kept databases' names, from the psql lines of the failures' reports and the summary, in order."""
    urls = [m[1] for m in (_PSQL.match(line) for line in result.stdout.lines) if m is not None]
    for url in urls:
        assert url.startswith("postgresql://postgres:***@"), url  # the password masked as everywhere else
    return [url.rsplit("/", 1)[1] for url in urls]


def _cli(inner: Inner, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_dashtam.cli", "--project-root", str(inner.pytester.path), "kept", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    print(proc.stdout, proc.stderr, sep="\n--- stderr ---\n")
    assert SECRET not in proc.stdout + proc.stderr
    return proc


@pytest.fixture
def keep(inner: Inner) -> Inner:
    inner.copy()
    shutil.copy(EXAMPLES / "keep" / "test_keep_failed.py", inner.pytester.path)
    inner.monkeypatch.setenv("DASHTAM_POSTGRES_URL", with_password(inner.postgres_url))
    return inner



def test_a_failed_test_s_state_is_kept_listed_and_removed(keep: Inner, planted: Foreign) -> None:
    before = planted.checksum()
    result = keep.run("test_keep_failed.py", "--dashtam-keep-failed", "-rA")
    assert SECRET not in result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=4, failed=3, errors=1)  # the tests after the failures started clean
    kept = _kept_from(result)
    assert len(kept) == 4, result.stdout.str()  # the passing test kept nothing
    # The failures' reports in order, then the summary's lines for the error in setup.
    rolled_back, committed, failed_transaction, setup = kept
    assert {d for d in keep.databases() if "_kept_" in d} == set(kept)
    assert all(re.fullmatch(rf"{keep.database}_kept_[0-9a-f]{{8}}", name) for name in kept)

    # The failure's report ends with what was kept, the Redis keys and the psql line.
    result.stdout.fnmatch_lines(
        [
            "*- dashtam teardown: what the failed test left -*",
            f"dashtam: kept what this failed test left in its database as {rolled_back}: items 1 row, tags 1 row",
            "dashtam: it left 2 Redis keys in index * (flushed since): todo:1, todo:2",
            f"dashtam: psql postgresql://postgres:[*][*][*]@127.0.0.1:{keep.postgres_port}/{rolled_back}",
        ],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(
        [
            f"dashtam: kept what this failed test left in its database as {failed_transaction}: items 1 row",
            "dashtam: its transaction had failed: what it wrote after its last commit was rolled back, not kept",
        ],
        consecutive=True,
    )
    # pytest shows no teardown section under an error in setup: the summary says what it left.
    result.stdout.fnmatch_lines(
        [
            "*= dashtam: kept for debugging =*",
            "dashtam: kept 4 databases of failed tests: *_kept_*, *_kept_*, *_kept_*, *_kept_* "
            "(`dashtam-env kept` lists them, `dashtam-env kept --remove-all` removes them)",
            f"dashtam: {SETUP} errored in its setup; what it left:",
            f"dashtam: kept what this failed test left in its database as {setup}: items 1 row",
            f"dashtam: psql postgresql://postgres:[*][*][*]@127.0.0.1:{keep.postgres_port}/{setup}",
        ],
        consecutive=True,
    )

    # Exactly the rows the test left (a commit and a flush, neither of them real), sequences where it left them.
    with keep.test_db(rolled_back) as conn:
        assert conn.execute("SELECT id, name FROM items").fetchall() == [(1, "left behind")]
        assert conn.execute("SELECT id, item_id, label FROM tags").fetchall() == [(1, 1, "red")]
        assert conn.execute("SELECT last_value, is_called FROM items_id_seq").fetchone() == (1, True)
    with keep.test_db(committed) as conn:  # the real commit, copied before the cleaner emptied the table
        assert conn.execute("SELECT name FROM items").fetchall() == [("committed",)]
        assert conn.execute("SELECT count(*) FROM tags").fetchone() == (0,)
    for name, left in ((failed_transaction, "committed before"), (setup, "seeded")):
        with keep.test_db(name) as conn:
            assert conn.execute("SELECT name FROM items").fetchall() == [(left,)]
    with keep.admin() as admin:
        stamps = dict(
            admin.execute(
                "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = ANY(%s)",
                (kept,),
            ).fetchall()
        )
    assert stamps[rolled_back].startswith(f"{OWNERSHIP_COMMENT_PREFIX}kept:")
    assert stamps[rolled_back].endswith(f" {FAILING}")
    assert stamps[committed].endswith(f" {COMMITTING}")
    assert stamps[setup].endswith(f" {SETUP}")

    listed = _cli(keep)
    assert listed.returncode == 0, listed.stderr
    for name, test in zip(kept, (FAILING, COMMITTING, FAILED_TRANSACTION, SETUP), strict=True):
        assert f"dashtam-env:   {name}: {test} (kept " in listed.stdout
        assert f"psql postgresql://postgres:***@127.0.0.1:{keep.postgres_port}/{name}" in listed.stdout

    # Only a database carrying the kept stamp is removed: someone else's is refused, and left as it was.
    refused = _cli(keep, "--remove", planted.databases[0])
    assert refused.returncode == 2
    assert "refusing to remove database" in refused.stderr
    assert _cli(keep, "--remove", rolled_back).returncode == 0
    assert {d for d in keep.databases() if "_kept_" in d} == {committed, failed_transaction, setup}

    # Under xdist a worker keeps it, its report carries the lines, the controller's summary names it.
    result = keep.run(FAILING, "--dashtam-keep-failed", "-n", "2")
    result.assert_outcomes(failed=1)
    (by_worker,) = _kept_from(result)
    assert re.fullmatch(rf"{keep.database}_gw[01]_kept_[0-9a-f]{{8}}", by_worker)
    result.stdout.fnmatch_lines([f"dashtam: kept 1 database of failed tests: {by_worker} (*"])
    assert "dashtam: it left 2 Redis keys in index" in result.stdout.str()

    assert _cli(keep, "--remove-all").returncode == 0
    assert not {d for d in keep.databases() if "_kept_" in d}

    # Without the option, the same failures keep nothing.
    result = keep.run("test_keep_failed.py")
    result.assert_outcomes(passed=4, failed=3, errors=1)
    assert not _kept_from(result)
    assert "what the failed test left" not in result.stdout.str()
    assert not {d for d in keep.databases() if "_kept_" in d}
    assert planted.checksum() == before
