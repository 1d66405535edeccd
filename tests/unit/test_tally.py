"""The reliability tally: how reports add up, what the line says, and that under xdist it prints once.

The last test runs a small project of its own under `-n 2` with this repository's tests/conftest.py, so what
it proves is the wiring the reliability suite has: workers' facts reach the controller, nobody counts twice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from foreign import Digest, changed_bytes
from tally import PROPERTY, Tally, record

SUPPORT = Path(__file__).parents[1] / "support"
CONFTEST = Path(__file__).parents[1] / "conftest.py"


def _report(
    outcome: Literal["passed", "failed", "skipped"],
    facts: dict[str, float],
    when: Literal["setup", "call", "teardown"] = "call",
) -> pytest.TestReport:
    return pytest.TestReport("t.py::t", ("t.py", 1, "t"), {}, outcome, None, when, user_properties=[(PROPERTY, facts)])


def test_record_puts_the_facts_under_one_property_and_refuses_a_typo() -> None:
    recorded: list[tuple[str, object]] = []
    record(lambda name, value: recorded.append((name, value)), faults=1, hang_to_end_s=2.5)
    assert recorded == [(PROPERTY, {"faults": 1, "hang_to_end_s": 2.5})]
    with pytest.raises(ValueError, match="fualts"):
        record(lambda name, value: None, fualts=1)


def test_counts_add_up_held_ones_by_outcome_the_longest_hang_is_the_max() -> None:
    tally = Tally()
    tally.add_report(_report("passed", {"bad_configs": 1, "passwords_found": 0, "outputs_checked": 1}))
    tally.add_report(_report("failed", {"bad_configs": 1, "passwords_found": 2, "outputs_checked": 1}))
    tally.add_report(_report("passed", {"faults": 1, "hang_to_end_s": 7.4}))
    tally.add_report(_report("failed", {"faults": 1, "hang_to_end_s": 3.0}))
    tally.add_report(_report("passed", {"concurrent_runs": 2, "checksums_compared": 1, "dev_bytes_changed": 0}))
    tally.add_report(_report("failed", {"concurrent_runs": 2, "checksums_compared": 1, "dev_bytes_changed": 40}))
    assert tally.line() == (
        "reliability: bad configurations 2 tried, 1 refused cleanly; faults 2 injected, 1 survived; "
        "concurrent runs 2 passed of 4; longest hang to end 7.4 s; passwords found in output 2 (in 2 outputs "
        "and files); dev data changed 40 bytes (2 checksums compared)"
    )


def test_each_test_counts_once_and_facts_recorded_in_parts_add_up() -> None:
    tally = Tally()
    facts = [(PROPERTY, {"faults": 1}), (PROPERTY, {"checksums_compared": 1, "dev_bytes_changed": 0})]
    whens: tuple[Literal["setup", "call", "teardown"], ...] = ("setup", "call", "teardown")
    for when in whens:
        report = _report("passed", {}, when)
        report.user_properties = list(facts) if when != "setup" else []
        tally.add_report(report)
    tally.add_report(_report("failed", {"faults": 1}, "setup"))  # never got to its call
    assert tally.totals == {"faults": 2, "checksums_compared": 1, "dev_bytes_changed": 0}
    assert tally.held == {"faults": 1}


def test_nothing_recorded_prints_nothing_and_other_properties_are_left_alone() -> None:
    tally = Tally()
    report = _report("passed", {})
    report.user_properties = [("something_else", {"faults": 1})]
    tally.add_report(report)
    assert tally.line() is None


def test_only_the_parts_recorded_are_shown() -> None:
    tally = Tally()
    tally.add({"passwords_found": 0, "outputs_checked": 5}, passed=True)
    assert tally.line() == "reliability: passwords found in output 0 (in 5 outputs and files)"


def test_changed_bytes_is_zero_exactly_when_the_checksums_are_equal() -> None:
    redis = [("someone:t:0", "value 0"), ("someone:t:1", "value 1")]
    before: dict[str, object] = {
        "databases": [("postgres", 5, None), ("devdata_x", 16384, None)],
        "db:devdata_x": Digest("aa", 120),
        "redis": redis,
    }
    assert changed_bytes(before, dict(before)) == 0
    # A digest cannot say where: the whole dump, before and after.
    assert changed_bytes(before, {**before, "db:devdata_x": Digest("bb", 130)}) == 250
    # A changed value: its old entry and its new one, each as a dump's line.
    changed = {**before, "redis": [("someone:t:0", "value 0"), ("someone:t:1", "value 10")]}
    assert changed_bytes(before, changed) == len(b"someone:t:1\tvalue 1\n") + len(b"someone:t:1\tvalue 10\n")
    # A dropped database: its row in pg_database and its whole dump.
    gone = {"databases": [("postgres", 5, None)], "redis": redis}
    assert changed_bytes(before, gone) == len(b"devdata_x\t16384\tNone\n") + 120
    # The same entries in another order, and an empty part against a missing one, still count.
    assert changed_bytes(before, {**before, "redis": redis[::-1]}) > 0
    assert changed_bytes({"redis": []}, {}) == 1


INNER_TESTS = """
import pytest
from tally import record


@pytest.mark.parametrize("case", range(3))
def test_bad_configuration(record_property, case):
    record(record_property, bad_configs=1, passwords_found=0, outputs_checked=1)
    assert case != 2


def test_fault(record_property):
    record(record_property, faults=1)
    record(record_property, hang_to_end_s=7.4, checksums_compared=1, dev_bytes_changed=0)


def test_two_runs(record_property):
    record(record_property, concurrent_runs=2, hang_to_end_s=2.0, checksums_compared=1, dev_bytes_changed=0)
"""


def test_under_xdist_the_controller_alone_prints_every_worker_s_counts(tmp_path: Path) -> None:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_facts.py").write_text(INNER_TESTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DASHTAM_"))}
    env["PYTHONPATH"] = str(SUPPORT)
    # The plugin stays out: the inner project has no settings, and the tally does not need it.
    command = [sys.executable, "-m", "pytest", "-p", "no:dashtam", "-p", "no:cacheprovider", "-n", "2"]
    proc = subprocess.run(
        [*command, "test_facts.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, out
    assert "2 workers" in out, out
    assert "1 failed, 4 passed" in out, out
    expected = (
        "reliability: bad configurations 3 tried, 2 refused cleanly; faults 1 injected, 1 survived; "
        "concurrent runs 2 passed of 2; longest hang to end 7.4 s; passwords found in output 0 (in 3 outputs and "
        "files); dev data changed 0 bytes (2 checksums compared)"
    )
    assert proc.stdout.splitlines().count(expected) == 1, out
    assert len([line for line in proc.stdout.splitlines() if " reliability " in line and "=" in line]) == 1, out
