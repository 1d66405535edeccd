"""The reliability suite's counts (issue 10), printed at the end of every run that gathered any.

A reliability test states its facts with `record(record_property, ...)`: they travel in the test's report
(report.user_properties, which xdist carries from its workers to the controller), so one process, the one
that prints the summary, sees every test's facts whichever worker ran it. A test records before its
assertions, so a failing test still counts as tried; whether what it tried held is its report's outcome.

tests/conftest.py installs `TallyPlugin` on the controller (or a run without xdist) only: a worker's own
logreport hook sees the same reports the controller is sent, and gathering there too would count them twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pytest

PROPERTY = "dashtam_tally"

# Counted per test; how many of them held is the same count over the tests that passed.
BAD_CONFIGS = "bad_configs"  # tried; refused cleanly when the test passed
FAULTS = "faults"  # kills, stops and hangs injected; survived when the test passed
CONCURRENT_RUNS = "concurrent_runs"  # started; passed when the test passed
# Summed over every test.
PASSWORDS_FOUND = "passwords_found"  # occurrences of the password in what the runs wrote
OUTPUTS_CHECKED = "outputs_checked"  # outputs and files searched for it
CHECKSUMS_COMPARED = "checksums_compared"  # dev-data or foreign checksums compared before and after
DEV_BYTES_CHANGED = "dev_bytes_changed"  # foreign.changed_bytes() of those comparisons
# The longest of every test's.
HANG_TO_END_S = "hang_to_end_s"  # seconds from a server's hang to the end of the run under test

BY_OUTCOME = (BAD_CONFIGS, FAULTS, CONCURRENT_RUNS)
SUMMED = (PASSWORDS_FOUND, OUTPUTS_CHECKED, CHECKSUMS_COMPARED, DEV_BYTES_CHANGED)
LONGEST = (HANG_TO_END_S,)
METRICS = BY_OUTCOME + SUMMED + LONGEST


def record(record_property: Callable[[str, object], None], **facts: float) -> None:
    """A test's facts, into its report. A name outside METRICS is a typo that would vanish from the summary
    without a word, so it fails the test instead."""
    unknown = sorted(set(facts) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown tally metric(s) {unknown}; known: {list(METRICS)}")
    record_property(PROPERTY, dict(facts))


def _counted_once(report: pytest.TestReport) -> bool:
    """Each test's facts once: its call report, or its setup report when it never got to the call (a test's
    teardown report carries the call's properties again)."""
    return report.when == "call" or (report.when == "setup" and not report.passed)


@dataclass
class Tally:
    """What the tests recorded, gathered as their reports arrive."""

    totals: dict[str, float] = field(default_factory=dict)
    held: dict[str, float] = field(default_factory=dict)  # BY_OUTCOME, over the tests that passed

    def add(self, facts: Mapping[str, float], *, passed: bool) -> None:
        for name, value in facts.items():
            if name in LONGEST:
                self.totals[name] = max(self.totals.get(name, value), value)
                continue
            self.totals[name] = self.totals.get(name, 0) + value
            if name in BY_OUTCOME:
                self.held[name] = self.held.get(name, 0) + (value if passed else 0)

    def add_report(self, report: pytest.TestReport) -> None:
        if not _counted_once(report):
            return
        for name, value in report.user_properties:
            if name == PROPERTY and isinstance(value, Mapping):
                self.add({k: v for k, v in value.items() if k in METRICS}, passed=report.passed)

    def line(self) -> str | None:
        """One line of the counts, each part only when some test recorded it; None when nothing was."""
        t, h = self.totals, self.held
        parts = []
        if BAD_CONFIGS in t:
            parts.append(f"bad configurations {_n(t[BAD_CONFIGS])} tried, {_n(h[BAD_CONFIGS])} refused cleanly")
        if FAULTS in t:
            parts.append(f"faults {_n(t[FAULTS])} injected, {_n(h[FAULTS])} survived")
        if CONCURRENT_RUNS in t:
            parts.append(f"concurrent runs {_n(h[CONCURRENT_RUNS])} passed of {_n(t[CONCURRENT_RUNS])}")
        if HANG_TO_END_S in t:
            parts.append(f"longest hang to end {t[HANG_TO_END_S]:.1f} s")
        if PASSWORDS_FOUND in t or OUTPUTS_CHECKED in t:
            found, checked = _n(t.get(PASSWORDS_FOUND, 0)), _n(t.get(OUTPUTS_CHECKED, 0))
            parts.append(f"passwords found in output {found} (in {checked} outputs and files)")
        if DEV_BYTES_CHANGED in t or CHECKSUMS_COMPARED in t:
            changed, compared = _n(t.get(DEV_BYTES_CHANGED, 0)), _n(t.get(CHECKSUMS_COMPARED, 0))
            parts.append(f"dev data changed {changed} bytes ({compared} checksums compared)")
        return "reliability: " + "; ".join(parts) if parts else None


def _n(value: float) -> str:
    return f"{value:.0f}"


class TallyPlugin:
    """The hooks that gather the tally and print it, registered where the reports of every test arrive."""

    def __init__(self) -> None:
        self.tally = Tally()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.tally.add_report(report)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        line = self.tally.line()
        if line is not None:
            terminalreporter.write_sep("=", "reliability")
            terminalreporter.write_line(line)


def install(config: pytest.Config) -> None:
    """TallyPlugin on this run, unless this process is an xdist worker (see the module's docstring)."""
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(TallyPlugin(), "dashtam-tally")
