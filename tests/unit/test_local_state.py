"""State files: round trip, atomic writes, garbage tolerated, the folder lock excludes others."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_dashtam.backends._local_state import StackState, locked, read_states, remove_state, write_state
from pytest_dashtam.backends.base import Stack
from pytest_dashtam.errors import BackendError
from pytest_dashtam.process import ProcessId


def _state(run_id: str) -> StackState:
    return StackState(
        run_id=run_id,
        env="test",
        owner=ProcessId.of(os.getpid()),
        keep=False,
        started_at=time.time(),
        run_dir="/dev/shm/x",
        remove_run_dir=True,
        data_dir="/dev/shm/x/pg",
        socket_dir="/dev/shm/x/s",
        postgres_log="/dev/shm/x/postgres.log",
        redis_log="/dev/shm/x/redis.log",
        postgres_port=20001,
        redis_port=20002,
        postgres_bin="/usr/bin/postgres",
        postgres_identity="abc",
        redis_bin="/usr/bin/redis-server",
    )


def test_round_trip_and_no_temp_files_left(tmp_path: Path) -> None:
    state = _state("r1")
    path = write_state(tmp_path, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    ((found_path, found),) = read_states(tmp_path)
    assert found_path == path
    assert found == state
    assert found is not None
    assert found.owner.alive()
    assert not found.servers_alive()  # no servers recorded yet
    remove_state(tmp_path, "r1")
    remove_state(tmp_path, "r1")  # idempotent
    assert read_states(tmp_path) == []


def test_garbage_state_file_is_reported_not_raised(tmp_path: Path) -> None:
    write_state(tmp_path, _state("good"))
    (tmp_path / "stack-bad.json").write_text("{not json")
    states = {path.name: state for path, state in read_states(tmp_path)}
    assert states["stack-bad.json"] is None
    assert states["stack-good.json"] is not None


def test_missing_folder_reads_empty(tmp_path: Path) -> None:
    assert read_states(tmp_path / "nope") == []


def test_lock_excludes_another_process(tmp_path: Path) -> None:
    probe = (
        "import fcntl, sys\n"
        "fh = open(sys.argv[1], 'a+')\n"
        "try:\n"
        "    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    print('free')\n"
        "except BlockingIOError:\n"
        "    print('busy')\n"
    )
    lock_file = str(tmp_path / ".lock")
    with locked(tmp_path, timeout=5.0):
        held = subprocess.run([sys.executable, "-c", probe, lock_file], capture_output=True, text=True, check=True)
    after = subprocess.run([sys.executable, "-c", probe, lock_file], capture_output=True, text=True, check=True)
    assert held.stdout.strip() == "busy"
    assert after.stdout.strip() == "free"


def test_a_held_lock_is_waited_for_a_bounded_time(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire();"
            " print('held', flush=True); time.sleep(30)",
            str(tmp_path / ".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(BackendError, match=r"another run has held the local backend's lock .*\.lock for 0s"),
            locked(tmp_path, timeout=0.2),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    with locked(tmp_path, timeout=5.0):  # released by the kernel when its holder died
        pass


def test_the_stack_of_an_older_state_file_still_loads(tmp_path: Path) -> None:
    """A kept stack recorded before Stack had typed facts (its `details` dict) still reads: the facts are
    unknown, the URLs and versions are there."""
    state = _state("old")
    state.stack = {
        "backend": "local",
        "env": "test",
        "postgres_url": "postgresql://postgres@127.0.0.1:20001/postgres",
        "redis_url": "redis://127.0.0.1:20002",
        "postgres_version": "15.20",
        "redis_version": "7.0.15",
        "tuning": {"fsync": "off"},
        "owns_servers": True,
        "started": True,
        "redis_databases": 16,
        "details": {"run_dir": "/dev/shm/x"},
    }
    write_state(tmp_path, state)
    ((_path, found),) = read_states(tmp_path)
    assert found is not None
    stack = found.the_stack()
    assert isinstance(stack, Stack)
    assert stack.postgres_version == "15.20"
    assert stack.local is None
