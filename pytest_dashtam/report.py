"""What the run reports: the time of each phase, and the lines about the prepared stack."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

PHASES = ("start", "safety", "template", "clone", "teardown")


@dataclass
class Timings:
    """Seconds spent per phase (the `--dashtam-timings` report)."""

    phases: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def measure(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - started


def describe_report(report: Mapping[str, Any]) -> list[str]:
    """The lines the terminal shows about a prepared stack (the notes too: a name or index of its own)."""
    if not report:
        return []
    if "error" in report:
        return [f"dashtam: not started: {report['error']}"]
    tuning = " ".join(f"{k}={v}" for k, v in sorted(report.get("tuning", {}).items())) or "none"
    hit = "cache hit" if report.get("cache_hit") else "cache miss: built"
    return [
        f"dashtam: backend={report['backend']} ({report['backend_reason']}): {report['postgres']}, {report['redis']}",
        f"dashtam: database {report['database']} from template {report['template']} ({hit}), "
        f"redis index {report['redis_index']}, tuning {tuning}",
        *(f"dashtam: {note}" for note in report.get("notes", ())),
    ]
