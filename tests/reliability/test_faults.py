"""Faults in the middle of a run: a server stopped (SIGSTOP) or killed while a test talks to it.

The promise: no wait without a deadline. The run ends within --dashtam-timeout plus the teardown's own
bounded waits, with one line naming the server and the test, nothing of the stack is left running, and the
next run passes. Each fault is tried DASHTAM_FAULT_TRIALS times (1 by default, in every `make test`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import tally
from dev_data import DevData, dev_data
from foreign import changed_bytes
from selftest import Servers, suspended_guard
from todo_project import Todo, finish

from pytest_dashtam.watchdog import Server, Watchdog, ping

TRIALS = int(os.environ.get("DASHTAM_FAULT_TRIALS", "1"))
TIMEOUT = 5  # --dashtam-timeout of the runs under test
# A hang is a run that outlives this; a bounded one ends well before (a watchdog's wait, then teardown's).
HANG = 90
# After a SIGSTOP the run ends at the watchdog's firing (the timeout, plus its one-second pings) plus what
# pytest itself takes to report and tear down: about 2-3 s here, 15-23 s before the connections to the hung
# server were severed. Generous, for a loaded 2-core machine; the assertions before it say why it is short.
STOPPED_MARGIN = 10.0

TALKS_FOR_A_WHILE = """
import asyncio
import os
from pathlib import Path
from sqlalchemy import text

async def test_talks_to_both_servers(db_session, redis_client):
    Path(os.environ["TALK_STARTED"]).touch()  # the harness injects its fault once the body runs
    for i in range(600):
        await db_session.execute(text("SELECT 1"))
        await redis_client.set("k", i)
        await asyncio.sleep(0.05)
"""


@pytest.fixture(scope="module")
def planted(servers: Servers) -> Iterator[DevData]:
    with suspended_guard(), dev_data(servers.postgres_url, servers.redis_url) as data:
        yield data


def _stack_processes(root: int) -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process(root).children(recursive=True)
        if p.name() in ("postgres", "redis-server", "valkey-server")
    ]


def _talking_run(tmp_path: Path, servers: Servers, *args: str) -> tuple[Todo, subprocess.Popen[str]]:
    """The todo project running TALKS_FOR_A_WHILE on the local backend, returned once the test body runs."""
    todo = Todo.make(tmp_path / "todo", servers.postgres_url, servers.redis_url, 1)
    (todo.path / "tests" / "test_talks.py").write_text(TALKS_FOR_A_WHILE)
    started = tmp_path / "started"
    run = todo.start("tests/test_talks.py", *args, backend="local", TALK_STARTED=str(started))
    _wait_for(started, run)
    return todo, run


def _wait_for(started: Path, run: subprocess.Popen[str]) -> None:
    """Until the inner test's body runs (it touches `started`); the run failing before that fails the test."""
    deadline = time.monotonic() + 120
    while not started.exists():
        if run.poll() is not None or time.monotonic() > deadline:
            run.kill()
            out, err = run.communicate()
            raise AssertionError(f"the inner run never reached its test:\n{out}\n{err}")
        time.sleep(0.1)


