"""The local test stack's janitor: a process of its own that takes a throw-away stack down when the run
that started it dies without doing so.

A SIGKILL of pytest (or of its whole process group) runs no teardown and no exit handler: the servers
would run on, and their files stay in /dev/shm, until a later run from the same state folder reaps them.
testcontainers solves this with a sidecar (Ryuk) that removes a session's containers when the session's
connection drops; this is the same idea for processes. Started in a session of its own (so a signal to
the run's process group does not reach it), it checks each half second that the owner recorded in the
stack's state file still lives; when the state file goes (the run tore its stack down itself) it exits,
and when the owner is gone first it tears the stack down under the state folder's lock, by recorded PID
and start time, exactly as a later run's reaping would.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

from pytest_dashtam.backends._local_reap import teardown_state
from pytest_dashtam.backends._local_state import StackState, locked, remove_state, state_path
from pytest_dashtam.errors import BackendError

_INTERVAL = 0.5
_LOCK_WAIT = 60.0


def spawn(state_dir: Path, run_id: str) -> None:
    """Start the janitor of stack `run_id` (not waited for: it ends with the stack)."""
    subprocess.Popen(
        [sys.executable, "-m", "pytest_dashtam.backends._local_janitor", str(state_dir), run_id],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def _read(path: Path) -> StackState | None:
    try:
        return StackState.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None  # gone (torn down by its owner) or unreadable: nothing of ours to judge


def watch(state_dir: Path, run_id: str, interval: float = _INTERVAL) -> None:
    """Wait until the stack's owner dies or its state file goes; then tear down what the owner left."""
    path = state_path(state_dir, run_id)
    while True:
        state = _read(path)
        if state is None or state.keep:
            return
        if not state.owner.alive():
            break
        time.sleep(interval)
    with contextlib.suppress(BackendError), locked(state_dir, _LOCK_WAIT):
        state = _read(path)
        if state is None or state.keep or state.owner.alive():
            return
        teardown_state(state)
        remove_state(state_dir, run_id)


if __name__ == "__main__":
    watch(Path(sys.argv[1]), sys.argv[2])
