"""Processes, users and ports for the local backend: the parts that can hurt someone else's work.

Every kill goes through `ProcRef.signal_group`, which checks the process's start time first: a PID
recorded by a crashed run may since have been given to a foreign process, and that one must live.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import random
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

_BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
_PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Registered ports of common services: keep clear of them even though they lie outside the range.
_AVOID_BELOW = 10000


def boot_id() -> str:
    """Identifies this boot: a PID and start time recorded before a reboot mean nothing after it."""
    try:
        return _BOOT_ID_FILE.read_text().strip()
    except OSError:
        return ""


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name sits in parentheses and may itself contain spaces or ')'.
    return raw[raw.rindex(")") + 2 :].split()


def process_start_time(pid: int) -> int | None:
    """Clock ticks since boot at which `pid` started (field 22 of /proc/PID/stat), None if gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_group(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[2])


@dataclass(frozen=True)
class ProcRef:
    """A process as recorded in a state file: PID plus start time, so a reused PID is not mistaken."""

    pid: int
    start_time: int
    boot: str

    @classmethod
    def of(cls, pid: int) -> ProcRef:
        start = process_start_time(pid)
        return cls(pid=pid, start_time=-1 if start is None else start, boot=boot_id())

    def to_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "start_time": self.start_time, "boot": self.boot}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ProcRef:
        return cls(pid=int(str(data["pid"])), start_time=int(str(data["start_time"])), boot=str(data["boot"]))

    def alive(self) -> bool:
        """The very process we recorded still runs (not a zombie, not a newcomer with its PID)."""
        if self.boot != boot_id():
            return False
        return process_start_time(self.pid) == self.start_time

    def _group_has_members(self) -> bool:
        # While any process is in group G, Linux will not hand out G as a new PID, so members of a
        # group whose leader died are still ours.
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                fields = _stat_fields(int(entry.name))
                # Zombies are dead already (their parent has yet to reap them): nothing to signal.
                if fields is not None and int(fields[2]) == self.pid and fields[0] not in ("Z", "X"):
                    return True
        return False

    def signal_group(self, sig: int) -> bool:
        """Send `sig` to the process group we started (leader = this PID); True if anything got it.

        The leader must be the recorded process; if it is gone, its group is signalled only when
        the leader's PID is not in use by another process (then the members can only be ours).
        """
        if self.boot != boot_id():
            return False
        current = process_start_time(self.pid)
        if current is not None and current != self.start_time:
            return False  # PID reused by a foreign process: never touch it
        if current is None and not self._group_has_members():
            return False
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False
        return True

    def signal_leader(self, sig: int) -> bool:
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True


def _reap_if_our_child(ref: ProcRef) -> bool:
    """Collect the exit status of a server this process started but no longer holds a handle to
    (a kept stack stopped by `down` in its own run), so it does not linger as a zombie. False while
    it is our child and not reapable yet (a multi-threaded leader shows Z before its threads end)."""
    fields = _stat_fields(ref.pid)
    if fields is None or int(fields[19]) != ref.start_time or int(fields[1]) != os.getpid():
        return True  # gone, a foreign process with the PID, or not our child: nothing to collect
    try:
        done, _ = os.waitpid(ref.pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == ref.pid


def wait_gone(ref: ProcRef, timeout: float, child: object | None = None) -> bool:
    """Wait until the recorded process has exited (and is reaped if it is our child)."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        if child is not None:
            with contextlib.suppress(Exception):
                child.poll()  # type: ignore[attr-defined]
        if not ref.alive() and (child is not None or _reap_if_our_child(ref)):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def stop_group(ref: ProcRef, first: int, timeout: float, child: object | None = None) -> None:
    """Signal `first` to the leader, wait, then SIGKILL the whole group; leftovers are killed too."""
    if first == signal.SIGKILL:
        ref.signal_group(signal.SIGKILL)
    else:
        ref.signal_leader(first)
        if not wait_gone(ref, timeout, child):
            ref.signal_group(signal.SIGKILL)
    wait_gone(ref, 5.0, child)
    # Backends of a PostgreSQL killed hard may linger a moment in the group.
    ref.signal_group(signal.SIGKILL)


# ---------------------------------------------------------------------------------------- users


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account a root process runs PostgreSQL as (PostgreSQL refuses root)."""

    name: str
    uid: int
    gid: int


def pick_run_as() -> RunAs | None:
    """None when we are not root (the server runs as us); else `postgres` if it exists, else `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return RunAs(name=name, uid=entry.pw_uid, gid=entry.pw_gid)
    return None


def _user_gids(user: RunAs) -> set[int]:
    gids = {user.gid}
    with contextlib.suppress(OSError, KeyError):
        gids.update(os.getgrouplist(user.name, user.gid))
    return gids


def _allowed(st: os.stat_result, user: RunAs, gids: set[int], want: int) -> bool:
    """`want` is a mask of 4 (read), 2 (write), 1 (exec/search) for the user's class of access."""
    if st.st_uid == user.uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid in gids:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


def unreachable_part(path: Path, user: RunAs, want: int = 1) -> Path | None:
    """The first folder on the way to `path` that `user` cannot search (or `path` itself if it
    lacks the `want` access: 4 read, 2 write, 1 exec/search); None when the user can reach it.

    Both the path as written (what exec and open walk) and its resolved form are checked, on mode
    bits, because a root process cannot ask access(2) on another user's behalf.
    """
    gids = _user_gids(user)
    for target in (Path(os.path.abspath(path)), Path(os.path.realpath(path))):
        parts = [*reversed(target.parents), target]
        for i, part in enumerate(parts):
            try:
                st = os.stat(part)
            except OSError:
                return part
            need = want if i == len(parts) - 1 else 1
            if not _allowed(st, user, gids, need):
                return part
    return None


def chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


# ---------------------------------------------------------------------------------------- ports


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports: a server port inside it can be
    taken at any moment by a client socket (seen here with a port picked by bind(0))."""
    try:
        low, high = (int(x) for x in _PORT_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return low, high


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: connections of a server that just stopped linger in TIME_WAIT, which
        # would fail a plain bind although the server itself can bind again.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def pick_free_ports(count: int, exclude: set[int] | None = None) -> list[int]:
    """`count` distinct ports that are free now and outside the ephemeral range.

    Random (not sequential) so that concurrent runs rarely try the same one; the server may still
    lose a race for it, which callers handle by retrying with fresh ports.
    """
    low, high = ephemeral_range()
    candidates: list[tuple[int, int]] = []
    if low - 1 >= _AVOID_BELOW:
        candidates.append((_AVOID_BELOW, low - 1))
    if high + 1 <= 65535:
        candidates.append((high + 1, 65535))
    if not candidates:  # a kernel configured with a huge range: take what is left below it
        candidates.append((1024, max(1024, low - 1)))
    taken = set(exclude or ())
    chosen: list[int] = []
    rng = random.SystemRandom()
    weights = [b - a + 1 for a, b in candidates]
    for _ in range(2000):
        if len(chosen) == count:
            break
        a, b = rng.choices(candidates, weights=weights)[0]
        port = rng.randint(a, b)
        if port in taken:
            continue
        taken.add(port)
        if port_is_free(port):
            chosen.append(port)
    if len(chosen) < count:
        raise OSError("no free TCP port found outside the ephemeral range")
    return chosen
