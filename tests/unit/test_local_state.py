"""State files: round trip, atomic writes, garbage tolerated, the folder lock excludes others."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pytest_dashtam.backends._local_procs import ProcRef
from pytest_dashtam.backends._local_state import StackState, locked, read_states, remove_state, write_state


def _state(run_id: str) -> StackState:
    return StackState(
        run_id=run_id,
        env="test",
        owner=ProcRef.of(os.getpid()),
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
    with locked(tmp_path):
        held = subprocess.run([sys.executable, "-c", probe, lock_file], capture_output=True, text=True, check=True)
    after = subprocess.run([sys.executable, "-c", probe, lock_file], capture_output=True, text=True, check=True)
    assert held.stdout.strip() == "busy"
    assert after.stdout.strip() == "free"
