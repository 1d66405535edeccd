"""The process environment the project's code sees: the test env file, then the stack's URLs over it.

Exported before any conftest imports the application, so that settings, engines and clients created at
import time read them; restored at the end. Under xdist the controller hands its workers the stack in
their environment too (`Handoff`): no file holds the stack's URLs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from pytest_dashtam.backends.base import Stack
from pytest_dashtam.config import env_value
from pytest_dashtam.urls import app_database_url


def export_env(values: Mapping[str, str]) -> dict[str, str | None]:
    """Export the variables (they win over the shell's); returns what to restore."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    return saved


def restore_env(saved: Mapping[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def app_environment(
    env_values: Mapping[str, str], stack: Stack, database: str, redis_index: int | None
) -> dict[str, str]:
    """DATABASE_URL / REDIS_URL for the application, under every spelling the env file used."""
    from pytest_dashtam.schema import redis_url_with_index

    urls = {"database_url": app_database_url(env_value(env_values, "DATABASE_URL"), stack.postgres_url, database)}
    if redis_index is not None:
        urls["redis_url"] = redis_url_with_index(stack.redis_url, redis_index)
    exported: dict[str, str] = {}
    for lowered, url in urls.items():
        exported[lowered.upper()] = url
        exported.update({key: url for key in env_values if key.lower() == lowered})
    return exported


# The controller hands its workers the stack through this variable (the workers' environment is a copy of
# the controller's at spawn time): no file holds the stack's URLs.
HANDOFF_ENV = "DASHTAM_XDIST_HANDOFF"


@dataclass(frozen=True)
class Handoff:
    """What an xdist controller tells its workers: the stack it started and the database base it leased."""

    stack: Stack
    base_database: str
    run_id: str
    controller_pid: int
    backend_reason: str

    def to_env(self) -> str:
        return json.dumps(
            {
                "stack": json.loads(self.stack.to_json()),
                "base_database": self.base_database,
                "run_id": self.run_id,
                "controller_pid": self.controller_pid,
                "backend_reason": self.backend_reason,
            }
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Handoff | None:
        """The handoff meant for this process: only a direct child of the controller that wrote it is a
        worker of that run (a pytest started from inside a test inherits the variable but is not)."""
        raw = environ.get(HANDOFF_ENV)
        if not raw or not environ.get("PYTEST_XDIST_WORKER"):
            return None
        try:
            data = json.loads(raw)
            handoff = cls(
                stack=Stack.from_json(json.dumps(data["stack"])),
                base_database=str(data["base_database"]),
                run_id=str(data["run_id"]),
                controller_pid=int(data["controller_pid"]),
                backend_reason=str(data["backend_reason"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        return handoff if handoff.controller_pid == os.getppid() else None
