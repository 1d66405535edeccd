"""The suite benchmark still runs: `bench/bench_suite.py --quick --only plugin` end to end.

A smoke test, not a performance test: timings on a shared 2-core machine vary too much to assert targets
here (the benchmark prints met/MISSED for those). What it pins is that the generated inner project still
works on the plugin's current configuration and fixtures, and that the numbers the report is built from
(per-test durations, the `--dashtam-timings` phases) are still there to read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_suite_quick_plugin_only(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHTAM_", "PYTEST_"))}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_suite.py"), "--quick", "--only", "plugin", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "pytest-dashtam (local backend)" in proc.stdout
    assert "plugin overhead per test <= 2.5 ms median" in proc.stdout

    report = json.loads(out.read_text())
    assert report["tests"] == 50
    ours = report["results"]["plugin"]
    # Every phase the "share of the time to the first test" is made of was reported and parsed.
    assert set(ours["phases"]) >= {"start", "safety", "template", "clone", "teardown"}
    assert 0 < ours["share"] < ours["first"] < ours["total"]
    assert 0 < ours["overhead"] < ours["per_test"]
    assert ours["call"] > 0
    # No peers were asked for: no ratios, and their targets are reported as not measured, not as met.
    assert "vs_peers-default" not in report["verdicts"]
    assert report["verdicts"]["whole suite <= 0.12x of the peers' defaults"]["verdict"] == "not measured"