@pytest.mark.parametrize("trial", range(TRIALS))
@pytest.mark.parametrize(
    ("server", "sig"),
    [("postgres", "SIGSTOP"), ("redis-server", "SIGSTOP"), ("redis-server", "SIGKILL"), ("postgres", "SIGKILL")],
)
def test_a_server_stopped_or_killed_mid_run_ends_the_run_with_one_line(
    tmp_path: Path,
    servers: Servers,
    planted: DevData,
    server: str,
    sig: str,
    trial: int,
    record_property: Callable[[str, object], None],
) -> None:
    del trial
    before = planted.checksum()
    todo, run = _talking_run(tmp_path, servers, f"--dashtam-timeout={TIMEOUT}")
    # The postmaster (the parent of the other postgres processes) or the Redis server.
    victims = [p for p in _stack_processes(run.pid) if p.name().startswith(server) and p.ppid() == run.pid]
    assert victims, "the run has no such server"
    stack = _stack_processes(run.pid)
    victims[0].send_signal(getattr(signal, sig))
    stopped_at = time.monotonic()
    tally.record(record_property, faults=1)
    try:
        result = finish(run, timeout=HANG)
    finally:
        for process in stack:
            if process.is_running() and sig == "SIGSTOP":
                process.send_signal(signal.SIGCONT)
    took = time.monotonic() - stopped_at
    if sig == "SIGSTOP":
        tally.record(record_property, hang_to_end_s=took)
    kind = "PostgreSQL" if server == "postgres" else "Redis"
    # Stopped by the watchdog during the test, or right after the test failed on the dead server.
    result.stdout.fnmatch_lines([f"dashtam: {kind} at 127.0.0.1:* the run was stopped * tests/test_talks.py::*"])
    assert result.ret in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.TESTS_FAILED), result.stdout.str()
    assert "Traceback (most recent call last)" not in result.stdout.str() + result.stderr.str()
    print(f"{kind} {sig}: the run ended {took:.1f} s after the fault")
    if sig == "SIGSTOP":
        # What bounds the end: the hung server's connections were severed, so the blocked test and every wait
        # after it (teardown's rollback and FLUSHDB, the pools, the leases) failed at once; the run stopped
        # through pytest's shouldstop with the watchdog's line, and no SIGINT was needed to free it.
        out = result.stdout.str() + result.stderr.str()
        result.stdout.fnmatch_lines([f"*Interrupted: pytest-dashtam: {kind} at 127.0.0.1:* *"])
        assert "KeyboardInterrupt" not in out, out
        assert took <= TIMEOUT + STOPPED_MARGIN, f"the run ended {took:.1f} s after the fault"
    # Nothing of the stack is left running, and the next run passes.
    assert not [p for p in stack if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    again = todo.run("tests/test_todo.py", backend="local")
    again.assert_outcomes(passed=5)
    after = planted.checksum()
    tally.record(record_property, checksums_compared=1, dev_bytes_changed=changed_bytes(before, after))
    assert after == before


class _Silent:
    """A listener that accepts connections and never answers: a stopped server, as the kernel shows it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


def test_ping_tells_answer_silence_and_refusal(servers: Servers) -> None:
    silent = _Silent()
    try:
        assert ping(Server("Redis", "127.0.0.1", silent.port), timeout=0.3) == "silent"
    finally:
        silent.close()
    assert ping(Server("PostgreSQL", "127.0.0.1", silent.port), timeout=0.3) == "refused"
    assert ping(Server.from_url("PostgreSQL", servers.postgres_url), timeout=2) is None
    assert ping(Server.from_url("Redis", servers.redis_url), timeout=2) is None


def test_the_watchdog_fires_once_with_the_server_and_the_test() -> None:
    silent = _Silent()
    fired = threading.Event()
    watchdog = Watchdog([Server("PostgreSQL", "127.0.0.1", silent.port)], 1.5, lambda: "tests/x.py::t", fired.set)
    try:
        watchdog.start()
        watchdog.tests_begin()  # the main thread never reports: after the grace it is interrupted
        assert fired.wait(10)
    finally:
        watchdog.stop()
        silent.close()
    assert watchdog.fired is not None
    assert watchdog.fired.startswith(f"PostgreSQL at 127.0.0.1:{silent.port} has not answered for ")
    assert watchdog.fired.endswith("the run was stopped during tests/x.py::t")


@pytest.mark.parametrize("trial", range(TRIALS))
def test_a_killed_run_leaves_no_server_and_no_files(
    tmp_path: Path, servers: Servers, planted: DevData, trial: int, record_property: Callable[[str, object], None]
) -> None:
    """SIGKILL of the run's whole process group: no teardown runs, the janitor takes the stack down."""
    del trial
    before = planted.checksum()
    todo, run = _talking_run(tmp_path, servers)  # a session of its own: its pid is the process group
    stack = [p for p in _stack_processes(run.pid) if p.ppid() == run.pid]
    assert len(stack) == 2, "the run has not its two servers"
    postmaster = next(p for p in stack if p.name() == "postgres")
    data_dir = Path(postmaster.cmdline()[postmaster.cmdline().index("-D") + 1])
    os.killpg(run.pid, signal.SIGKILL)
    tally.record(record_property, faults=1)
    run.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (data_dir.exists() or any(p.is_running() for p in stack)):
        time.sleep(0.2)
    assert not [p for p in stack if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not data_dir.exists()
    again = todo.run("tests/test_todo.py", backend="local")
    again.assert_outcomes(passed=5)
    after = planted.checksum()
    tally.record(record_property, checksums_compared=1, dev_bytes_changed=changed_bytes(before, after))
    assert after == before
