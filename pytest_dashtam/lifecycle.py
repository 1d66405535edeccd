"""Where the session's pieces used to live; kept while callers move to run.py, environment.py, project.py."""

from __future__ import annotations

from pytest_dashtam.environment import HANDOFF_ENV, Handoff, export_env, restore_env
from pytest_dashtam.project import import_object, load_settings
from pytest_dashtam.report import PHASES, Timings, describe_report
from pytest_dashtam.run import DashtamRun, Prepared, backend_options

__all__ = [
    "HANDOFF_ENV",
    "PHASES",
    "DashtamRun",
    "Handoff",
    "Prepared",
    "Timings",
    "backend_options",
    "describe_report",
    "export_env",
    "import_object",
    "load_settings",
    "restore_env",
]
