"""Two runs at once, each `-n 2`, on the backends that start servers: in one checkout and in two.

Two developers' runs (or a run and an editor's test-on-save) of the same project overlap on one machine. On
the local backend each run starts a stack of its own; on compose both name the same compose project, so the
second attaches to the first's stack and leases a database name and Redis indexes of its own, and the stack
goes away only once neither run needs it. Either way both runs pass, neither sees the other's rows or keys
(tests/test_alone.py commits rows and keys marked with its run and asserts it sees only its own), nothing of
either is left, and the dev data on the servers beside them is unchanged. The external backend's version
(two runs on one shared server) is tests/plugin/test_plugin_containment.py's.

One trial of two combinations by default (every `make test`); DASHTAM_CONCURRENCY_TRIALS=N runs every
combination N times.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import tally
from dev_data import DevData, dev_data
from foreign import changed_bytes
from selftest import Servers, compose_containers, suspended_guard
from todo_project import Todo, finish

from pytest_dashtam.backends.compose import docker_available

TRIALS = int(os.environ.get("DASHTAM_CONCURRENCY_TRIALS", "1"))
ALL = [("local", "one checkout"), ("local", "two checkouts"), ("compose", "one checkout"), ("compose", "two checkouts")]
DEFAULT = [("local", "one checkout"), ("compose", "two checkouts")]
COMBINATIONS = ALL if TRIALS > 1 else DEFAULT
SERVER_NAMES = ("postgres", "redis-server", "valkey-server")


@pytest.fixture(scope="module")
def planted(servers: Servers) -> Iterator[DevData]:
    with suspended_guard(), dev_data(servers.postgres_url, servers.redis_url) as data:
        yield data


def _servers_of(pids: set[int]) -> list[str]:
    """Server processes still running whose data lives in a folder named after one of the runs' PIDs."""
    left = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if process.info["name"] in SERVER_NAMES and any(f"dashtam-{pid}-" in cmdline for pid in pids):
            left.append(cmdline)
    return left


def _start(todo: Todo, backend: str, mark: str, extra: dict[str, str]) -> subprocess.Popen[str]:
    return todo.start("tests/test_alone.py", "-n", "2", backend=backend, TODO_RUN_MARK=mark, **extra)


@pytest.mark.parametrize(
    ("backend", "layout"),
    [
        pytest.param(b, layout, id=f"{b}-{layout.replace(' ', '-')}", marks=[pytest.mark.docker] * (b == "compose"))
        for b, layout in COMBINATIONS
    ],
)
@pytest.mark.parametrize("trial", range(TRIALS))
def test_two_runs_at_once_pass_apart_and_leave_nothing(
    backend: str,
    layout: str,
    trial: int,
    tmp_path: Path,
    servers: Servers,
    planted: DevData,
    record_property: Callable[[str, object], None],
) -> None:
    extra: dict[str, str] = {}
    project = ""
    if backend == "compose":
        if not docker_available():
            pytest.skip("no Docker engine with compose v2 answers: install Docker with the compose plugin")
        project = f"dashtam-conc-{secrets.token_hex(3)}"
        extra = {
            "DASHTAM_POSTGRES_IMAGE": os.environ.get("DASHTAM_POSTGRES_IMAGE", "postgres:17.6-alpine"),
            "DASHTAM_REDIS_IMAGE": os.environ.get("DASHTAM_REDIS_IMAGE", "redis:7-alpine"),
            "DASHTAM_COMPOSE_PROJECT": project,
        }
    first = Todo.make(tmp_path / "a", servers.postgres_url, servers.redis_url, 1)
    if backend == "compose":
        first.write_env(TODO_DB=first.database)  # the compose file's POSTGRES_DB, as the official image has it
        first.ini(dashtam_compose_files="docker-compose.test.yml")
    second = first.copy(tmp_path / "b") if layout == "two checkouts" else first
    before = planted.checksum()
    tally.record(record_property, concurrent_runs=2)
    try:
        a = _start(first, backend, f"a{trial}", extra)
        # The second run starts while the first is bringing its stack up or already testing.
        time.sleep(0.5 + trial % 3 * 0.6)
        b = _start(second, backend, f"b{trial}", extra)
        results = [finish(a), finish(b)]
        for result in results:
            result.assert_outcomes(passed=4)
        assert _servers_of({a.pid, b.pid}) == []
        if project:
            assert compose_containers(project) == []
    finally:
        if project:
            subprocess.run(
                ["docker", "compose", "--project-name", project, "down", "--volumes", "--timeout", "1"],
                capture_output=True,
                timeout=120,
                check=False,
            )
    after = planted.checksum()
    tally.record(record_property, checksums_compared=1, dev_bytes_changed=changed_bytes(before, after))
    assert after == before
