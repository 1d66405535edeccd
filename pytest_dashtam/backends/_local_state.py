"""State files of the local backend: one per stack, so a later run can find, attach to or reap it.

A state file records who owns the stack (owner PID and start time), the run id, ports, folders and
the servers' PIDs with their start times. Writes are atomic (temp file + rename), and everything
that reads them to decide a kill holds the state folder's lock (a file lock: it is released by the
kernel when its holder dies, so a crashed run never leaves the folder locked).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from pytest_dashtam.backends.base import Stack
from pytest_dashtam.errors import BackendError
from pytest_dashtam.process import ProcessId

_PREFIX = "stack-"
_SUFFIX = ".json"


@dataclass
class StackState:
    run_id: str
    env: str
    owner: ProcessId
    keep: bool
    started_at: float
    # Folder holding everything a throw-away stack wrote (data, sockets, logs): removed with it.
    run_dir: str
    remove_run_dir: bool
    data_dir: str
    socket_dir: str
    postgres_log: str
    redis_log: str
    postgres_port: int
    redis_port: int
    postgres_bin: str
    postgres_identity: str
    redis_bin: str
    postgres: ProcessId | None = None
    redis: ProcessId | None = None
    stack: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = dict(self.__dict__)
        for key in ("owner", "postgres", "redis"):
            ref = data[key]
            data[key] = None if ref is None else ref.to_dict()
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StackState:
        data = json.loads(text)
        for key in ("owner", "postgres", "redis"):
            if data.get(key) is not None:
                data[key] = ProcessId.from_dict(data[key])
        return cls(**data)

    def the_stack(self) -> Stack:
        return Stack.from_dict(self.stack)

    def servers_alive(self) -> bool:
        """Every server the stack has is alive (a stack without Redis records no Redis binary)."""
        servers = (self.postgres, self.redis) if self.redis_bin else (self.postgres,)
        return all(ref is not None and ref.alive() for ref in servers)

    def any_server_alive(self) -> bool:
        return any(ref is not None and ref.alive() for ref in (self.postgres, self.redis))


def state_path(state_dir: Path, run_id: str) -> Path:
    return state_dir / f"{_PREFIX}{run_id}{_SUFFIX}"


def write_state(state_dir: Path, state: StackState) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_path(state_dir, state.run_id)
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=".tmp-state-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(state.to_json())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def remove_state(state_dir: Path, run_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        state_path(state_dir, run_id).unlink()


def read_states(state_dir: Path) -> list[tuple[Path, StackState | None]]:
    """Every state file in the folder, oldest first; None for one that cannot be parsed."""
    if not state_dir.is_dir():
        return []
    found: list[tuple[Path, StackState | None]] = []
    for path in sorted(state_dir.glob(f"{_PREFIX}*{_SUFFIX}"), key=lambda p: p.stat().st_mtime):
        try:
            found.append((path, StackState.from_json(path.read_text())))
        except (OSError, ValueError, TypeError, KeyError):
            found.append((path, None))
    return found


@contextlib.contextmanager
def locked(state_dir: Path, timeout: float) -> Iterator[None]:
    """Serialise reaping and registration among runs sharing the state folder, waiting at most `timeout`."""
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(state_dir / ".lock")
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise BackendError(
            f"another run has held the local backend's lock {state_dir / '.lock'} for {timeout:.0f}s; "
            "wait for it to finish starting its servers, or stop it"
        ) from None
    try:
        yield
    finally:
        lock.release()
