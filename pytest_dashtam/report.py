"""What the run reports: the time of each phase, and the lines about the prepared stack."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_dashtam.config import PluginConfig
    from pytest_dashtam.run import DashtamRun

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
    hit = report.get("template_build") or ("cache hit" if report.get("cache_hit") else "cache miss: built")
    return [
        f"dashtam: backend={report['backend']} ({report['backend_reason']}): {report['postgres']}, {report['redis']}",
        f"dashtam: database {report['database']} from template {report['template']} ({hit}), "
        + (f"redis index {report['redis_index']}, " if report.get("redis_index") is not None else "")
        + f"tuning {tuning}",
        *(f"dashtam: {note}" for note in report.get("notes", ())),
    ]


def header_lines(c: PluginConfig, run: DashtamRun | None, *, verbose: bool) -> list[str]:
    """The report header: where each setting came from (pytest-django's header line), passwords masked."""
    from pytest_dashtam import __version__
    from pytest_dashtam.config import OPTIONS
    from pytest_dashtam.urls import mask_url

    controller = run is not None and run.role == "controller"
    database = run.database if run is not None and run.database else c.test_database
    lines = [
        f"dashtam: {__version__}, {c.describe('backend')}, {c.describe('env_file')}, {c.describe('settings')}",
        f"dashtam: test database {database}{'_gwN per xdist worker' if controller else ''}, "
        f"{c.describe('redis_index')}, {c.describe('dev_database')}, {c.describe('dev_redis_index')}",
    ]
    if run is not None and run.stack is not None and run.error is None:
        lines.append(f"dashtam: {run.describe_stack()}")
    if controller and run is not None:  # elsewhere the notes come with the database line, once prepared
        lines.extend(f"dashtam: {note}" for note in run.notes)
    missing = [
        f"dashtam_{name}" for name in ("app", "session_dependency", "redis_dependency") if getattr(c, name) is None
    ]
    if missing:
        lines.append(
            f"dashtam: not set: {', '.join(missing)} "
            "(`client` needs dashtam_app; a dependency not named is not overridden)"
        )
    if c.postgres_url and c.redis_url:
        lines.append(
            f"dashtam: postgres_url={mask_url(c.postgres_url)} (from {c.source('postgres_url')}), "
            f"redis_url={mask_url(c.redis_url)} (from {c.source('redis_url')})"
        )
    if verbose:  # -v: every option, and where it came from
        lines.extend(f"dashtam:   {_describe_masked(c, o.name)}" for o in OPTIONS)
    else:
        flags = [c.describe(n) for n in ("keep", "keep_failed", "rebuild", "alembic_ini") if c.source(n) != "default"]
        if flags:
            lines.append("dashtam: " + ", ".join(flags))
    return lines


def _describe_masked(c: PluginConfig, name: str) -> str:
    value = getattr(c, name, None)
    if name in ("postgres_url", "redis_url") and value:
        from pytest_dashtam.urls import mask_url

        source = c.source(name)
        return f"{name}={mask_url(value)} ({'default' if source == 'default' else 'from ' + source})"
    return c.describe(name)


def kept_summary(kept: Sequence[Mapping[str, str]]) -> list[str]:
    """The run's last word on `--dashtam-keep-failed`: the databases kept, how to list and remove them, and
    what the reports of tests that errored in setup could not show (pytest shows no teardown section there)."""
    if not kept:
        return []
    names = ", ".join(k["name"] for k in kept)
    lines = [
        f"dashtam: kept {len(kept)} database{'' if len(kept) == 1 else 's'} of failed tests: {names} "
        "(`dashtam-env kept` lists them, `dashtam-env kept --remove-all` removes them)",
        *(f"dashtam: {note}" for note in sorted({k["note"] for k in kept if k.get("note")})),
    ]
    for k in kept:
        if k.get("unshown"):
            lines += [f"dashtam: {k['test']} errored in its setup; what it left:", *k["unshown"].splitlines()]
    return lines
